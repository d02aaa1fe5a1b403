"""The task APIs: what a request means (validate, tokenize in the HTTP process; pick the model, run it and
render the answer in the inference process), kept thin; the work lives in runtime/."""
