"""The HTTP process's end of the streams: sends each request straight to an inference process and awaits
its answer on the same stream. No broker, no thread: the event loop writes the frame and goes on.

- One unix-socket connection per inference process (slot), opened on first use, after the fork.
- The record of what was sent and is not answered lives here, per connection: when an inference process
  dies its end of the stream closes, and every request it had is answered `503 worker_lost` at once (the
  kernel closes a dead process's sockets, so this needs no supervisor). A replacement is connected to on
  the next request; until one listens, requests are answered `503 worker_lost` too.
- A request whose client is gone (disconnected, or answered 504 by the deadline layer) is cancelled on the
  stream: the inference process drops it where it waits and never computes it.
- Several slots: each request goes to the connected one with the fewest sequences outstanding from this
  process (least loaded, as this process sees it).
- Writes never block and never drop: asyncio keeps what a busy socket cannot take yet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bertserve.engine import wire
from bertserve.engine.admission import Ticket
from bertserve.engine.wire import slot_socket
from bertserve.errors import error_body

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 0.2  # least time between two attempts to reach a slot that did not answer


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    ref: str | None = None
    detail: Any = None
    headers: dict[str, str] | None = None


class Outstanding(NamedTuple):
    """A request sent on a stream and not answered yet: what answers it, and the load it adds."""

    answer: asyncio.Future
    sequences: int


WORKER_LOST = Answer(
    503,
    b"",
    detail=error_body("worker_lost", "the inference worker handling this request died; retry it"),
    headers={"Retry-After": "1"},
)


class _Stream(asyncio.Protocol):
    """One connection to one inference process, and the requests it has not answered yet."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.outbox: list[bytes] = []  # frames written in this pass of the event loop, sent at its end
        self.inbox = bytearray()
        self.waiting: dict[int, Outstanding] = {}  # by request id
        self.load = 0  # sequences outstanding

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.inbox += data
        try:
            frames = wire.read_frames(self.inbox)
        except wire.FrameError as exc:
            logger.error("closing the stream to an inference process: %s", exc)
            assert self.transport is not None
            self.transport.abort()
            return
        for _, header, body in frames:
            entry = self.waiting.pop(header["id"], None)
            if entry is None:
                continue  # cancelled meanwhile: nobody waits for it
            future = entry.answer
            self.load -= entry.sequences
            if not future.done():
                headers = header.get("headers")
                future.set_result(
                    Answer(header["status"], bytes(body), header.get("ref"), header.get("detail"), headers)
                )

    def write(self, data: bytes) -> None:
        """Frames written in one pass of the event loop leave in one `send` (one wake-up of the inference
        process for a burst), scheduled after them; a lone frame costs one `call_soon`."""
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbox.append(data)

    def _flush(self) -> None:
        frames, self.outbox = self.outbox, []
        if self.transport is not None:
            self.transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiting, self.waiting, self.load = self.waiting, {}, 0
        for entry in waiting.values():
            if not entry.answer.done():
                entry.answer.set_result(WORKER_LOST)
        if waiting:
            logger.error("an inference process is gone: %d requests answered 503", len(waiting))


class EngineClient:
    """Made in the main process, inherited by each forked HTTP process, which opens its own streams."""

    def __init__(self, socket_dir: Path, slots: int) -> None:
        self.paths = [slot_socket(socket_dir, slot) for slot in range(slots)]
        self.streams: list[_Stream | None] = [None] * slots
        self.next_try = [0.0] * slots
        self.next_id = 0

    async def call(
        self, task: str, ticket: Ticket, header: dict[str, Any], body: bytes, sequences: int
    ) -> Answer:
        """Send one request (`header` and `body` of its request frame) and await its answer; `ticket.queued`
        is set once it is on a stream. Cancelled (its client is gone): the inference process drops it.
        Raises wire.Unencodable for a header JSON cannot carry (an integer past 64 bits)."""
        stream = await self._pick()
        if stream is None or stream.transport is None:
            return WORKER_LOST
        self.next_id += 1
        request_id = self.next_id
        header = {"id": request_id, "task": task, "arrived": ticket.arrived, **header}
        data = wire.frame(wire.REQUEST, header, body)
        future = asyncio.get_running_loop().create_future()
        stream.waiting[request_id] = Outstanding(future, sequences)
        stream.load += sequences
        stream.write(data)
        ticket.queued = True
        try:
            return await future
        except asyncio.CancelledError:
            if stream.waiting.pop(request_id, None) is not None:
                stream.load -= sequences
                if stream.transport is not None:
                    stream.write(wire.frame(wire.CANCEL, {"id": request_id}))
            raise

    async def _pick(self) -> _Stream | None:
        """The least loaded connected stream. Slots not connected are tried again: at once when none is
        connected (a refused connect costs microseconds), else at most every RECONNECT_SECONDS."""
        connected = [s for s in self.streams if s is not None and s.transport is not None]
        if len(connected) < len(self.streams):
            now = time.monotonic()
            for slot, stream in enumerate(self.streams):
                if (stream is None or stream.transport is None) and (
                    not connected or now >= self.next_try[slot]
                ):
                    self.next_try[slot] = now + RECONNECT_SECONDS
                    self.streams[slot] = await self._connect(slot)
            connected = [s for s in self.streams if s is not None and s.transport is not None]
        if len(connected) <= 1:
            return connected[0] if connected else None
        return min(connected, key=lambda s: s.load)

    def any_listening(self) -> bool:
        """Whether an inference process accepts connections now (readiness: a dead one's socket refuses
        at once, before the supervisor has even noticed the death)."""
        for path in self.paths:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(path)
                except OSError:
                    continue
                return True
        return False

    async def _connect(self, slot: int) -> _Stream | None:
        try:
            _, stream = await asyncio.get_running_loop().create_unix_connection(_Stream, self.paths[slot])
        except OSError:
            return None  # not listening (yet): starting, or replaced after a death
        return stream
