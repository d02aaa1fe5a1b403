"""The inference process's loop: read requests from every HTTP process's stream, batch them per model, run
them, write the answers back on the stream each came from. One thread, one `select` for everything.

Why this shape (docs/engine.md has the picture):
- a request costs this process one wake-up: `select` returns, the frame is read and decoded, the batch
  runs, the answer is written with a non-blocking `send` (queued in the connection's outbox when the socket
  is full and written when it drains, so a stalled HTTP process delays nobody and loses nothing);
- while a batch runs, requests pile up in the sockets; the next `select` takes them all, so batches grow
  with the load and never wait when nothing else does (`batch_timeout` may ask for a wait);
- a queue per (task, model): batches alternate between the queues that have work, round robin, so a flood
  of one model's requests cannot starve another model's or another task's;
- a batch's answers go back in one `send` per stream;
- every batch first lets each task's registry look at the store (hot swaps land under saturation too);
- a request past its deadline (the HTTP middleware's arrival stamp plus the request timeout) is answered
  504 and never computed; one whose client left (a cancel frame) is dropped where it waits;
- explanations (seconds of CPU each) run on a thread of their own (Explainer): the loop goes on serving
  every other task meanwhile.

`Task` is what the loop needs of a task API; bertserve/api/base.py's TaskAPI implements it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from bertserve import metrics
from bertserve.engine import wire
from bertserve.errors import ClientError, error_body

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.5  # an idle process still looks at the store this often
READ_BYTES = 1 << 18


class Task(Protocol):
    endpoint: str
    max_batch_size: int

    def admit(self, header: dict[str, Any], body: memoryview) -> Any: ...

    def refresh(self) -> None: ...

    def observe_queue(self, waiting: list[Waiting]) -> None: ...

    def predict(self, batch: list) -> list: ...

    def render(self, output: Any) -> tuple[bytes, str]: ...


class Connection:
    """One HTTP process's stream: bytes read but not yet a whole frame, and answers not yet sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.open = True


@dataclass(eq=False, slots=True)
class Waiting:
    conn: Connection
    id: int
    arrived: float  # the HTTP middleware's stamp: the deadline counts from it
    received: float  # when this process read it: batch_timeout counts from it
    prepared: Any = None
    cancelled: bool = False
    queue: ModelQueue | None = None  # where it waits for a batch (None: the explainer's)


class FromThread(NamedTuple):
    """An answer the explainer thread hands to the loop's thread, which alone writes to the sockets."""

    conn: Connection
    id: int
    data: bytes


def answer_frame(request_id: int, status: int, body: bytes, ref: str | None = None, **extra: Any) -> bytes:
    return wire.frame(wire.ANSWER, {"id": request_id, "status": status, "ref": ref, **extra}, body)


def error_frame(request_id: int, status: int, detail: Any, headers: dict | None = None) -> bytes:
    return answer_frame(request_id, status, b"", detail=detail, headers=headers)


def client_error_frame(request_id: int, exc: ClientError) -> bytes:
    http = exc.to_http()
    return error_frame(request_id, http.status_code, http.detail, http.headers)


def expiry_frame(item: Waiting, request_timeout: float, endpoint: str) -> bytes | None:
    """The 504 for a request past its deadline (its client already got one: never compute it), counted;
    None while it is in time."""
    if time.monotonic() - item.arrived <= request_timeout:
        return None
    metrics.EXPIRED.labels(endpoint).inc()
    return error_frame(item.id, 504, error_body("timeout", "request timed out waiting for a worker"))


@dataclass
class ModelQueue:
    """The requests of one (task, model) waiting for a batch."""

    task: Task
    waiting: deque[Waiting] = field(default_factory=deque)
    sequences: int = 0  # of the requests not cancelled
    requests: int = 0  # not cancelled

    def push(self, item: Waiting) -> None:
        item.queue = self
        self.waiting.append(item)
        self.sequences += item.prepared.sequences
        self.requests += 1

    def take(self, budget: int) -> list[Waiting]:
        """Requests in arrival order up to `budget` sequences (at least one request)."""
        batch: list[Waiting] = []
        taken = 0
        while self.waiting:
            item = self.waiting[0]
            if item.cancelled:
                self.waiting.popleft()
                continue
            if batch and taken + item.prepared.sequences > budget:
                break
            self.waiting.popleft()
            batch.append(item)
            taken += item.prepared.sequences
        self.sequences -= taken
        self.requests -= len(batch)
        return batch


class EngineLoop:
    def __init__(
        self,
        listener: socket.socket,
        tasks: dict[str, Task],
        *,
        request_timeout: float,
        batch_timeout: float,
        explainer: Explainer | None = None,
        threads_for: Callable[[list], None] | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.listener = listener
        self.tasks = tasks
        self.request_timeout = request_timeout
        self.batch_timeout = batch_timeout
        self.explainer = explainer
        self.threads_for = threads_for or (lambda batch: None)
        self.refresh = refresh or self._refresh_each  # every task's registry looks at the store
        self.selector = selectors.DefaultSelector()
        self.queues: dict[tuple[str, str], ModelQueue] = {}
        self.index: dict[tuple[int, int], Waiting] = {}  # (connection, id) -> a request not started yet
        self.wake_read, self.wake_write = os.pipe()  # the explainer's answers are ready
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        if explainer is not None:
            explainer.start(self.deliver_from_thread)
        self._from_thread: deque[FromThread] = deque()
        for task in tasks.values():  # each series at 0 from the start: rate() and increase() see the first
            metrics.EXPIRED.labels(task.endpoint)
            metrics.CANCELLED.labels(task.endpoint)

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        while not should_stop():
            self.step()

    def step(self) -> None:
        """One turn: wait for what comes (not at all when a batch is ready), read it, run one batch. The
        store is looked at before the new requests are read: they resolve against what it names now."""
        events_ready = self.selector.select(self._wait_seconds())
        self.refresh()
        for key, events in events_ready:
            if key.data is None:
                self._accept()
            elif key.data == "wake":
                self._drain_wake()
            else:
                if events & selectors.EVENT_READ:
                    self._read(key.data)
                if events & selectors.EVENT_WRITE:
                    self._flush(key.data)
        if (ready := self._next_queue()) is not None:
            self._run(ready)

    def _refresh_each(self) -> None:
        for task in self.tasks.values():
            task.refresh()

    def _wait_seconds(self) -> float:
        if not self.queues:
            return IDLE_POLL_SECONDS
        now = time.monotonic()
        due = min(self._due(q, now) for q in self.queues.values())
        return max(0.0, min(due - now, IDLE_POLL_SECONDS))

    def _due(self, model_queue: ModelQueue, now: float) -> float:
        """When this queue's batch should start: now when it is full or nothing asks to wait."""
        if self.batch_timeout <= 0 or model_queue.sequences >= model_queue.task.max_batch_size:
            return now
        oldest = next((w for w in model_queue.waiting if not w.cancelled), None)
        return now if oldest is None else oldest.received + self.batch_timeout

    def _next_queue(self) -> ModelQueue | None:
        """The first queue in round-robin order that is due; it goes to the back of the order."""
        now = time.monotonic()
        for key, model_queue in list(self.queues.items()):
            if model_queue.sequences <= 0:  # only cancelled requests left (every request has an input)
                del self.queues[key]
                continue
            if self._due(model_queue, now) <= now:
                del self.queues[key]  # re-inserted at the end: the next batch goes to another queue first
                self.queues[key] = model_queue
                return model_queue
        return None

    # ---- the streams -------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, Connection(sock))

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        try:
            frames = wire.read_frames(conn.inbox)
        except wire.FrameError as exc:
            logger.error("closing a stream that sent no frame of ours: %s", exc)
            self._close(conn)
            return
        for kind, header, body in frames:
            if kind == wire.REQUEST:
                self._receive(conn, header, body)
            elif kind == wire.CANCEL:
                self._cancel(conn, header["id"])

    def _receive(self, conn: Connection, header: dict[str, Any], body: memoryview) -> None:
        item = Waiting(conn, header["id"], header["arrived"], time.monotonic())
        task = self.tasks.get(header["task"])
        if self._expired(item, header["task"]):
            return
        if task is None and self.explainer is not None and header["task"] == self.explainer.endpoint:
            self.index[(id(conn), item.id)] = item
            self.explainer.submit(item, header, body)
            return
        if task is None:
            self.send(conn, error_frame(item.id, 404, error_body("not_found", "no such task here")))
            return
        try:
            item.prepared = task.admit(header, body)
        except ClientError as exc:
            self.send(conn, client_error_frame(item.id, exc))
            return
        except Exception:
            logger.exception("could not prepare a %s request", header["task"])
            detail = error_body("internal_error", "the request could not be prepared")
            self.send(conn, error_frame(item.id, 500, detail))
            return
        key = (task.endpoint, item.prepared.model.ref)
        model_queue = self.queues.get(key)
        if model_queue is None:
            model_queue = self.queues[key] = ModelQueue(task)
        model_queue.push(item)
        self.index[(id(conn), item.id)] = item

    def _cancel(self, conn: Connection, request_id: int) -> None:
        item = self.index.pop((id(conn), request_id), None)
        if item is not None and (endpoint := self._withdraw(item)) is not None:
            metrics.CANCELLED.labels(endpoint).inc()

    def _withdraw(self, item: Waiting) -> str | None:
        """Drop a request not started yet; its task's endpoint, or None when the explainer started it."""
        if item.queue is None:
            assert self.explainer is not None
            if not self.explainer.cancel(item):
                return None
            return self.explainer.endpoint
        item.cancelled = True
        item.queue.sequences -= item.prepared.sequences
        item.queue.requests -= 1
        return item.queue.task.endpoint

    def send(self, conn: Connection, data: bytes) -> None:
        """Write now if the socket takes it; what it does not take waits in the outbox (never dropped)."""
        if not conn.open:
            return
        if conn.outbox:
            conn.outbox += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(data):
            conn.outbox += memoryview(data)[sent:]
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        del conn.outbox[:sent]
        if not conn.outbox:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Connection) -> None:
        """The HTTP process is gone: what it sent and is not started yet is never computed."""
        if not conn.open:
            return
        conn.open = False
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        for key in [key for key in self.index if key[0] == id(conn)]:
            self._withdraw(self.index.pop(key))

    def deliver_from_thread(self, conn: Connection, request_id: int, data: bytes) -> None:
        """The explainer's answers: handed to this thread, which alone writes to the sockets."""
        self._from_thread.append(FromThread(conn, request_id, data))
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_write, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_read, 4096):
                pass
        while self._from_thread:
            answer = self._from_thread.popleft()
            self.index.pop((id(answer.conn), answer.id), None)
            self.send(answer.conn, answer.data)

    # ---- batches -----------------------------------------------------------------------------------

    def _expired(self, item: Waiting, endpoint: str) -> bool:
        """Past its deadline: answered 504 (nobody waits for it) and never computed."""
        expired = expiry_frame(item, self.request_timeout, endpoint)
        if expired is not None:
            self.send(item.conn, expired)
        return expired is not None

    def _run(self, model_queue: ModelQueue) -> None:
        task = model_queue.task
        taken = model_queue.take(task.max_batch_size)
        waiting = sum(q.requests for q in self.queues.values() if q.task is task)
        metrics.QUEUE_DEPTH.labels(task.endpoint).set(waiting)  # what operators alert on
        batch = []
        for item in taken:
            self.index.pop((id(item.conn), item.id), None)
            if item.conn.open and not self._expired(item, task.endpoint):
                batch.append(item)
        if not batch:
            return
        task.observe_queue(batch)
        prepared = [item.prepared for item in batch]
        self.threads_for(prepared)
        by_stream: dict[Connection, list[bytes]] = {}  # one send per stream for the whole batch
        try:
            outputs = task.predict(prepared)
            for item, output in zip(batch, outputs, strict=True):
                body, ref = task.render(output)
                by_stream.setdefault(item.conn, []).append(answer_frame(item.id, 200, body, ref))
        except Exception:
            logger.exception("batch of %d requests failed", len(batch))
            detail = error_body("internal_error", "the model failed on this batch")
            by_stream = {}
            for item in batch:
                by_stream.setdefault(item.conn, []).append(error_frame(item.id, 500, detail))
        for conn, frames in by_stream.items():
            self.send(conn, b"".join(frames))


class Explainer:
    """Explanations on a thread of their own, one at a time, its task set up on first use: each costs
    seconds of CPU, and the loop goes on with every other task meanwhile. Requests wait in order; one whose
    client left before it started is dropped, one past its deadline is answered 504 uncomputed."""

    def __init__(self, endpoint: str, make_task: Callable[[], Task], request_timeout: float) -> None:
        self.endpoint = endpoint
        self.make_task = make_task
        self.request_timeout = request_timeout
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.started: set[int] = set()  # ids of the Waiting items taken by the thread
        self.deliver: Callable[[Connection, int, bytes], None] | None = None

    def start(self, deliver: Callable[[Connection, int, bytes], None]) -> None:
        self.deliver = deliver
        threading.Thread(target=self._serve, daemon=True, name="explain").start()

    def submit(self, item: Waiting, header: dict[str, Any], body: memoryview) -> None:
        self.pending.put((item, header, body))

    def cancel(self, item: Waiting) -> bool:
        """True when it was still waiting (it never runs now)."""
        with self.lock:
            if id(item) in self.started:
                return False
            item.cancelled = True
            return True

    def _serve(self) -> None:
        task: Task | None = None
        while True:
            item, header, body = self.pending.get()
            with self.lock:
                if item.cancelled:
                    continue
                self.started.add(id(item))
            try:
                if task is None:
                    task = self.make_task()  # the first explanation pays for loading its models
                task.refresh()
                self._explain(task, item, header, body)
            except Exception:
                logger.exception("explanation failed")
                detail = error_body("internal_error", "the model failed on this explanation")
                self._reply(item, error_frame(item.id, 500, detail))
            finally:
                with self.lock:
                    self.started.discard(id(item))

    def _explain(self, task: Task, item: Waiting, header: dict[str, Any], body: memoryview) -> None:
        if (expired := expiry_frame(item, self.request_timeout, self.endpoint)) is not None:
            self._reply(item, expired)
            return
        try:
            prepared = task.admit(header, body)
        except ClientError as exc:
            self._reply(item, client_error_frame(item.id, exc))
            return
        item.prepared = prepared
        task.observe_queue([item])
        (output,) = task.predict([prepared])
        answer, ref = task.render(output)
        self._reply(item, answer_frame(item.id, 200, answer, ref))

    def _reply(self, item: Waiting, data: bytes) -> None:
        assert self.deliver is not None
        self.deliver(item.conn, item.id, data)


def bind_listener(path: str) -> socket.socket:
    """The inference process's socket, in the server's 0700 folder (only our user can reach it); a stale
    socket file of a process that died is replaced."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError as exc:
        if exc.errno == errno.EINVAL or len(path) > 100:
            raise OSError(f"socket path too long for a unix socket ({len(path)} bytes): {path}") from exc
        raise
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener
