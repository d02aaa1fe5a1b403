"""Hands requests from an HTTP process to the request queue, one round trip per pass of its event loop.

Every call on the queue is a blocking round trip to the Manager process (~0.15 ms, more when the CPUs are
busy) in which the event loop does nothing else. Under load, several requests reach the endpoint in one
pass of the loop (they arrived together); they are queued together, by one `put_many` scheduled after
them. A request is queued after its handler has registered for the answer and yielded, and never waits
behind more than FLUSH_AFTER_SECONDS of other requests' work (tokenizing a request of 32 long inputs takes
milliseconds): the workers start on it while this process prepares the rest of a burst.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from litserve.server import RegularRequestHandler

logger = logging.getLogger(__name__)

FLUSH_AFTER_SECONDS = 0.001


class SubmittingHandler(RegularRequestHandler):
    """LitServe's request handler (queue, await the answer, raise its error) with batched queueing."""

    def __init__(self, lit_api, server) -> None:
        super().__init__(lit_api, server)
        self.pending: list[tuple] = []
        self.first_pending = 0.0  # when the oldest pending request was submitted

    async def _submit_request(self, payload: tuple[float, tuple[bytes, bytes]]) -> tuple[str, int]:
        """`payload`: when the request arrived (time.monotonic(): the workers count its age from then, for
        its timeout) and the submission."""
        arrived, submission = payload
        response_queue_id = self.server.app.response_queue_id
        uid = str(uuid.uuid4())
        now = time.monotonic()
        if self.pending and now - self.first_pending > FLUSH_AFTER_SECONDS:
            self._flush()
        if not self.pending:
            self.first_pending = now
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((response_queue_id, uid, arrived, submission))
        return uid, response_queue_id

    def _flush(self) -> None:
        if not self.pending:  # flushed early, before its scheduled call
            return
        entries, self.pending = self.pending, []
        try:
            self.server._get_request_queue(self.lit_api.api_path).put_many(entries)
        except Exception:  # the Manager is gone: the server is stopping; these requests answer 504
            logger.exception("could not queue %d requests", len(entries))
