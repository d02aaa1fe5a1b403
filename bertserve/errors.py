"""The one error shape, `{"error": {"code", "message"}}`, and the mapping from client mistakes to 4xx.

Errors raised in an inference worker travel back to the HTTP process pickled inside a FastAPI
HTTPException (litserve_seam.WorkerHTTPException) whose `detail` already holds the error body; the handlers
here render every error the same.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from bertserve.engine.litserve_seam import WorkerHTTPException

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ClientError(Exception):
    """A problem with what the client sent: always a 4xx, never a 500, never fatal to a worker."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message

    def to_http(self) -> HTTPException:
        """Picklable form that LitServe carries from the worker back to the HTTP process."""
        return WorkerHTTPException(self.status, error_body(self.code, self.message))


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
    errors = list(exc.errors())
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


def install_error_handlers(app: FastAPI) -> None:
    """Every error (schema, HTTP, worker-side) leaves the service in the one JSON shape."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
