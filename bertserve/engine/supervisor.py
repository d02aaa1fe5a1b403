"""Replaces a dead inference process (runs in the main process).

LitServe's own monitor either shuts the whole server down when a worker dies, or (restart_workers) restarts
it. Here a dead inference process's requests need nothing from the supervisor: each HTTP process holds the
record of what it sent on its stream, and answers those 503 + Retry-After the moment the stream closes
(client.py). The supervisor retires the dead process's metric files and starts a fresh one on the same
slot, which binds the slot's socket again; HTTP processes connect to it on their next request.

A worker that dies before finishing its setup (its model failed to load, or something killed it while it
loaded, such as the OOM killer) is crash-looping: it is restarted after a growing delay (RESTART_DELAYS),
and once it has died in MAX_SETUP_FAILURES setups in a row the supervisor gives up: /health answers 503,
the log says why, and the server stops with exit code 1 for the orchestrator to act. A setup that finished
resets the count. A setup that raised (every version damaged, say) would fail alike: that gives up at once.

A process that dies while serving is replaced at once. One that keeps dying soon after it starts (a request
that kills it every time it is retried, an OOM that recurs) is crash-looping too: each death within
STABLE_SECONDS of its start counts, the second and later are restarted after the same growing delays, and
at MAX_QUICK_DEATHS in a row the supervisor gives up as above. A process that served STABLE_SECONDS resets
the count.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from bertserve import metrics
from bertserve.engine.litserve_seam import ServerInternals

logger = logging.getLogger("bertserve")

POLL_SECONDS = 0.5
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds before the n-th restart after failed setups in a row
MAX_SETUP_FAILURES = 4
STABLE_SECONDS = 60.0  # a process that lived this long after its start did not die of its start
MAX_QUICK_DEATHS = 5  # deaths in service in a row, each within STABLE_SECONDS of its start


@dataclass
class Slot:
    api: object
    worker_id: int
    setup_failures: int = 0  # failed (or killed) setups in a row
    quick_deaths: int = 0  # deaths in service in a row, each soon after its start
    started: float = field(default_factory=time.monotonic)  # when its process was last launched
    restart_at: float | None = None  # when a dead worker is due to be started again


class WorkerSupervisor:
    def __init__(self, server, verdict_file=None) -> None:
        self.internals = ServerInternals(server)
        self.failed: str | None = None  # why the server gave up, once it has
        self.verdict_file = verdict_file  # written when giving up: /health in every HTTP process reads it
        self.slots = [Slot(api, worker_id) for api, worker_id in self.internals.worker_slots()]
        for slot in self.slots:  # each slot's series at 0 from the start: increase() sees its first restart
            metrics.WORKER_RESTARTS.labels(str(slot.worker_id))

    def start(self) -> None:
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
        in_setup = not self.internals.setup_done(api, worker_id)
        multiprocess.mark_process_dead(process.pid)
        logger.error(
            "inference worker %s (pid %s) died %s with exit code %s; the HTTP processes answered its "
            "in-flight requests 503",
            worker_id,
            process.pid,
            "during its setup" if in_setup else "while serving",
            process.exitcode,
        )
        if self.internals.stopping():
            return
        if self.internals.setup_failed(api, worker_id):  # its setup raised: a restart would fail alike
            logger.error("inference worker %s failed its setup: stopping the server", worker_id)
            self._give_up(f"inference worker {worker_id} failed its setup (see the log above for why)")
            return
        slot.setup_failures = slot.setup_failures + 1 if in_setup else 0
        if slot.setup_failures >= MAX_SETUP_FAILURES:
            self._give_up(
                f"inference worker {worker_id} died during its setup {slot.setup_failures} times in a row "
                "(killed while loading, e.g. out of memory: see the log above)"
            )
            return
        delay = 0.0
        if slot.setup_failures:
            delay = RESTART_DELAYS[min(slot.setup_failures, len(RESTART_DELAYS)) - 1]
            logger.warning(
                "inference worker %s died in %d setup(s) in a row: restarting it in %g s",
                worker_id,
                slot.setup_failures,
                delay,
            )
        elif not in_setup:
            quick = time.monotonic() - slot.started < STABLE_SECONDS
            slot.quick_deaths = slot.quick_deaths + 1 if quick else 1
            if slot.quick_deaths >= MAX_QUICK_DEATHS:
                self._give_up(
                    f"inference worker {worker_id} died {slot.quick_deaths} times in a row, each within "
                    f"{STABLE_SECONDS:g} s of its start (something kills it as it serves: see the log above)"
                )
                return
            if slot.quick_deaths > 1:
                delay = RESTART_DELAYS[min(slot.quick_deaths - 1, len(RESTART_DELAYS)) - 1]
                logger.warning(
                    "inference worker %s died %d times in a row soon after its start: restarting it in %g s",
                    worker_id,
                    slot.quick_deaths,
                    delay,
                )
        slot.restart_at = time.monotonic() + delay
        self._restart_when_due(index, slot)

    def _restart_when_due(self, index: int, slot: Slot) -> None:
        if slot.restart_at is None or time.monotonic() < slot.restart_at:
            return
        slot.restart_at = None
        metrics.WORKER_RESTARTS.labels(str(slot.worker_id)).inc()
        slot.started = time.monotonic()
        self.internals.relaunch(index, slot.api, slot.worker_id)
        logger.warning("started a new inference worker %s", slot.worker_id)

    def _give_up(self, why: str) -> None:
        self.failed = why
        logger.error("giving up: %s; stopping the server", why)
        if self.verdict_file is not None:  # /health answers 503 from now on, in every HTTP process
            with contextlib.suppress(OSError):
                self.verdict_file.write_text(why)
        self.internals.stop()
