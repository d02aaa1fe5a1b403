"""Logs as one JSON object per line (or plain text), and the access log with its request id.

JSON lines are what log shippers parse without regexes. The access log is one line per HTTP request,
written by the request log layer (http_layers.py) in the HTTP process: method, path, status, duration,
model, version and the request id (the client's X-Request-ID when it is sane, else a fresh one), never the
request's text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import Message, Send

from bertserve.config import Settings

access_logger = logging.getLogger("bertserve.access")
_json_handler: logging.StreamHandler | None = None  # the root handler, when it writes JSON (log_request)
REQUEST_ID_PATTERN = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
FIELDS = "fields"  # the `extra` key holding a record's structured fields


def request_id(given: bytes | None) -> str:
    """The client's X-Request-ID if it is short and plain (it ends up in logs and headers), else a uuid4."""
    if given is not None and REQUEST_ID_PATTERN.fullmatch(given):
        return given.decode()
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, FIELDS, {})
        line = super().format(record)
        return f"{line} {' '.join(f'{k}={v}' for k, v in fields.items())}" if fields else line


def configure_logging(settings: Settings) -> None:
    """One stderr handler on the root logger for this process; library loggers propagate to it.

    Called in the main process (the forked API servers inherit it) and in each spawned inference worker.
    The access log stays on whatever the log level, so `--log-level warning` still records requests."""
    global _json_handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    _json_handler = handler if settings.log_format == "json" else None
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)  # Python warnings as log records too, not bare text lines on stderr
    for name in ("litserve", "uvicorn", "uvicorn.error"):
        library = logging.getLogger(name)
        for old in library.handlers[:]:
            library.removeHandler(old)
        library.propagate = True
    access_logger.setLevel(logging.INFO)


def route_transformers_output() -> None:
    """For inference workers, which load models. The server's processes share one stderr, and transformers
    writes its own text there: progress bars end in a carriage return, not a newline, so a bar written by one
    worker glues itself onto the next JSON line another process writes, and log parsers drop that line.
    Bars off; its log records go through the root handler like everyone else's."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """For uvicorn.Config(log_config=...): its loggers go through our root handler, not its own text ones."""
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # our access log replaces it
        },
    }


def log_request(
    method: str, path: str, status: int, seconds: float, model: str, version: str, rid: str
) -> None:
    """One access log line per request, so it skips what Logger.info would do for nothing: the fields when
    the access log is off, and with the JSON format the whole record: the line JsonFormatter would write is
    made by orjson and written to the handler's stream under its lock (~3x cheaper than a LogRecord)."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "model": model or None,
        "version": version or None,
        "request_id": rid,
    }
    handler = _json_handler
    if handler is not None and not access_logger.handlers:  # our root handler is the only one
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        entry = {"time": now, "level": "info", "logger": access_logger.name}
        line = orjson.dumps({**entry, "message": f"{method} {path} {status}", **fields}).decode() + "\n"
        with handler.lock:
            handler.stream.write(line)
            handler.stream.flush()
        return
    record = access_logger.makeRecord(
        access_logger.name,
        logging.INFO,
        "",
        0,
        "%s %s %d",
        (method, path, status),
        None,
        extra={FIELDS: fields},
    )
    access_logger.handle(record)


def echo_request_id(send: Send, rid: str) -> Send:
    """Add X-Request-ID to every response, and `request_id` into JSON error bodies (the one error shape
    has room for extra fields), so a client can quote it when reporting a failure."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            message = {**message, "headers": headers}
            if message["status"] >= 400 and (b"content-type", b"application/json") in headers:
                held = message
                return
        elif held is not None and message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _with_request_id(b"".join(chunks), rid)
            headers = [(k, v) for k, v in held["headers"] if k != b"content-length"]
            await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            message = {"type": "http.response.body", "body": body}
        await send(message)

    return wrapped


def _with_request_id(body: bytes, rid: str) -> bytes:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        parsed["error"]["request_id"] = rid
        return json.dumps(parsed).encode()
    return body
