"""What the protocol tests share: the API key, the prompts of the embedding model, texts to send."""

KEY = "protocols-key-8d41c0e2"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["the pill helped my headache", "awful nausea for weeks", "okay"]
QUERY = "which drug helped the pain"
DOCUMENTS = ["the pill helped my headache", "i love this movie", "the pain was gone after the first dose"]
