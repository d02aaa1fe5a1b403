"""The one error shape, `{"error": {"code", "message"}}`, and the mapping from client mistakes to 4xx.

Errors raised in an inference worker travel back to the HTTP process as a FastAPI HTTPException whose
`detail` already holds the error body (encoded as JSON on the way, see engine/wire.py); the handlers
here render every error the same.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from bertserve import routes

QUEUE_FULL = "unavailable"  # the code of the 503 past a queue's bound (TEI's clients get it as a 429)
DRAINING = "draining"  # the code of the 503 a draining server answers new requests
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


# A 422 lists at most this many schema violations: what a client needs to fix its request, in an answer whose
# size does not grow with the body's (request lists stop at their first wrong item: schemas.Items).
MAX_ERROR_DETAILS = 20


class ClientError(Exception):
    """A problem with what the client sent: always a 4xx, never a 500, never fatal to a worker."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message

    def to_http(self) -> HTTPException:
        """The form the engine carries from the worker back to the HTTP process (engine/wire.py)."""
        return HTTPException(self.status, error_body(self.code, self.message))


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code or STATUS_CODES.get(status, "error"), message), status, headers=headers
    )


def _location(loc: tuple) -> str:
    """`inputs.1` rather than pydantic's union-branch names such as `function-after[_not_blank(), str]`."""
    parts = [str(p) for p in loc if p != "body" and (isinstance(p, int) or str(p).isidentifier())]
    return ".".join(parts) or "body"


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    messages = dict.fromkeys(
        f"{_location(err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in errors
    )
    return "; ".join(list(messages)[:4])


async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors()[:MAX_ERROR_DETAILS])
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(400, f"malformed JSON body: {_describe_validation(errors)}", "malformed_json")
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")} for err in errors
    ]
    body = error_body("invalid_request", _describe_validation(errors), details=details)
    return JSONResponse(body, 422)


async def _on_http_exception(_: Request, exc: HTTPException) -> JSONResponse:
    detail = exc.detail
    if isinstance(detail, dict) and "error" in detail:
        return JSONResponse(detail, exc.status_code, headers=getattr(exc, "headers", None))
    code = STATUS_CODES.get(exc.status_code, "error")
    message = detail if isinstance(detail, str) else str(detail)
    if exc.status_code >= 500 and exc.status_code not in (503, 504):
        message = "internal error; the request was not processed"
    return error_response(exc.status_code, message, code, headers=getattr(exc, "headers", None))


DOCUMENTED_STATUSES = {
    "400": "Malformed JSON.",
    "401": "API keys are configured and the request has none or a wrong one.",
    "404": "Unknown model, version or alias.",
    "408": "The request's body did not arrive within the request timeout (a slow or stalled client).",
    "413": "Body, input count or input length over the configured limits.",
    "422": "Schema or content violation (details lists each schema violation).",
    "500": "The model failed on this batch: a server fault, logged; never caused by what a client sent.",
    "503": "Queue full, draining, or the worker computing it died; retry after Retry-After.",
    "504": "The request outlived the request timeout.",
}


def document_error_shape(app: FastAPI) -> None:
    """/openapi.json shows the error body our routes answer (request_id and 422's details included) instead
    of FastAPI's `{"detail": ...}`, which the service never sends."""
    from pydantic.json_schema import models_json_schema

    from bertserve.schemas import ErrorResponse

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        _, definitions = models_json_schema(
            [(ErrorResponse, "serialization")], ref_template="#/components/schemas/{model}"
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path in routes.documented_error_routes():
            operation = schema["paths"].get(path, {}).get("post")
            if operation is not None:
                for status, description in DOCUMENTED_STATUSES.items():
                    operation["responses"][status] = {"description": description, "content": body}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install_error_handlers(app: FastAPI) -> None:
    """Every error (schema, HTTP, worker-side) leaves the service in the one JSON shape."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
