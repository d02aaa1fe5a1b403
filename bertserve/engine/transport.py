"""Answers from the inference workers (and the supervisor) to the HTTP process awaiting them.

One ZeroMQ PUSH -> PULL pipe per HTTP process, with no broker in between and no high-water mark on either
side, so no answer is ever dropped by construction. (LitServe's ZeroMQ transport goes through a PUB/SUB
broker, and PUB drops what a subscriber cannot take past its high-water mark of 1,000 messages: a stalled HTTP
process lost answers and its clients got 504s.) A worker sends one message per HTTP process per batch, with
every answer of that batch for it; the HTTP process hands them to LitServe's reader one at a time.

Addresses live in Linux's abstract socket namespace (`ipc://@name`): nothing on disk to clean up, no path
length limit from a deep TMPDIR. A PUSH socket that connects before its HTTP process has bound queues what it
sends until the pipe opens. Nothing is pickled: each answer travels as a JSON header and its body bytes
(litserve_seam.answer_to_bytes), so whatever reaches the socket can at worst be a malformed answer.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import deque
from queue import Empty
from typing import Any

import zmq
import zmq.asyncio

from bertserve.engine.litserve_seam import answer_from_bytes, answer_to_bytes

LINGER_MS = 2000  # how long a closing worker keeps trying to deliver what it still has queued


class ResponseTransport:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"bertserve-answers-{uuid.uuid4().hex}"
        self._owner = 0  # the pid whose sockets these are: a forked child makes its own
        self._context: zmq.Context | None = None
        self._pushers: dict[int, zmq.Socket] = {}
        self._async_context: zmq.asyncio.Context | None = None
        self._pull: zmq.asyncio.Socket | None = None
        self._received: deque = deque()

    def address(self, consumer_id: int) -> str:
        return f"ipc://@{self.name}-{consumer_id}"

    def _fresh(self) -> None:
        if self._owner != os.getpid():  # forked (or unpickled): never use the parent's sockets
            self._owner = os.getpid()
            self._context, self._pushers = None, {}
            self._async_context, self._pull, self._received = None, None, deque()

    # ---- sending (workers, supervisor) --------------------------------------------------------------

    def _pusher(self, consumer_id: int) -> zmq.Socket:
        self._fresh()
        if consumer_id not in self._pushers:
            if self._context is None:
                self._context = zmq.Context()
            socket = self._context.socket(zmq.PUSH)
            socket.setsockopt(zmq.SNDHWM, 0)  # 0: no limit, never drop or block
            socket.setsockopt(zmq.LINGER, LINGER_MS)
            socket.connect(self.address(consumer_id))
            self._pushers[consumer_id] = socket
        return self._pushers[consumer_id]

    def send_many(self, items: list[Any], consumer_id: int) -> None:
        """Every answer of one batch for one HTTP process, in one message (a JSON header and a body each)."""
        self._pusher(consumer_id).send_multipart([part for item in items for part in answer_to_bytes(item)])

    def send(self, item: Any, consumer_id: int) -> None:
        self.send_many([item], consumer_id)

    def connect_publisher(self, consumers: int = 0) -> None:
        """Open the pipes to the first `consumers` HTTP processes now (worker start-up)."""
        for consumer_id in range(consumers):
            self._pusher(consumer_id)

    # ---- receiving (HTTP processes) -----------------------------------------------------------------

    async def areceive(self, consumer_id: int | None = None, timeout: float | None = None) -> Any:
        """The next answer for HTTP process `consumer_id` (LitServe's response reader calls this)."""
        self._fresh()
        if self._received:
            return self._received.popleft()
        if self._pull is None:
            self._async_context = zmq.asyncio.Context()
            self._pull = self._async_context.socket(zmq.PULL)
            self._pull.setsockopt(zmq.RCVHWM, 0)
            self._pull.bind(self.address(consumer_id or 0))
        try:
            receiving = self._pull.recv_multipart()
            message = await (receiving if timeout is None else asyncio.wait_for(receiving, timeout))
        except (TimeoutError, zmq.ZMQError):
            raise Empty from None
        self._received.extend(answer_from_bytes(*message[i : i + 2]) for i in range(0, len(message), 2))
        return self._received.popleft()

    def close(self, **_: Any) -> None:
        """LitServe closes the transport at shutdown (also in the main process, which may never have sent)."""
        if self._owner != os.getpid():
            return
        for socket in self._pushers.values():
            socket.close()
        if self._pull is not None:
            self._pull.close(linger=0)
        self._pushers, self._pull = {}, None

    def __reduce__(self):
        return ResponseTransport, (self.name,)
