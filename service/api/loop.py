"""The batching loop each inference worker runs (replaces LitServe's BatchedLoop).

Differences that matter for a BERT service:
- the batch budget counts sequences, not requests: a request with N inputs is N toward max_batch_size;
- each request is validated and tokenized on its own, so a bad one gets its 4xx and its batch-mates go on;
- no waiting when nothing waits: block for the first request, then take what is already queued (and wait at
  most batch_timeout for more); under load, requests pile up while the model runs and form big batches;
- a request that waited past request_timeout is answered 504 and never computed (its client already got 504);
- before each batch the worker lets its model registry look for store changes (hot swap, registry.py); as it
  takes each request it appends it to the list of requests it holds (claims file, emptied once a batch is
  answered), so that if it dies the supervisor can answer them at once (supervisor.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import orjson
from litserve.loops.base import _SENTINEL_VALUE, DefaultLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from litserve.utils import PickleableHTTPException as WorkerHTTPException

from service import metrics
from service.api.transport import ResponseTransport
from service.errors import ClientError, error_body

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.5  # an idle worker still looks at the store this often


def claims_path(folder: Path, pid: int) -> Path:
    """Where worker `pid` lists the requests it holds (read by supervisor.py when the worker dies)."""
    return folder / f"claims-{pid}.jsonl"


def read_claims(path: Path) -> list[tuple[int, str]]:
    """(response queue, uid) of every request listed; a line cut short by the worker's death is skipped."""
    claims = []
    with contextlib.suppress(OSError):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError, ValueError, TypeError):
                response_queue_id, uid = orjson.loads(line)
                claims.append((response_queue_id, uid))
    return claims


class ClaimsFile:
    """The requests a worker holds, one JSON line each: a single append per request taken, because an atomic
    rewrite (write + rename) per request cost ~7% of the worker's time under load (py-spy)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def add(self, response_queue_id: int, uid: str) -> None:
        os.write(self._fd, orjson.dumps([response_queue_id, uid]) + b"\n")

    def reset(self, held: list[tuple[int, str]]) -> None:
        """After a batch is answered: only what is still held (the request carried to the next batch)."""
        os.ftruncate(self._fd, 0)
        for response_queue_id, uid in held:
            self.add(response_queue_id, uid)


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
        carried: Queued | None = None
        while True:
            batch, carried, stop = self._collect(lit_api, request_queue, transport, carried)
            if batch:
                self._answer(lit_api, transport, batch)
                if claims := self._claims(lit_api):
                    claims.reset([(carried.response_queue_id, carried.uid)] if carried else [])
            if stop:
                return

    @staticmethod
    def _claims(lit_api) -> ClaimsFile | None:
        """This worker's claims file, opened on first use (in the worker process)."""
        folder = getattr(lit_api, "claims_dir", None)
        if folder is None:
            return None
        if getattr(lit_api, "_claims_file", None) is None:
            lit_api._claims_file = ClaimsFile(claims_path(folder, os.getpid()))
        return lit_api._claims_file

    def _reply(self, transport, item: Queued | tuple, payload: Any, ok: bool) -> None:
        response_queue_id, uid = (item.response_queue_id, item.uid) if isinstance(item, Queued) else item
        status = LitAPIStatus.OK if ok else LitAPIStatus.ERROR
        self.put_response(transport, response_queue_id, uid, payload, status, LoopResponseType.REGULAR)

    def _admit(self, lit_api, transport, entry) -> Queued | None:
        """Decode one request; answer it at once if it is bad or waited past its timeout."""
        response_queue_id, uid, submitted_at, payload = entry
        if (
            lit_api.request_timeout not in (-1, False)
            and time.monotonic() - submitted_at > lit_api.request_timeout
        ):
            error = WorkerHTTPException(504, error_body("timeout", "request timed out waiting for a worker"))
            self._reply(transport, (response_queue_id, uid), error, ok=False)
            metrics.EXPIRED.labels(lit_api.endpoint).inc()
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

    def _collect(self, lit_api, request_queue: Queue, transport, carried: Queued | None):
        batch: list[Queued] = [carried] if carried else []
        sequences = carried.prepared.sequences if carried else 0
        deadline = time.monotonic() + lit_api.batch_timeout
        while sequences < lit_api.max_batch_size:
            try:
                if not batch:
                    entry = self._first_request(lit_api, request_queue)
                    deadline = time.monotonic() + lit_api.batch_timeout
                else:
                    remaining = deadline - time.monotonic()
                    entry = (
                        request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
                    )
            except Empty:
                break
            if entry == _SENTINEL_VALUE:
                return batch, None, True
            if claims := self._claims(lit_api):
                claims.add(entry[0], entry[1])
            item = self._admit(lit_api, transport, entry)
            if item is None:
                continue
            if batch and sequences + item.prepared.sequences > lit_api.max_batch_size:
                return batch, item, False
            batch.append(item)
            sequences += item.prepared.sequences
        self._sample_depth(lit_api, request_queue)
        return batch, None, False

    @staticmethod
    def _first_request(lit_api, request_queue: Queue):
        """Block for a batch's first request; look at the store while idle and just before decoding it."""
        while True:
            lit_api.refresh()
            with contextlib.suppress(Empty):
                entry = request_queue.get(timeout=IDLE_POLL_SECONDS)
                if entry != _SENTINEL_VALUE:
                    lit_api.refresh()
                return entry

    @staticmethod
    def _sample_depth(lit_api, request_queue: Queue) -> None:
        """What is still waiting once a batch is taken: the queue-saturation signal operators alert on."""
        with contextlib.suppress(NotImplementedError):  # qsize() is unavailable on macOS
            metrics.QUEUE_DEPTH.labels(lit_api.endpoint).set(request_queue.qsize())

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
