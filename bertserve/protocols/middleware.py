"""The protocol middleware, in two layers around the request layers of bertserve/http_layers.py:

- ProtocolErrors, the outermost: an error answered on another protocol's route is rewritten into that
  protocol's shape and status (protocols/errors.py), wherever it came from: a schema check, a worker, auth,
  limits or the queue bound.
- ProtocolDispatch, just inside the guard (auth, then the declared body size), so that a client without a key
  never gets its body read, let alone parsed: POST / (TEI, Hugging Face) and KServe's POST
  /v2/models/{name}[/versions/{v}]/infer name no task by their path. Their body (read up to the body limit,
  which the deadline layer then enforces on the original stream) decides: the request is passed on under the
  path of the route that answers it (tei.root_target; kserve.INFER_PATHS by the model's task, with the model
  put into the body), so admission, the deadline and the metrics count it under that route. A JSON body it
  cannot read is passed on unchanged, to the route's own answer; a binary tensor request that does not parse,
  or one nested deeper than it can be re-encoded, is a 400 saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertserve.config import Settings
from bertserve.errors import error_response
from bertserve.protocols import kserve, tei
from bertserve.protocols.errors import protocol_of, reshape
from bertserve.protocols.served import ServedModels

BINARY_HEADER = b"inference-header-content-length"  # KServe's / Triton's binary tensor extension
REPLACED_HEADERS = (b"content-length", b"content-type", BINARY_HEADER)  # a dispatched body is JSON


class ProtocolErrors:
    """Outermost: errors on a protocol's routes leave in that protocol's shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = protocol_of(scope.get("path", "")) if scope["type"] == "http" else None
        await self.app(scope, receive, send if protocol is None else _reshaping(protocol, send))


class ProtocolDispatch:
    """Routes the requests whose body names their task. It changes the scope in place: the request log (an
    outer layer) then counts the request under the route that answered it."""

    def __init__(self, app: ASGIApp, settings: Settings, served: ServedModels) -> None:
        self.app = app
        self.limit = settings.max_body_bytes
        self.timeout = settings.request_timeout
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope.get("method") == "POST" and (path == tei.ROOT_PATH or kserve.INFER_PATTERN.match(path)):
            receive, refusal = await self._dispatch(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive) -> tuple[Receive, ASGIApp | None]:
        """The receive the route reads its body from, or an answer instead of the route's."""
        try:  # a slow (or stalled) body holds a connection and its bytes no longer than a request may last
            async with asyncio.timeout(self.timeout):
                messages, complete = await _read_body(receive, self.limit)
        except TimeoutError:
            return receive, error_response(408, f"the request body did not arrive within {self.timeout:g} s")
        replay = _replaying(messages, receive)
        if not complete:
            return replay, None
        body = b"".join(message.get("body", b"") for message in messages)
        headers = dict(scope.get("headers", ()))
        binary = BINARY_HEADER in headers and scope["path"] != tei.ROOT_PATH
        try:
            request = kserve.from_binary(body, headers[BINARY_HEADER]) if binary else orjson.loads(body)
        except ValueError as exc:  # UnicodeDecodeError and orjson's JSONDecodeError are ValueErrors
            if binary:
                return replay, error_response(400, f"binary tensor request: {exc}")
            return replay, None
        target = self._target(scope["path"], request)
        if target is None:
            return replay, None
        path, model = target
        if model is not None:
            request["model"] = model
        if binary or model is not None:
            try:
                body = orjson.dumps(request)
            except orjson.JSONEncodeError:  # orjson reads 1,024 levels of nesting but writes only 254
                return replay, error_response(400, "the request is nested too deeply")
        kept = [(k, v) for k, v in scope.get("headers", ()) if k not in REPLACED_HEADERS]
        length = (b"content-length", str(len(body)).encode())
        scope["path"], scope["raw_path"] = path, path.encode()
        scope["headers"] = [*kept, length, (b"content-type", b"application/json")]
        return _replaying([{"type": "http.request", "body": body, "more_body": False}], receive), None

    def _target(self, path: str, request: object) -> tuple[str, str | None] | None:
        """(the path of the route that answers, the model to put into the body, if any); None: the public
        route answers the body as it came."""
        tasks = self.served.tasks()
        if path == tei.ROOT_PATH:
            target = tei.root_target(request, tasks)
            return None if target is None else (target, None)
        match = kserve.INFER_PATTERN.match(path)
        task = self.served.task_of(match.group(1)) if match else None
        if task not in kserve.INFER_PATHS or not isinstance(request, dict):
            # the public route answers (unknown model, or one infer does not serve), from JSON too
            return path, None
        name, version = match.group(1), match.group(2)
        return kserve.INFER_PATHS[task], f"{name}@{version}" if version else name


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
