"""The one module that touches LitServe's internals (written against litserve 0.2.19).

bertserve keeps LitServe as the server: it spawns the inference processes (one LitAPI, InferenceProcess,
with `workers_per_device` set to the slots), forks the uvicorn HTTP processes, owns the start-up status in
its Manager and the shutdown. Requests never go through LitServe: each HTTP process streams them straight to
the inference processes (engine/client.py, engine/worker.py). What that needs of LitServe reaches into names
it does not promise to keep. They are all here, each with why it is needed and what breaks without it, so an
upgrade is one file to read, and `check_litserve()` (run by a unit test and at start-up) names whatever no
longer matches.

Each LitServe name used: why bertserve needs it / what breaks without it.

- `DefaultLoop` as `LitAPI.loop`, called `(lit_api, device, worker_id, request_queue, transport,
  workers_setup_status, callback_runner)`: each inference process runs the engine's loop instead /
  LitServe's own loop would wait on its Manager queue for requests that never come.
- the `LITSERVE_WORKER_ID` variable set before `setup()`: which slot's socket to bind before the process
  reports ready / HTTP processes could be forked before a slot listens.
- `LitServer._init_manager`, `transport_config`, `_transport`, `transport.areceive` (what LitServe's
  response reader awaits in each HTTP process): the Manager keeps the start-up status; the answer transport
  becomes one that carries nothing (LitServe's ZeroMQ one starts a broker process and leaves
  `/tmp/zmq-*.ipc` files behind) / a broker process on the side and socket files after a stop.
- `LitServer._start_server`, `verify_worker_status`: start the supervisor, and load the HTTP processes'
  tokenizers before uvicorn forks them / every HTTP process loads them after the fork; no supervision.
- `launch_inference_worker`, `launch_single_inference_worker`, `inference_workers`: spawn workers with
  SIGINT blocked; the supervisor replaces a dead one / a Ctrl-C during start-up leaves the server waiting
  forever; no restarts.
- `_inference_workers_config_for_api`, the `workers_setup_status` key `"{endpoint}_{worker_id}"`,
  `WorkerSetupStatus`: which slot died, and whether it had finished its setup / a crash loop cannot be told
  from a death in service.
- `_monitor_workers`, `_shutdown_event`: our supervisor replaces LitServe's monitor; stopping the server /
  two monitors race to restart a worker; nothing can stop the server.
- `middlewares`, `app.user_middleware`: LitServe's middlewares give way to ours / its request counter costs
  a Manager round trip per request.
- `_start_server(port, num_servers, log_level, sockets, ...)` and `_Server.run(worker_id, sockets)`: each
  forked HTTP process listens on a socket of its own (SO_REUSEPORT) / one shared socket, and one HTTP
  process takes every connection of a burst while the others idle.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import os
import socket
from collections.abc import Callable
from typing import Any

import litserve as ls
import litserve.server
from litserve.loops.base import DefaultLoop
from litserve.utils import WorkerSetupStatus

TESTED_LITSERVE = "0.2.19"

# The attributes this module relies on, by owner, checked by check_litserve().
_EXPECTED_ATTRIBUTES: dict[Any, tuple[str, ...]] = {
    ls.LitServer: (
        "_init_manager",
        "_start_server",
        "_inference_workers_config_for_api",
        "launch_inference_worker",
        "launch_single_inference_worker",
        "verify_worker_status",
        "run",
    ),
    WorkerSetupStatus: ("STARTING", "READY", "ERROR"),
    litserve.server._Server: ("run",),
}
# Set by LitServer.__init__: checked on each server instance (check_server). workers_setup_status and the
# Manager-backed fields come later, from _init_manager.
_EXPECTED_SERVER_FIELDS = (
    "_monitor_workers",
    "_shutdown_event",
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

    return run_on_own


class _NoTransport:
    """Stands in for LitServe's answer transport, which carries nothing here: picklable, closes quietly, and
    its reader in each HTTP process (LitServe's response_queue_to_buffer) waits until it is cancelled."""

    async def areceive(self, *_: Any, **__: Any) -> None:
        await asyncio.Event().wait()

    def close(self, **_: Any) -> None:
        return None


# ---- the main process ----------------------------------------------------------------------------------


class ServerInternals:
    """What the supervisor and server.py need of a LitServer beyond its public API."""

    def __init__(self, server: ls.LitServer) -> None:
        check_server(server)
        self.server = server

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
        self.server.inference_workers[index] = self.server.launch_single_inference_worker(api, worker_id)

    def _setup_status(self, api, worker_id: int):
        endpoint = api.api_path.rsplit("/", 1)[-1]
        return self.server.workers_setup_status.get(f"{endpoint}_{worker_id}")

    def setup_failed(self, api, worker_id: int) -> bool:
        return self._setup_status(api, worker_id) == WorkerSetupStatus.ERROR

    def setup_done(self, api, worker_id: int) -> bool:
        return self._setup_status(api, worker_id) == WorkerSetupStatus.READY

    def disable_litserve_monitor(self) -> None:
        self.server._monitor_workers = False

    def stopping(self) -> bool:
        event = self.server._shutdown_event
        return event is not None and event.is_set()

    def stop(self) -> None:
        if self.server._shutdown_event is not None:
            self.server._shutdown_event.set()

    def replace_middlewares(self, add: Callable[[Any], None]) -> None:
        """Drop LitServe's middlewares (its request counter costs a Manager round trip per request); `add`
        installs ours (http_layers) on the app."""
        self.server.middlewares = []
        self.server.app.user_middleware.clear()
        add(self.server.app)

    def drop_answer_transport(self) -> None:
        """No ZeroMQ broker: LitServe's answer transport becomes an unused Manager queue, then nothing."""
        server = self.server
        init_manager = server._init_manager
        server.transport_config.transport_type = "mp"

        def init_manager_without_transport(num_api_servers: int):
            manager = init_manager(1)  # one unused queue, whatever the number of HTTP processes
            server._transport = _NoTransport()
            return manager

        server._init_manager = init_manager_without_transport

    def install_lifecycle(
        self,
        *,
        before_manager: Callable[[], None],
        while_workers_load: Callable[[], None],
        before_http: Callable[[], bool],
        wrap_launch: Callable[[Callable], Callable],
    ) -> None:
        """Hook the engine into LitServer.run:
        - `before_manager()` runs just before the Manager starts (after LitServe set up its own logging);
        - `while_workers_load()` runs once the workers are launched, before LitServe waits for them;
        - `before_http()` runs before uvicorn forks the HTTP processes; False: stop instead of serving;
        - `wrap_launch` wraps both worker launchers (the first start and the supervisor's restarts).
        """
        server = self.server
        init_manager, start_server = server._init_manager, server._start_server
        verify = server.verify_worker_status

        def init_manager_after(*args, **kwargs):
            before_manager()
            return init_manager(*args, **kwargs)

        def verify_while_loading() -> None:
            while_workers_load()
            verify()

        def start_http(port, num_servers, log_level, sockets, *args, **kwargs):
            if not before_http():
                self.stop()  # the drain may have run before LitServe created the event
                return {}
            # every HTTP process listens on a socket of its own (SO_REUSEPORT: the kernel spreads the
            # connections); this one only holds the port until they do, and never listens
            placeholders = [_reuse_port_twin(sock) for sock in sockets]
            try:
                return start_server(port, num_servers, log_level, placeholders, *args, **kwargs)
            finally:
                for sock in placeholders:
                    sock.close()

        litserve.server._Server.run = _run_on_a_socket_of_its_own(litserve.server._Server.run)
        server._init_manager = init_manager_after
        server.verify_worker_status = verify_while_loading
        server._start_server = start_http
        server.launch_inference_worker = wrap_launch(server.launch_inference_worker)
        server.launch_single_inference_worker = wrap_launch(server.launch_single_inference_worker)
