"""The one module that touches LitServe's internals (written against litserve 0.2.19).

bertserve keeps LitServe as the server: it spawns the inference processes (one LitAPI, InferenceProcess,
with `workers_per_device` set to the slots), forks the uvicorn HTTP processes, owns the start-up status
and the shutdown. bertserve does not call `LitServer.run`: server.py's run_server takes its
steps one by one (store, models, inference processes, HTTP processes), each a method of ServerInternals.
Requests never go through LitServe: each HTTP process streams them straight to the inference processes
(engine/client.py, engine/worker.py). What that needs of LitServe reaches into names it does not promise to
keep. They are all here, each with why it is needed and what breaks without it, so an upgrade is one file to
read, and `check_litserve()` (run by a unit test and at start-up) names whatever no longer matches.

Each LitServe name used: why bertserve needs it / what breaks without it.

- `DefaultLoop` as `LitAPI.loop`, called `(lit_api, device, worker_id, request_queue, transport,
  workers_setup_status, callback_runner)`: each inference process runs the engine's loop instead /
  LitServe's own loop would wait on its Manager queue for requests that never come.
- the `LITSERVE_WORKER_ID` variable set before `setup()`: which slot's socket to bind before the process
  reports ready / HTTP processes could be forked before a slot listens.
- `workers_setup_status` (what `inference_worker`, `launch_*_inference_worker` and LitServe's /health read
  and write), `_shutdown_event`, `litapi_request_queues`, `_transport`, `transport.areceive` (what
  LitServe's response reader awaits in each HTTP process): set up as `_init_manager` would, without its
  Manager process: the status in shared memory, no request queue, an answer transport that carries nothing
  / a Manager process of ~90 MB, a ZeroMQ broker process on the side and socket files after a stop.
- `launch_inference_worker`, `launch_single_inference_worker`, `inference_workers`: spawn the inference
  processes (with SIGINT blocked); the supervisor replaces a dead one / no engine, no restarts.
- `_inference_workers_config_for_api`, `workers_setup_status` and its key `"{endpoint}_{worker_id}"`,
  `WorkerSetupStatus`: when a slot is ready, which slot died, and whether it had finished its setup / no
  readiness, and a crash loop cannot be told from a death in service.
- `_start_server(port, num_servers, log_level, sockets, worker_type, **uvicorn)` and `_Server.run(worker_id,
  sockets)`: fork the HTTP processes with the app LitServe assembled, each on a listening socket of its own
  (SO_REUSEPORT) / no HTTP processes; one shared socket, and one HTTP process takes every connection of a
  burst while the others idle.
- `_perform_graceful_shutdown(manager, http_processes)`: the stop in LitServe's order, with no Manager to
  stop / processes left running.
- `middlewares`, `app.user_middleware`: LitServe's middlewares give way to ours / its request counter costs
  a Manager round trip per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing import resource_tracker
from typing import Any

import litserve as ls
import litserve.server
from litserve.loops.base import DefaultLoop
from litserve.utils import WorkerSetupStatus

TESTED_LITSERVE = "0.2.19"

# The attributes this module relies on, by owner, checked by check_litserve().
_EXPECTED_ATTRIBUTES: dict[Any, tuple[str, ...]] = {
    ls.LitServer: (
        "_start_server",
        "_perform_graceful_shutdown",
        "_inference_workers_config_for_api",
        "launch_inference_worker",
        "launch_single_inference_worker",
    ),
    WorkerSetupStatus: ("STARTING", "READY", "ERROR"),
    litserve.server._Server: ("run",),
}
# Set by LitServer.__init__: checked on each server instance (check_server); prepare_start_up() replaces them.
_EXPECTED_SERVER_FIELDS = (
    "_shutdown_event",
    "litapi_request_queues",
    "transport_config",
    "litapi_connector",
    "middlewares",
)
_LOOP_CALL = ("lit_api", "device", "worker_id", "request_queue", "transport", "workers_setup_status")
WORKER_ID_VARIABLE = "LITSERVE_WORKER_ID"


class LitServeMismatch(RuntimeError):
    """The installed LitServe is not the one this seam was written for."""


def check_litserve() -> None:
    """Raise LitServeMismatch naming every internal this module needs that the installed LitServe lacks."""
    from litserve.loops import loops

    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, names in _EXPECTED_ATTRIBUTES.items()
        for name in names
        if not hasattr(owner, name)
    ]
    source = inspect.getsource(loops.inference_worker)
    if f'os.environ["{WORKER_ID_VARIABLE}"]' not in source or "loop(" not in source:
        missing.append(f"inference_worker sets {WORKER_ID_VARIABLE} and calls lit_api.loop(...)")
    if tuple(inspect.signature(loops.inference_worker).parameters)[:6] != _LOOP_CALL:
        missing.append(f"inference_worker({', '.join(_LOOP_CALL)}, ...)")
    if missing:
        installed = importlib.metadata.version("litserve")
        raise LitServeMismatch(
            f"litserve {installed} lacks what bertserve/engine/litserve_seam.py (written for "
            f"{TESTED_LITSERVE}) uses: {', '.join(missing)}"
        )


def check_server(server: ls.LitServer) -> None:
    missing = [name for name in _EXPECTED_SERVER_FIELDS if not hasattr(server, name)]
    if missing:
        raise LitServeMismatch(f"LitServer instances no longer have {', '.join(missing)} (litserve_seam.py)")


# ---- the inference process ---------------------------------------------------------------------


class EngineLoop(DefaultLoop):
    """What LitServe runs in each inference process after `setup()`: the LitAPI's own `serve()`."""

    def __call__(self, lit_api, device, worker_id, request_queue, transport, *args: Any) -> None:
        lit_api.serve()


def worker_id() -> int:
    """This inference process's slot, inside `LitAPI.setup()`."""
    return int(os.environ[WORKER_ID_VARIABLE])


def _reuse_port_twin(sock: socket.socket) -> socket.socket:
    """A socket bound where `sock` is, with SO_REUSEPORT; `sock` is closed first (it lacks the option)."""
    address = sock.getsockname()
    twin = socket.socket(sock.family, sock.type, sock.proto)
    sock.close()
    twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    twin.bind(address)
    twin.set_inheritable(True)
    return twin


def _run_on_a_socket_of_its_own(run: Callable) -> Callable:
    """LitServe's `_Server.run(worker_id, sockets)` in a forked HTTP process, on its own listening socket
    instead of the one all share. With one shared socket, asyncio accepts up to its backlog of waiting
    connections per wake-up, so one HTTP process took all 64 of a load test's connections and the other
    idled (measured: 0.96 and 0.01 cores)."""

    def run_on_own(self, worker_id: int, sockets: list[socket.socket] | None = None) -> None:
        if sockets:
            sockets = [_reuse_port_twin(sock) for sock in sockets]
        return run(self, worker_id, sockets)

    run_on_own._own_socket = True  # type: ignore[attr-defined]
    return run_on_own


class _NoTransport:
    """Stands in for LitServe's answer transport, which carries nothing here: picklable, closes quietly, and
    its reader in each HTTP process (LitServe's response_queue_to_buffer) waits until it is cancelled."""

    async def areceive(self, *_: Any, **__: Any) -> None:
        await asyncio.Event().wait()

    def close(self, **_: Any) -> None:
        return None


class _SetupStatus:
    """LitServe's `workers_setup_status` (a Manager dict) in shared memory: one byte per inference process,
    written by the main process (starting) and by each inference process (ready or failed), read by the
    supervisor and by LitServe's /health in every forked HTTP process. Passed to a spawned process as an
    argument of its start, as multiprocessing allows for shared memory."""

    _STATES = (None, WorkerSetupStatus.STARTING, WorkerSetupStatus.READY, WorkerSetupStatus.ERROR)

    def __init__(self, keys: list[str]) -> None:
        self._index = {key: index for index, key in enumerate(keys)}
        self._codes = multiprocessing.get_context("spawn").RawArray("b", len(keys))

    def __setitem__(self, key: str, state: str) -> None:
        self._codes[self._index[key]] = self._STATES.index(state)

    def get(self, key: str, default: Any = None) -> Any:
        return self._STATES[self._codes[self._index[key]]] or default

    def values(self) -> list[str]:
        return [self._STATES[code] for code in self._codes if code]

    def __bool__(self) -> bool:  # LitServe: "if workers_setup_status:" before it writes READY
        return any(self._codes)


class _NoManager:
    """What LitServe's shutdown calls `shutdown()` on: there is no Manager process to stop."""

    def shutdown(self) -> None:
        return None


# ---- the main process ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _deaf_to_ctrl_c():
    """Inference processes are spawned (fork + exec) with SIGINT blocked, a mask that survives both: a Ctrl-C
    during their imports would otherwise kill them before they report ready. The main process stops them;
    in the launching thread the signal only waits for the launch to finish."""
    # the first spawn starts multiprocessing's resource tracker, which unblocks SIGINT when launched
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ServerInternals:
    """The steps of start-up and shutdown (what LitServer.run does, one method each, so that server.py's
    run_server reads top to bottom), and what the supervisor needs of a LitServer beyond its public API."""

    def __init__(self, server: ls.LitServer) -> None:
        check_server(server)
        self.server = server

    # ---- start-up, in order ----

    def prepare_start_up(self) -> None:
        """What LitServe's `_init_manager` would set up, without its Manager process (~90 MB PSS and a
        proxy round trip per /health): the start-up status in shared memory, a stop event of the main
        process, no request queue, an answer transport that carries nothing (LitServe's ZeroMQ one starts a
        broker process and leaves /tmp/zmq-*.ipc files behind)."""
        server = self.server
        keys = [f"{api.api_path.rsplit('/', 1)[-1]}_{worker_id}" for api, worker_id in self.worker_slots()]
        server.workers_setup_status = _SetupStatus(keys)
        server._shutdown_event = threading.Event()
        server.litapi_request_queues = {api.api_path: None for api in server.litapi_connector}
        server._transport = _NoTransport()
        server.inference_workers = []

    def launch_inference_processes(self) -> None:
        with _deaf_to_ctrl_c():
            for api in self.server.litapi_connector:
                self.server.inference_workers.extend(self.server.launch_inference_worker(api))

    def any_ready(self) -> bool:
        return any(v == WorkerSetupStatus.READY for v in self.server.workers_setup_status.values())

    def start_http_processes(self, port: socket.socket, count: int, log_level: str, **uvicorn: Any) -> dict:
        """Fork `count` uvicorn processes, each listening on a twin of `port` (bound with SO_REUSEPORT, not
        listening) of its own."""
        if not getattr(litserve.server._Server.run, "_own_socket", False):
            litserve.server._Server.run = _run_on_a_socket_of_its_own(litserve.server._Server.run)
        number = port.getsockname()[1]
        return self.server._start_server(number, count, log_level, [port], "process", **uvicorn)

    def wait_until_stopped(self) -> None:
        self.server._shutdown_event.wait()

    def shut_down(self, http_processes: dict) -> None:
        """Stop the HTTP processes, then the inference processes (LitServe's order and grace periods)."""
        self.server._perform_graceful_shutdown(_NoManager(), http_processes)

    # ---- for the supervisor ----

    def worker_slots(self) -> list[tuple[Any, int]]:
        """(api, worker id) for each inference worker, in LitServe's launch order (API by API)."""
        return [
            (api, worker_id)
            for api in self.server.litapi_connector
            for worker_id in range(len(self.server._inference_workers_config_for_api(api.api_path)))
        ]

    def workers(self) -> list:
        return self.server.inference_workers

    def relaunch(self, index: int, api, worker_id: int) -> None:
        with _deaf_to_ctrl_c():
            self.server.inference_workers[index] = self.server.launch_single_inference_worker(api, worker_id)

    def _setup_status(self, api, worker_id: int):
        endpoint = api.api_path.rsplit("/", 1)[-1]
        return self.server.workers_setup_status.get(f"{endpoint}_{worker_id}")

    def setup_failed(self, api, worker_id: int) -> bool:
        return self._setup_status(api, worker_id) == WorkerSetupStatus.ERROR

    def setup_done(self, api, worker_id: int) -> bool:
        return self._setup_status(api, worker_id) == WorkerSetupStatus.READY

    def stopping(self) -> bool:
        event = self.server._shutdown_event  # None until prepare_start_up()
        return event is not None and event.is_set()

    def stop(self) -> None:
        if self.server._shutdown_event is not None:
            self.server._shutdown_event.set()

    # ---- assembling the app ----

    def replace_middlewares(self, add: Callable[[Any], None]) -> None:
        """Drop LitServe's middlewares (its request counter costs a Manager round trip per request); `add`
        installs ours (http_layers) on the app."""
        self.server.middlewares = []
        self.server.app.user_middleware.clear()
        add(self.server.app)
