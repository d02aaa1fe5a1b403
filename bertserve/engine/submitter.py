"""Hands requests from an HTTP process to the request queue, one round trip per pass of its event loop.

Every call on the queue is a blocking round trip to the Manager process (~0.15 ms, more when the CPUs are
busy). Under load it is made by one thread per API, in order, so the event loop goes on parsing and
answering meanwhile (profiled at c=64: the round trips took ~30% of an HTTP process's samples when the loop
made them); a lone request is handed over by the loop itself, sparing it the thread's wake-up. Several
requests that reach the endpoint in one pass of the loop (they arrived together) are queued together, by one
`put_many` scheduled after them. A request is queued after its handler has registered for the answer and
yielded, and never waits behind more than FLUSH_AFTER_SECONDS of other requests' work (tokenizing a request
of 32 long inputs takes milliseconds): the workers start on it while this process prepares the rest of a
burst.

A request whose client went away before its answer (a disconnect, or the middleware's 504) is cancelled
the same way: taken back before it is queued, or removed from the queue in the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bertserve import metrics
from bertserve.engine.litserve_seam import SubmitHook

logger = logging.getLogger(__name__)

FLUSH_AFTER_SECONDS = 0.001


class SubmittingHandler(SubmitHook):
    """LitServe's request handler (queue, await the answer, raise its error) with batched queueing."""

    def __init__(self, lit_api, server) -> None:
        super().__init__(lit_api, server)
        self.pending: list[tuple] = []
        self.cancelled: list[str] = []
        self.first_pending = 0.0  # when the oldest pending request was submitted
        self.flush_scheduled = False
        self.queue_thread: ThreadPoolExecutor | None = None
        self.handing_over = 0  # hand-overs still in the queue thread

    def submit(self, payload: tuple[str, float, tuple[bytes, bytes]]) -> tuple[str, int]:
        """`payload`: the request's uid, when it arrived (time.monotonic() in the middleware: the workers
        count its deadline from then, as the 504 does) and the submission."""
        uid, arrived, submission = payload
        response_queue_id = self.server.app.response_queue_id
        now = time.monotonic()
        if self.pending and now - self.first_pending > FLUSH_AFTER_SECONDS:
            self._flush()
        if not self.pending:
            self.first_pending = now
        self._schedule()
        self.pending.append((response_queue_id, uid, arrived, submission))
        return uid, response_queue_id

    async def answer(self, arrived: float, submission: tuple[bytes, bytes]):
        """Queue the request and await its answer. Cancelled (its client is gone): the request is withdrawn
        from the queue, or from the worker holding it, before it is computed."""
        uid = str(uuid.uuid4())
        try:
            return await self.handle_request((uid, arrived, submission), bytes)
        except asyncio.CancelledError:
            self._cancel(uid)
            raise

    def _cancel(self, uid: str) -> None:
        self.server.response_buffer.pop(uid, None)
        unqueued = [entry for entry in self.pending if entry[1] != uid]
        if len(unqueued) < len(self.pending):  # it never reached the queue
            self.pending = unqueued
            metrics.CANCELLED.labels(self.lit_api.endpoint).inc()
            return
        self.cancelled.append(uid)
        self._schedule()

    def _schedule(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        entries, self.pending = self.pending, []
        cancelled, self.cancelled = self.cancelled, []
        if not entries and not cancelled:  # flushed early, before its scheduled call
            return
        if len(entries) + len(cancelled) == 1 and self.handing_over == 0:
            self._hand_over(entries, cancelled)  # a lone request: the loop has nothing else to do meanwhile
            return
        if self.queue_thread is None:  # made in the HTTP process, after the fork
            self.queue_thread = ThreadPoolExecutor(1, thread_name_prefix=f"queue-{self.lit_api.endpoint}")
        self.handing_over += 1  # later lone requests go through the thread too, behind these (in order)
        self.queue_thread.submit(self._hand_over, entries, cancelled).add_done_callback(self._handed_over)

    def _handed_over(self, _) -> None:
        self.handing_over -= 1

    def _hand_over(self, entries: list[tuple], cancelled: list[str]) -> None:
        """In the queue thread, in submission order: the Manager round trips never stall the event loop."""
        try:
            queue = self.request_queue()
            if entries:
                queue.put_many(entries)
            if cancelled:
                removed = queue.cancel(cancelled)
                metrics.CANCELLED.labels(self.lit_api.endpoint).inc(removed)
        except Exception:  # the Manager is gone: the server is stopping; these requests answer 504
            logger.exception("could not queue %d requests", len(entries))
