"""Hands requests from an HTTP process to the request queue, one round trip per pass of its event loop.

Every call on the queue is a blocking round trip to the Manager process (~0.15 ms, more when the CPUs are
busy) in which the event loop does nothing else. Under load, several requests reach the endpoint in one
pass of the loop (they arrived together); they are queued together, by one `put_many` scheduled after
them. The request is queued after its handler has registered for the answer and yielded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from litserve.server import RegularRequestHandler

logger = logging.getLogger(__name__)


class SubmittingHandler(RegularRequestHandler):
    """LitServe's request handler (queue, await the answer, raise its error) with batched queueing."""

    def __init__(self, lit_api, server) -> None:
        super().__init__(lit_api, server)
        self.pending: list[tuple] = []

    async def _submit_request(self, payload: Any) -> tuple[str, int]:
        response_queue_id = self.server.app.response_queue_id
        uid = str(uuid.uuid4())
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((response_queue_id, uid, time.monotonic(), payload))
        return uid, response_queue_id

    def _flush(self) -> None:
        entries, self.pending = self.pending, []
        try:
            self.server._get_request_queue(self.lit_api.api_path).put_many(entries)
        except Exception:  # the Manager is gone: the server is stopping; these requests answer 504
            logger.exception("could not queue %d requests", len(entries))
