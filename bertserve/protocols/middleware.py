"""The protocol middleware: the outermost layer, around the request layers of bertserve/http_layers.py
(request log, auth, limits, admission, deadline), so that every route it leads to gets all of that.

- Dispatch: POST / (TEI, Hugging Face) and KServe's POST /v2/models/{name}[/versions/{v}]/infer name no task
  by their path. Their JSON body (read up to the body limit, which the guard layer then enforces on the
  original stream) decides: the request is passed on under the path of the route that answers it
  (tei.root_target; kserve.INFER_PATHS by the model's task, with the model put into the body). A body it
  cannot read is passed on unchanged, to the route's own answer.
- Errors: an error answered on another protocol's route is rewritten into that protocol's shape and status
  (protocols/errors.py), wherever it came from: a schema check, a worker, auth, limits or the queue bound.
"""

from __future__ import annotations

import contextlib
import gzip

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertserve.config import Settings
from bertserve.protocols import kserve, tei
from bertserve.protocols.errors import protocol_of, reshape
from bertserve.protocols.served import ServedModels

BINARY_HEADER = b"inference-header-content-length"  # KServe's / Triton's binary tensor extension


class ProtocolMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, served: ServedModels) -> None:
        self.app = app
        self.limit = settings.max_body_bytes
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        protocol = protocol_of(path)
        if scope["method"] == "POST" and (path == tei.ROOT_PATH or kserve.INFER_PATTERN.match(path)):
            scope, receive = await self._dispatch(scope, receive)
        await self.app(scope, receive, send if protocol is None else _reshaping(protocol, send))

    async def _dispatch(self, scope: Scope, receive: Receive) -> tuple[Scope, Receive]:
        messages, complete = await _read_body(receive, self.limit)
        replay = _replaying(messages, receive)
        if not complete:
            return scope, replay
        body = b"".join(message.get("body", b"") for message in messages)
        headers = dict(scope.get("headers", ()))
        try:
            if BINARY_HEADER in headers:
                request = kserve.from_binary(body, int(headers[BINARY_HEADER]))
            else:
                request = orjson.loads(body)
        except (ValueError, UnicodeDecodeError):
            return scope, replay
        target = self._target(scope["path"], request)
        if target is None:
            return scope, replay
        path, request = target
        payload = orjson.dumps(request)
        replaced = (
            b"content-length",
            b"content-type",
            BINARY_HEADER,
        )  # a binary request is JSON from here on
        kept = [(k, v) for k, v in scope.get("headers", ()) if k not in replaced]
        length = (b"content-length", str(len(payload)).encode())
        scope = {
            **scope,
            "path": path,
            "raw_path": path.encode(),
            "headers": [*kept, length, (b"content-type", b"application/json")],
        }
        return scope, _replaying([{"type": "http.request", "body": payload, "more_body": False}], receive)

    def _target(self, path: str, request) -> tuple[str, object] | None:
        tasks = self.served.tasks()
        if path == tei.ROOT_PATH:
            target = tei.root_target(request, tasks)
            return None if target is None else (target, request)
        match = kserve.INFER_PATTERN.match(path)
        task = self.served.task_of(match.group(1)) if match else None
        if task not in kserve.INFER_PATHS or not isinstance(request, dict):
            # the public route answers (unknown model, or one infer does not serve), from JSON too
            return path, request
        name, version = match.group(1), match.group(2)
        request["model"] = f"{name}@{version}" if version else name
        return kserve.INFER_PATHS[task], request


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], bool]:
    """The request's messages, up to just past `limit` bytes; complete: the whole body is in them."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        size += len(message.get("body", b""))
        if size > limit:
            return messages, False
        if not message.get("more_body", False):
            return messages, True


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _reshaping(protocol: str, send: Send) -> Send:
    """`send`, with error answers rewritten into `protocol`'s shape (JSON errors are small: buffered)."""
    held: dict = {}
    chunks: list[bytes] = []

    async def reshaping_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            if message["status"] >= 400 and content_type.startswith(b"application/json"):
                held["start"] = message
                return
        elif message["type"] == "http.response.body" and "start" in held:
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = held.pop("start"), b"".join(chunks)
            status, dropped = start["status"], [b"content-length"]
            with contextlib.suppress(ValueError, OSError, EOFError):
                if dict(start.get("headers", ())).get(b"content-encoding") == b"gzip":  # compressed inside
                    body, dropped = gzip.decompress(body), [*dropped, b"content-encoding"]
                status, reshaped = reshape(protocol, status, orjson.loads(body))
                body = orjson.dumps(reshaped)
            headers = [(k, v) for k, v in start.get("headers", ()) if k not in dropped]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send(message)

    return reshaping_send
