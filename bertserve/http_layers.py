"""The HTTP side of every request, one pure-ASGI layer per concern, outermost first:

- RequestLog: arrival stamp (TICKET), request id, access log line, request count and duration metrics;
- Guard: the API key, before anything reads the body; then the declared body size;
- the dispatch of routes named by their body (protocols/middleware.py), when the server has one;
- Admission: in-flight gauge, the per-queue bound across HTTP processes, the drain flag;
- Deadline: the request timeout (504; 408 when the body itself did not arrive in time), a chunked body's
  size (413), the client leaving (499).

Each layer sits on the hot path of every request, so each does only its own work and makes as few objects as
it can: no task for a request that is answered quickly, metric children looked up in a dict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertserve import logs, metrics
from bertserve.auth import Authenticator
from bertserve.config import Settings
from bertserve.engine.admission import TICKET, InFlight, Ticket
from bertserve.errors import DRAINING, QUEUE_FULL, error_response

CLIENT_CLOSED_REQUEST = 499  # what the access log and metrics record for a client that left (nginx's code)
CLIENT_GONE = "bertserve.client_gone"  # scope key: set when the client disconnected before its answer
# Answers at least this large are gzip-compressed for clients that accept it (explain's attention maps run
# to megabytes); level 5 compresses JSON nearly as well as 9 for a fraction of the CPU.
GZIP_MIN_BYTES = 1000
GZIP_LEVEL = 5
# A route still running this long after its body was read gets a task watching for its client leaving; one
# answered sooner never pays for that task. A client that leaves is noticed at most this much later.
WATCH_AFTER_S = 0.01
# how stale a view of the drain flag admission may act on: a drain refuses new requests within this
DRAIN_LOOK_SECONDS = 0.02


def install_layers(
    app: ASGIApp,
    *,
    settings: Settings,
    auth: Authenticator,
    in_flight: InFlight,
    drain_flag: Path,
    endpoints: dict[str, str],
    queue_labels: dict[str, str],
    dispatch: Callable[[ASGIApp], ASGIApp] | None = None,
) -> None:
    """Add the layers to a Starlette/FastAPI `app`: RequestLog outermost, then Guard, `dispatch` (it reads
    bodies: only once the guard let the request in), Admission, Deadline, and GZip innermost, so the metrics
    and the timeout cover the compression.

    `endpoints`: instrumented route path -> its metrics endpoint label. `queue_labels`: route path -> the
    queue its admission bound is counted under (routes sharing one queue share one count). `in_flight` must
    have a slot for each of `in_flight_slots(endpoints, queue_labels)`."""
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)
    app.add_middleware(
        Deadline,
        endpoints=endpoints,
        queue_labels=queue_labels,
        request_timeout=settings.request_timeout,
        max_body_bytes=settings.max_body_bytes,
    )
    app.add_middleware(
        Admission,
        endpoints=endpoints,
        queue_labels=queue_labels,
        in_flight=in_flight,
        max_queue=settings.max_queue,
        drain_flag=drain_flag,
    )
    if dispatch is not None:
        app.add_middleware(dispatch)
    app.add_middleware(Guard, auth=auth, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog, endpoints=endpoints)  # added last: the outermost


def in_flight_slots(endpoints: Iterable[str], queue_labels: dict[str, str]) -> tuple[str, ...]:
    """The InFlight slots Admission counts in: each queue label, and the path of each instrumented route
    without a queue (counted for the drain, never bounded)."""
    return tuple(dict.fromkeys(queue_labels.get(path, path) for path in endpoints))


class RequestLog:
    """Outermost: stamps the arrival, gives the request its id, and once answered writes the access log line
    and, for instrumented paths, the request count and duration by endpoint, model, version and status, under
    the path that answered (the dispatch layer routes some requests by their body)."""

    def __init__(self, app: ASGIApp, *, endpoints: dict[str, str]) -> None:
        self.app = app
        self.endpoints = endpoints
        self._children: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        TICKET.set(Ticket(started))  # handed to the engine: its expiry and our 504 share one clock
        rid = logs.request_id(dict(scope["headers"]).get(b"x-request-id"))
        seen = _Seen(logs.echo_request_id(send, rid))
        try:
            await self.app(scope, receive, seen.send)
        finally:
            elapsed = time.monotonic() - started
            path = scope["path"]
            status = CLIENT_CLOSED_REQUEST if scope.get(CLIENT_GONE) else seen.status
            endpoint = self.endpoints.get(path)
            if endpoint is not None:
                self._count((endpoint, seen.model, seen.version, status), elapsed)
            logs.log_request(scope["method"], path, status, elapsed, seen.model, seen.version, rid)

    def _count(self, key: tuple[str, str, str, int], elapsed: float) -> None:
        """A dict lookup per request instead of prometheus-client's label resolution."""
        children = self._children.get(key)
        if children is None:
            labels = (*key[:3], str(key[3]))
            children = (metrics.REQUESTS.labels(*labels), metrics.REQUEST_DURATION.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)


class _Seen:
    """The status and the model that answered (x-model-version: name@version), read off the response."""

    __slots__ = ("model", "send_on", "status", "version")

    def __init__(self, send: Send) -> None:
        self.send_on = send
        self.status = 500  # an app that raises before answering
        self.model = self.version = ""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for key, value in message.get("headers", ()):
                if key == b"x-model-version":
                    self.model, _, self.version = value.decode().partition("@")
        await self.send_on(message)


class Guard:
    """The API key first, so an unauthenticated client never gets its body read or parsed; then a POST whose
    declared Content-Length is over the limit is refused before it is read."""

    def __init__(self, app: ASGIApp, *, auth: Authenticator, max_body_bytes: int) -> None:
        self.app = app
        self.auth = auth
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        post = scope["method"] == "POST"
        if not post and not self.auth.enabled:
            return None
        headers = dict(scope["headers"])
        if not self.auth.allows(scope["path"], headers):
            return self.auth.challenge()
        length = headers.get(b"content-length") if post else None
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return error_response(413, f"body of {int(length)} bytes; the limit is {self.max_body_bytes}")
        return None


class Admission:
    """For instrumented paths: the in-flight gauge, and the count per queue across every HTTP process. A POST
    is refused 503 when its queue's count, itself included, passes `max_queue` (the engine holds no more than
    that), or while the server drains."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        endpoints: dict[str, str],
        queue_labels: dict[str, str],
        in_flight: InFlight,
        max_queue: int,
        drain_flag: Path,
    ) -> None:
        self.app = app
        self.endpoints = endpoints
        self.slots = {path: queue_labels.get(path, path) for path in endpoints}
        self.bounded = frozenset(queue_labels)
        self.in_flight = in_flight
        self.max_queue = max_queue
        self.drain_flag = drain_flag
        self._draining = False
        self._next_look = 0.0
        self._gauges: dict[str, Gauge] = {}  # made on first use: in the forked HTTP process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        gauge = self._gauges.get(endpoint)
        if gauge is None:
            gauge = self._gauges[endpoint] = metrics.IN_FLIGHT.labels(endpoint)
        gauge.inc()
        slot = self.slots[scope["path"]]
        count = self.in_flight.enter(slot)
        try:
            refusal = self._refusal(scope, count) if scope["method"] == "POST" else None
            if refusal is None:
                await self.app(scope, receive, send)
            else:
                await refusal(scope, receive, send)
        finally:
            self.in_flight.leave(slot)
            gauge.dec()

    def _refusal(self, scope: Scope, count: int) -> Response | None:
        """`count`: the requests for this route's queue in all HTTP processes, this one included."""
        if count > self.max_queue and scope["path"] in self.bounded:
            message = "server busy: request queue is full"
            return error_response(503, message, QUEUE_FULL, headers={"Retry-After": "1"})
        if self._drains():
            return error_response(503, "server is shutting down", DRAINING, headers={"Retry-After": "1"})
        return None

    def _drains(self) -> bool:
        """Whether the drain flag is there, looked at most every DRAIN_LOOK_SECONDS (a stat call per request
        was a tenth of a short request's middleware cost); once draining, always."""
        now = time.monotonic()
        if not self._draining and now >= self._next_look:
            self._next_look = now + DRAIN_LOOK_SECONDS
            self._draining = self.drain_flag.exists()
        return self._draining


class Deadline:
    """For instrumented paths: the route runs under the request timeout counted from arrival (504 unless its
    answer has started; 408 while its body has not all arrived: a slow client), a chunked body is counted
    against the limit (413), and a client that disconnects once its body is read cancels the route (the
    engine withdraws its request) and is recorded as 499."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        endpoints: Iterable[str],
        queue_labels: dict[str, str],
        request_timeout: float,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.endpoints = frozenset(endpoints)
        self.queue_labels = queue_labels
        self.request_timeout = request_timeout
        self.max_body_bytes = max_body_bytes
        self._cancelled: dict[str, Counter] = {}  # queue label -> its CANCELLED child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            await self.app(scope, receive, send)
            return
        call = _Call(receive, send, self.max_body_bytes)
        timeout = asyncio.timeout(self.request_timeout - (time.monotonic() - TICKET.get().arrived))
        cancelled = False
        try:
            async with timeout:
                await self.app(scope, call.receive, call.send)
        except _BodyTooLarge:
            pass  # the route did not catch it; call.too_large answers below
        except TimeoutError:
            if not timeout.expired():
                raise  # the route's own
            cancelled = True
        except asyncio.CancelledError:
            if not call.watcher_cancelled or call.task.cancelling() > 1:
                raise  # cancelled from outside too (the server stopping)
            cancelled = True
        finally:
            call.close()
            if call.gone:
                scope[CLIENT_GONE] = True  # nobody to answer: logged and counted as 499
        if call.too_large:  # a chunked body (no Content-Length) past the limit: FastAPI's 400 was dropped
            if not call.started:
                message = f"body over the limit of {self.max_body_bytes} bytes"
                await error_response(413, message)(scope, receive, send)
            return
        if not cancelled:
            return  # answered
        label = self.queue_labels.get(scope["path"])
        if label is not None and not TICKET.get().queued:  # its client left before the engine had it
            counter = self._cancelled.get(label)
            if counter is None:
                counter = self._cancelled[label] = metrics.CANCELLED.labels(label)
            counter.inc()
        if not call.gone and not call.started:
            if not call.body_done:  # the client's fault: its body did not arrive in time
                message = f"the request body did not arrive within {self.request_timeout:g} s"
                await error_response(408, message)(scope, receive, send)
                return
            await error_response(504, f"no answer within {self.request_timeout:g} s")(scope, receive, send)


class _Call:
    """One request under Deadline: counts its body, notes how far its answer got, and watches for its client
    leaving once the body is read and the route has run for WATCH_AFTER_S."""

    __slots__ = (
        "body_done",
        "finished",
        "gone",
        "limit",
        "receive_from",
        "received",
        "send_on",
        "started",
        "task",
        "timer",
        "too_large",
        "watcher",
        "watcher_cancelled",
    )

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self.receive_from = receive
        self.send_on = send
        self.limit = limit
        self.received = 0
        self.too_large = self.started = self.finished = self.gone = self.watcher_cancelled = False
        self.body_done = False
        self.task = asyncio.current_task()
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task | None = None

    async def receive(self) -> Message:
        message = await self.receive_from()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.too_large = True
                raise _BodyTooLarge
            if not message.get("more_body", False) and self.timer is None:
                self.body_done = True
                self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._watch)
        elif message["type"] == "http.disconnect" and not self.finished:
            self.gone = True  # while its body was read, or seen by the route itself
        return message

    async def send(self, message: Message) -> None:
        if self.too_large:
            return  # FastAPI's 400 for a body it could not read: Deadline's 413 replaces it
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self.send_on(message)

    def _watch(self) -> None:
        self.watcher = asyncio.ensure_future(self._until_disconnect())

    async def _until_disconnect(self) -> None:
        while (await self.receive_from())["type"] != "http.disconnect":
            pass
        if not self.finished:  # uvicorn also says "disconnect" once the answer is sent
            self.gone = self.watcher_cancelled = True
            self.task.cancel()

    def close(self) -> None:
        """The route has ended: no watching any more, and the watcher's own cancel is taken back."""
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        if self.watcher_cancelled:
            self.task.uncancel()


class _BodyTooLarge(Exception):
    pass
