"""LitServe APIs: decode_request -> predict -> encode_response, kept thin; the work lives in runtime/."""
