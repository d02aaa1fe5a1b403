"""The batching loop each inference worker runs (replaces LitServe's BatchedLoop).

Differences that matter for a BERT service:
- the batch budget counts sequences, not requests: a request with N inputs is N toward max_batch_size;
- each request is validated and tokenized on its own, so a bad one gets its 4xx and its batch-mates go on;
- no waiting when nothing waits: block for the first request, then take what is already queued (and wait at
  most batch_timeout for more); under load, requests pile up while the model runs and form big batches;
- a request that waited past request_timeout is answered 504 and never computed (its client already got 504);
- before each batch the worker lets its model registry look for store changes (hot swap, registry.py);
- the queue records which requests this worker holds as it hands them out, and forgets them once they are
  answered (request_queue.py), so that if the worker dies the supervisor can answer them at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from litserve.loops.base import _SENTINEL_VALUE, DefaultLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from litserve.utils import PickleableHTTPException as WorkerHTTPException

from bertserve import metrics
from bertserve.api.transport import ResponseTransport
from bertserve.errors import ClientError, error_body

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.5  # an idle worker still looks at the store this often


@dataclass
class Queued:
    response_queue_id: int
    uid: str
    submitted_at: float
    prepared: Any


class SequenceBatchingLoop(DefaultLoop):
    def __call__(
        self, lit_api, device, worker_id, request_queue, transport, workers_setup_status, callback_runner
    ):
        if isinstance(transport, ResponseTransport):
            transport.connect_publisher()
        holder = os.getpid()  # the queue records what this worker holds under its pid
        carried: list[Queued] = []
        while True:
            batch, carried, stop = self._collect(lit_api, request_queue, holder, transport, carried)
            if batch:
                self._answer(lit_api, transport, batch)
                # after the answers, off the latency path: what this worker still holds, and the queue depth
                waiting = request_queue.release(holder, [item.uid for item in carried])
                metrics.QUEUE_DEPTH.labels(lit_api.endpoint).set(waiting)
            if stop:
                return

    def _reply(self, transport, item: Queued | tuple, payload: Any, ok: bool) -> None:
        response_queue_id, uid = (item.response_queue_id, item.uid) if isinstance(item, Queued) else item
        status = LitAPIStatus.OK if ok else LitAPIStatus.ERROR
        self.put_response(transport, response_queue_id, uid, payload, status, LoopResponseType.REGULAR)

    def _expired(self, lit_api, transport, response_queue_id: int, uid: str, submitted_at: float) -> bool:
        """Past its timeout its client already got 504: answer it so (nobody waits) and never compute it."""
        timeout = lit_api.request_timeout
        if timeout in (-1, False) or time.monotonic() - submitted_at <= timeout:
            return False
        error = WorkerHTTPException(504, error_body("timeout", "request timed out waiting for a worker"))
        self._reply(transport, (response_queue_id, uid), error, ok=False)
        metrics.EXPIRED.labels(lit_api.endpoint).inc()
        return True

    def _admit(self, lit_api, transport, entry) -> Queued | None:
        """Decode one request; answer it at once if it is bad or waited past its timeout."""
        response_queue_id, uid, submitted_at, payload = entry
        if self._expired(lit_api, transport, response_queue_id, uid, submitted_at):
            return None
        try:
            return Queued(response_queue_id, uid, submitted_at, lit_api.decode_request(payload))
        except ClientError as exc:
            self._reply(transport, (response_queue_id, uid), exc.to_http(), ok=False)
        except Exception:
            logger.exception("could not prepare request %s", uid)
            error = WorkerHTTPException(
                500, error_body("internal_error", "the request could not be prepared")
            )
            self._reply(transport, (response_queue_id, uid), error, ok=False)
        return None

    def _collect(self, lit_api, request_queue, holder: int, transport, carried: list[Queued]):
        """(batch, requests carried to the next batch, stop). Requests are taken in bulk (`take`); one that
        would overflow the batch's sequence budget, and those taken after it, wait for the next batch."""
        waiting = deque(carried)
        batch: list[Queued] = []
        budget, sequences, stop = lit_api.max_batch_size, 0, False
        deadline = time.monotonic() + lit_api.batch_timeout
        drained = False  # the last take emptied the queue
        while not stop:
            while waiting and (not batch or sequences + waiting[0].prepared.sequences <= budget):
                item = waiting.popleft()
                if not self._expired(lit_api, transport, item.response_queue_id, item.uid, item.submitted_at):
                    batch.append(item)
                    sequences += item.prepared.sequences
            if waiting or sequences >= budget:
                break
            remaining = max(0.0, deadline - time.monotonic())
            if batch and drained and remaining == 0:
                break  # asking again would be a round trip for what arrived in the last few microseconds
            limit = budget - sequences
            if batch:
                entries = request_queue.take(holder, limit, remaining)
            else:
                entries = self._first_requests(lit_api, request_queue, holder, limit)
                deadline = time.monotonic() + lit_api.batch_timeout
            drained = len(entries) < limit
            if not entries:
                break
            if _SENTINEL_VALUE in entries:  # shutting down: nothing after it is answered
                entries, stop = entries[: entries.index(_SENTINEL_VALUE)], True
            for entry in entries:
                if (item := self._admit(lit_api, transport, entry)) is not None:
                    waiting.append(item)
        return batch, list(waiting), stop

    @staticmethod
    def _first_requests(lit_api, request_queue, holder: int, limit: int) -> list:
        """Block for a batch's first requests; look at the store while idle and just before decoding them."""
        while True:
            lit_api.refresh()
            if entries := request_queue.take(holder, limit, IDLE_POLL_SECONDS):
                lit_api.refresh()
                return entries

    def _answer(self, lit_api, transport, batch: list[Queued]) -> None:
        lit_api.observe_queue([(item.prepared, item.submitted_at) for item in batch])
        try:
            outputs = lit_api.predict([item.prepared for item in batch])
            for item, output in zip(batch, outputs, strict=True):
                self._reply(transport, item, lit_api.encode_response(output), ok=True)
        except Exception:
            logger.exception("batch of %d requests failed", len(batch))
            error = WorkerHTTPException(500, error_body("internal_error", "the model failed on this batch"))
            for item in batch:
                self._reply(transport, item, error, ok=False)
