"""The batching loop each inference worker runs (replaces LitServe's BatchedLoop).

Differences that matter for a BERT service:
- the batch budget counts sequences, not requests: a request with N inputs is N toward max_batch_size;
- each request is validated and tokenized on its own, so a bad one gets its 4xx and its batch-mates go on;
- no waiting when nothing waits: block for the first request, then take what is already queued (and wait at
  most batch_timeout for more); under load, requests pile up while the model runs and form big batches;
- a request past its deadline is answered 504 and never computed: its client already got 504. The deadline
  counts from when the HTTP process's middleware received the request, the clock its 504 uses (both
  `time.monotonic()`, one clock for every process of the machine), and it is checked again just before the
  forward pass;
- a request whose client went away (the HTTP process cancelled it) is dropped when carried to a next batch;
- before every batch, carried requests or not, the worker lets its model registry look for store changes
  (hot swap, registry.py), so a swap lands under saturation too;
- the answers of a batch go back in one message per HTTP process (transport.py).
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

from fastapi import HTTPException

from bertserve import metrics
from bertserve.engine.litserve_seam import STOP, WorkerLoop, answer
from bertserve.errors import ClientError, error_body

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.5  # an idle worker still looks at the store this often


@dataclass
class Queued:
    response_queue_id: int
    uid: str
    submitted_at: float
    prepared: Any


class SequenceBatchingLoop(WorkerLoop):
    def __init__(self) -> None:
        super().__init__()
        self.outbox: dict[int, list[tuple]] = {}  # answers not sent yet, by HTTP process

    def __call__(
        self, lit_api, device, worker_id, request_queue, transport, workers_setup_status, callback_runner
    ):
        holder = os.getpid()  # the queue records what this worker holds under its pid
        carried: list[Queued] = []
        while True:
            batch, carried, stop = self._collect(lit_api, request_queue, holder, carried)
            if batch:
                self._answer(lit_api, transport, batch)
            self._send(transport)
            # after the answers, off the latency path: what this worker still holds, the queue depth, and
            # which carried requests were cancelled meanwhile
            waiting, cancelled = request_queue.release(holder, [item.uid for item in carried])
            metrics.QUEUE_DEPTH.labels(lit_api.endpoint).set(waiting)
            if cancelled:
                dropped = set(cancelled)
                carried = [item for item in carried if item.uid not in dropped]
                metrics.CANCELLED.labels(lit_api.endpoint).inc(len(dropped))
            if stop:
                return

    def _reply(self, item: Queued | tuple, payload: Any, ok: bool) -> None:
        response_queue_id, uid = (item.response_queue_id, item.uid) if isinstance(item, Queued) else item
        self.outbox.setdefault(response_queue_id, []).append(answer(uid, payload, ok, self.worker_id))

    def _send(self, transport) -> None:
        """One message per HTTP process with every answer gathered for it."""
        outbox, self.outbox = self.outbox, {}
        for response_queue_id, answers in outbox.items():
            transport.send_many(answers, response_queue_id)

    def _expired(self, lit_api, response_queue_id: int, uid: str, submitted_at: float) -> bool:
        """Past its timeout its client already got 504: answer it so (nobody waits) and never compute it."""
        timeout = lit_api.request_timeout
        if timeout in (-1, False) or time.monotonic() - submitted_at <= timeout:
            return False
        error = HTTPException(504, error_body("timeout", "request timed out waiting for a worker"))
        self._reply((response_queue_id, uid), error, ok=False)
        metrics.EXPIRED.labels(lit_api.endpoint).inc()
        return True

    def _admit(self, lit_api, entry) -> Queued | None:
        """Decode one request; answer it at once if it is bad or waited past its timeout."""
        response_queue_id, uid, submitted_at, payload = entry
        if self._expired(lit_api, response_queue_id, uid, submitted_at):
            return None
        try:
            return Queued(response_queue_id, uid, submitted_at, lit_api.decode_request(payload))
        except ClientError as exc:
            self._reply((response_queue_id, uid), exc.to_http(), ok=False)
        except Exception:
            logger.exception("could not prepare request %s", uid)
            error = HTTPException(500, error_body("internal_error", "the request could not be prepared"))
            self._reply((response_queue_id, uid), error, ok=False)
        return None

    def _collect(self, lit_api, request_queue, holder: int, carried: list[Queued]):
        """(batch, requests carried to the next batch, stop). Requests are taken in bulk (`take`); one that
        would overflow the batch's sequence budget, and those taken after it, wait for the next batch."""
        lit_api.refresh()  # every batch: a swap must land even when requests are carried from batch to batch
        waiting = deque(carried)
        batch: list[Queued] = []
        budget, sequences, stop = lit_api.max_batch_size, 0, False
        deadline = time.monotonic() + lit_api.batch_timeout
        drained = False  # the last take emptied the queue
        while not stop:
            while waiting and (not batch or sequences + waiting[0].prepared.sequences <= budget):
                item = waiting.popleft()
                if not self._expired(lit_api, item.response_queue_id, item.uid, item.submitted_at):
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
            elif self.outbox:
                break  # answers (errors, expiries) to send before blocking for the next requests
            else:
                entries = self._first_requests(lit_api, request_queue, holder, limit)
                deadline = time.monotonic() + lit_api.batch_timeout
            drained = len(entries) < limit
            if not entries:
                break
            if STOP in entries:  # shutting down: nothing after it is answered
                entries, stop = entries[: entries.index(STOP)], True
            for entry in entries:
                if (item := self._admit(lit_api, entry)) is not None:
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
        # last look before the forward pass: what expired while the batch was gathered is not computed
        batch = [i for i in batch if not self._expired(lit_api, i.response_queue_id, i.uid, i.submitted_at)]
        self._send(transport)  # errors and expiries found while gathering do not wait for the forward pass
        if not batch:
            return
        lit_api.observe_queue([(item.prepared, item.submitted_at) for item in batch])
        try:
            outputs = lit_api.predict([item.prepared for item in batch])
            for item, output in zip(batch, outputs, strict=True):
                self._reply(item, lit_api.encode_response(output), ok=True)
        except Exception:
            logger.exception("batch of %d requests failed", len(batch))
            error = HTTPException(500, error_body("internal_error", "the model failed on this batch"))
            for item in batch:
                self._reply(item, error, ok=False)
