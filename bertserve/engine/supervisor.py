"""Replaces a dead inference worker and answers the requests it held (runs in the main process).

LitServe's own monitor either shuts the whole server down when a worker dies, or (restart_workers) restarts
it but fails the in-flight requests only in the main process's response buffer, which is empty: the HTTP
servers are separate processes, so their clients would wait for request_timeout. Here the request queue
records which requests each worker holds as it hands them out (request_queue.py); when a worker dies, those
requests are answered 503 + Retry-After at once through the response transport, its stale metric files are
retired, and a fresh worker is started on the same request queue (requests still queued wait for it).

A worker that dies before finishing its setup (its model failed to load, or something killed it while it
loaded, such as the OOM killer) is crash-looping: it is restarted after a growing delay (RESTART_DELAYS),
and once it has died in MAX_SETUP_FAILURES setups in a row the supervisor gives up: /health answers 503,
the log says why, and the server stops with exit code 1 for the orchestrator to act. A setup that finished
resets the count. A setup that raised (every version damaged, say) would fail alike: that gives up at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException
from prometheus_client import multiprocess

from bertserve import metrics
from bertserve.engine.litserve_seam import ServerInternals, answer
from bertserve.errors import error_body

logger = logging.getLogger("bertserve")

POLL_SECONDS = 0.5
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds before the n-th restart after failed setups in a row
MAX_SETUP_FAILURES = 4


@dataclass
class Slot:
    api: object
    worker_id: int
    setup_failures: int = 0  # failed (or killed) setups in a row
    restart_at: float | None = None  # when a dead worker is due to be started again


class WorkerSupervisor:
    def __init__(self, server, verdict_file=None) -> None:
        self.internals = ServerInternals(server)
        self.failed: str | None = None  # why the server gave up, once it has
        self.verdict_file = verdict_file  # written when giving up: /health in every HTTP process reads it
        self.slots = [Slot(api, worker_id) for api, worker_id in self.internals.worker_slots()]

    def start(self) -> None:
        self.internals.disable_litserve_monitor()  # ours replaces LitServe's monitor thread
        threading.Thread(target=self._watch, daemon=True, name="bertserve-supervisor").start()

    def _watch(self) -> None:
        while True:
            try:
                if self.internals.stopping():
                    return
            except (EOFError, OSError):
                return  # the manager is gone: the server is shutting down
            for index, process in enumerate(self.internals.workers()):
                slot = self.slots[index]
                try:
                    if slot.restart_at is not None:
                        self._restart_when_due(index, slot)
                    elif not process.is_alive():
                        self._bury(index, slot, process)
                    elif slot.setup_failures and self.internals.setup_done(slot.api, slot.worker_id):
                        slot.setup_failures = 0  # the replacement loaded: a later death starts afresh
                except Exception:
                    logger.exception("could not replace inference worker %s; trying again", index)
            time.sleep(POLL_SECONDS)

    def _bury(self, index: int, slot: Slot, process) -> None:
        api, worker_id = slot.api, slot.worker_id
        endpoint = api.api_path.rsplit("/", 1)[-1]
        in_setup = not self.internals.setup_done(api, worker_id)
        held = self._fail_held(api, process.pid, worker_id)
        multiprocess.mark_process_dead(process.pid)
        logger.error(
            "inference worker %s of %s (pid %s) died %s with exit code %s; %d in-flight requests "
            "answered 503",
            worker_id,
            api.api_path,
            process.pid,
            "during its setup" if in_setup else "while serving",
            process.exitcode,
            held,
        )
        if self.internals.stopping():
            return
        if self.internals.setup_failed(api, worker_id):  # its setup raised: a restart would fail alike
            logger.error("worker %s of %s failed its setup: stopping the server", worker_id, api.api_path)
            self._give_up(f"the {endpoint} inference worker failed its setup (see the log above for why)")
            return
        slot.setup_failures = slot.setup_failures + 1 if in_setup else 0
        if slot.setup_failures >= MAX_SETUP_FAILURES:
            self._give_up(
                f"the {endpoint} inference worker died during its setup {slot.setup_failures} times in a row "
                "(killed while loading, e.g. out of memory: see the log above)"
            )
            return
        delay = 0.0
        if slot.setup_failures:
            delay = RESTART_DELAYS[min(slot.setup_failures, len(RESTART_DELAYS)) - 1]
            logger.warning(
                "worker %s of %s died in %d setup(s) in a row: restarting it in %g s",
                worker_id,
                api.api_path,
                slot.setup_failures,
                delay,
            )
        slot.restart_at = time.monotonic() + delay
        self._restart_when_due(index, slot)

    def _restart_when_due(self, index: int, slot: Slot) -> None:
        if slot.restart_at is None or time.monotonic() < slot.restart_at:
            return
        slot.restart_at = None
        metrics.WORKER_RESTARTS.labels(slot.api.api_path.rsplit("/", 1)[-1]).inc()
        self.internals.relaunch(index, slot.api, slot.worker_id)
        logger.warning("started a new inference worker %s of %s", slot.worker_id, slot.api.api_path)

    def _give_up(self, why: str) -> None:
        self.failed = why
        logger.error("giving up: %s; stopping the server", why)
        if self.verdict_file is not None:  # /health answers 503 from now on, in every HTTP process
            with contextlib.suppress(OSError):
                self.verdict_file.write_text(why)
        self.internals.stop()

    def _fail_held(self, api, pid: int, worker_id: int) -> int:
        """Answer every request the dead worker held; ones it already answered are ignored by LitServe."""
        held = self.internals.request_queue(api.api_path).retire(pid)
        error = HTTPException(
            503,
            error_body("worker_lost", "the inference worker handling this request died; retry it"),
            headers={"Retry-After": "1"},
        )
        by_process: dict[int, list[tuple]] = {}
        for response_queue_id, uid in held:
            by_process.setdefault(response_queue_id, []).append(answer(uid, error, False, worker_id))
        for response_queue_id, answers in by_process.items():
            with contextlib.suppress(Exception):
                self.internals.send_answers(answers, response_queue_id)
        return len(held)
