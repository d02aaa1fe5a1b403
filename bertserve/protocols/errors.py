"""Each protocol's error shape and statuses, chosen by route, in one place.

Everything inside the service raises and answers our own `{"error": {"code", "message"}}` (errors.py); the
protocol middleware rewrites an error answered on another protocol's route into that protocol's shape,
because its clients parse it:
- OpenAI (/v1/embeddings, /v1/models, /v1/models/{id}): `{"error": {"message", "type", "param", "code"}}`,
  400 for any bad request (our 413s and 422s), as OpenAI answers;
- TEI (its root routes): `{"error", "error_type"}` with TEI's statuses: 413 for inputs over the limits, 422
  for the rest of what a client sent wrong, 424 for a model failure, 429 when the queue is full;
- KServe's Open Inference Protocol (/v2...): `{"error": "..."}`, 400 for a bad request.
"""

from __future__ import annotations

from bertserve.errors import QUEUE_FULL
from bertserve.routes import error_shape_of


def protocol_of(path: str) -> str | None:
    """The protocol whose error shape `path` answers in (None: bertserve's own), from the route table."""
    return error_shape_of(path)


def reshape(protocol: str, status: int, body: dict) -> tuple[int, dict]:
    """Our error body -> (status, body) of `protocol`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):  # already another shape (or none): leave it
        return status, body
    message, code = str(error.get("message", "")), str(error.get("code", ""))
    if protocol == "openai":
        status, body = _openai(status, message, code, error.get("details"))
        if "request_id" in error:  # OpenAI's clients ignore it; our logs find the request by it
            body["error"]["request_id"] = error["request_id"]
        return status, body
    if protocol == "tei":
        return _tei(status, message, code)
    return (400 if status == 422 else status), {"error": message}


def _openai(status: int, message: str, code: str, details) -> tuple[int, dict]:
    if status in (413, 422):
        status = 400
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    param = None
    if isinstance(details, list) and details:
        param = ".".join(str(p) for p in details[0].get("loc", ()) if p != "body") or None
    openai_code = {"unauthorized": "invalid_api_key", "unknown_model": "model_not_found"}.get(code, code)
    return status, {"error": {"message": message, "type": kind, "param": param, "code": openai_code or None}}


def _tei(status: int, message: str, code: str) -> tuple[int, dict]:
    if status == 503 and code == QUEUE_FULL:
        return 429, {"error": message, "error_type": "overloaded"}
    if status == 503:
        return 503, {"error": message, "error_type": "unhealthy"}
    if status == 413 or code == "input_too_long":
        return 413, {"error": message, "error_type": "validation"}
    if status in (404, 422):
        kind = "tokenizer" if code in ("bad_token_id", "input_too_long") else "validation"
        return 422, {"error": message, "error_type": kind}
    if status >= 500 and status != 504:
        return 424, {"error": message, "error_type": "backend"}
    return status, {"error": message, "error_type": "empty" if status == 400 else "validation"}
