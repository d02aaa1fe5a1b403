"""Replaces a dead inference worker and answers the requests it held (runs in the main process).

LitServe's own monitor either shuts the whole server down when a worker dies, or (restart_workers) restarts
it but fails the in-flight requests only in the main process's response buffer, which is empty: the HTTP
servers are separate processes, so their clients would wait for request_timeout. Here the request queue
records which requests each worker holds as it hands them out (request_queue.py); when a worker dies, those
requests are answered 503 + Retry-After at once through the response transport, its stale metric files are
retired, and a fresh worker is started on the same request queue (requests still queued wait for it). A
worker that dies during setup is not restarted: the server stops and exits non-zero, for the orchestrator to
restart it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from litserve.utils import LitAPIStatus, LoopResponseType, WorkerSetupStatus
from prometheus_client import multiprocess

from bertserve import metrics
from bertserve.errors import WorkerHTTPException, error_body

logger = logging.getLogger("bertserve")

POLL_SECONDS = 0.5


class WorkerSupervisor:
    def __init__(self, server) -> None:
        self.server = server
        self.failed = False
        # LitServe starts workers API by API, each API's workers in order: the same order here.
        self.slots = [
            (api, worker_id)
            for api in server.litapi_connector
            for worker_id in range(len(server._inference_workers_config_for_api(api.api_path)))
        ]

    def start(self) -> None:
        self.server._monitor_workers = False  # ours replaces LitServe's monitor thread
        threading.Thread(target=self._watch, daemon=True, name="bertserve-supervisor").start()

    def _watch(self) -> None:
        while True:
            try:
                if self.server._shutdown_event.is_set():
                    return
            except (EOFError, OSError):
                return  # the manager is gone: the server is shutting down
            for index, process in enumerate(self.server.inference_workers):
                if not process.is_alive():
                    try:
                        self._replace(index, process)
                    except Exception:
                        logger.exception("could not replace inference worker %s; trying again", index)
            time.sleep(POLL_SECONDS)

    def _replace(self, index: int, process) -> None:
        api, worker_id = self.slots[index]
        endpoint = api.api_path.rsplit("/", 1)[-1]
        failed_setup = (
            self.server.workers_setup_status.get(f"{endpoint}_{worker_id}") == WorkerSetupStatus.ERROR
        )
        held = self._fail_held(api, process.pid, worker_id)
        multiprocess.mark_process_dead(process.pid)
        logger.error(
            "inference worker %s of %s (pid %s) died with exit code %s; %d in-flight requests answered 503",
            worker_id,
            api.api_path,
            process.pid,
            process.exitcode,
            held,
        )
        if self.server._shutdown_event.is_set():
            return
        if failed_setup:
            logger.error("worker %s of %s failed its setup: stopping the server", worker_id, api.api_path)
            self.failed = True
            self.server._shutdown_event.set()
            return
        metrics.WORKER_RESTARTS.labels(endpoint).inc()
        self.server.inference_workers[index] = self.server.launch_single_inference_worker(api, worker_id)
        logger.warning("started a new inference worker %s of %s", worker_id, api.api_path)

    def _fail_held(self, api, pid: int, worker_id: int) -> int:
        """Answer every request the dead worker held; ones it already answered are ignored by LitServe."""
        held = self.server.litapi_request_queues[api.api_path].retire(pid)
        error = WorkerHTTPException(
            503,
            error_body("worker_lost", "the inference worker handling this request died; retry it"),
            headers={"Retry-After": "1"},
        )
        for response_queue_id, uid in held:
            with contextlib.suppress(Exception):
                self.server._transport.send(
                    (uid, (error, LitAPIStatus.ERROR, LoopResponseType.REGULAR, worker_id)), response_queue_id
                )
        return len(held)
