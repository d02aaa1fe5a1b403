"""The one module that touches LitServe's internals (written against litserve 0.2.19).

bertserve keeps LitServe as the server: it spawns the inference workers, forks the uvicorn HTTP processes,
owns the Manager process and the shutdown. The engine replaces the parts of its request path that a BERT
service needs done differently, and each replacement reaches into a name LitServe does not promise to keep.
They are all here, each with why it is needed and what breaks without it, so an upgrade is one file to
read, and `check_litserve()` (run by a unit test and at start-up) names whatever no longer matches.

Each LitServe name used: why bertserve needs it / what breaks without it.

- `DefaultLoop` as `LitAPI.loop`: the workers run SequenceBatchingLoop (a sequence budget, carried
  requests, swaps between batches) / LitServe would batch requests, not sequences.
- `loops.base._SENTINEL_VALUE`: the stop marker LitServe puts on each request queue at shutdown / a worker
  never stops and the shutdown hangs.
- the wire tuple `(uid, (payload, status, response_type, worker_id))`, `LitAPIStatus`, `LoopResponseType`:
  what LitServe's response reader unpacks in the HTTP process, an HTTPException as the payload of an error
  (its handler re-raises it) / no answer is delivered, worker errors become 500s.
- `RegularRequestHandler._submit_request`: queue a request already validated and tokenized, many per Manager
  round trip (submitter.py) / one round trip per request, and tokenizing in the worker.
- `LitServer._init_manager`, `litapi_request_queues`, `_transport`, `transport_config`: our request queue
  (bulk take, who holds what) and our answer transport (no broker, no high-water mark) / answers can be
  dropped, and a dead worker's requests wait for their timeout.
- `LitServer._start_server`, `verify_worker_status`: start the supervisor, and load the HTTP processes'
  tokenizers before uvicorn forks them / every HTTP process loads them after the fork; no supervision.
- `launch_inference_worker`, `launch_single_inference_worker`, `inference_workers`: spawn workers with
  SIGINT blocked; the supervisor replaces a dead one / a Ctrl-C during start-up leaves the server waiting
  forever; no restarts.
- `_inference_workers_config_for_api`, the `workers_setup_status` key `"{endpoint}_{worker_id}"`,
  `WorkerSetupStatus`: which worker slot died, and whether it had finished its setup / a crash loop cannot
  be told from a death in service.
- `_monitor_workers`, `_shutdown_event`: our supervisor replaces LitServe's monitor; stopping the server /
  two monitors race to restart a worker; nothing can stop the server.
- `middlewares`, `app.user_middleware`: LitServe's middlewares give way to ServiceMiddleware and GZip / its
  request counter costs a Manager round trip per request.
- `response_buffer`: replaced by one that forgets answers awaited by requests already answered 504
  (buffer.py) / one entry leaks per timed-out request.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import litserve as ls
import orjson
from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, DefaultLoop
from litserve.server import RegularRequestHandler
from litserve.utils import LitAPIStatus, LoopResponseType, WorkerSetupStatus
from starlette.responses import Response

TESTED_LITSERVE = "0.2.19"

STOP = _SENTINEL_VALUE  # what LitServe puts on a request queue to stop its workers

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
    RegularRequestHandler: ("_submit_request", "handle_request"),
    DefaultLoop: ("put_response",),
    WorkerSetupStatus: ("STARTING", "READY", "ERROR"),
    LitAPIStatus: ("OK", "ERROR"),
    LoopResponseType: ("REGULAR",),
}
# Set by LitServer.__init__: checked on each server instance (check_server). workers_setup_status and the
# Manager-backed fields come later, from _init_manager.
_EXPECTED_SERVER_FIELDS = (
    "_monitor_workers",
    "_shutdown_event",
    "transport_config",
    "litapi_request_queues",
    "litapi_connector",
    "middlewares",
    "response_buffer",
)


class LitServeMismatch(RuntimeError):
    """The installed LitServe is not the one this seam was written for."""


def check_litserve() -> None:
    """Raise LitServeMismatch naming every internal this module needs that the installed LitServe lacks."""
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, names in _EXPECTED_ATTRIBUTES.items()
        for name in names
        if not hasattr(owner, name)
    ]
    import inspect

    from litserve.loops import base

    if inspect.signature(DefaultLoop.put_response).parameters.keys() != {
        "self",
        "transport",
        "response_queue_id",
        "uid",
        "response_data",
        "status",
        "response_type",
    }:
        missing.append("DefaultLoop.put_response(transport, response_queue_id, uid, response_data, ...)")
    if "(uid, (response_data, status, response_type, self.worker_id))" not in inspect.getsource(base):
        missing.append("the answer wire tuple (uid, (response_data, status, response_type, worker_id))")
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


# ---- answers -------------------------------------------------------------------------------------------


def answer(uid: str, payload: Any, ok: bool, worker_id: int) -> tuple:
    """The message LitServe's response reader expects for one request."""
    status = LitAPIStatus.OK if ok else LitAPIStatus.ERROR
    return uid, (payload, status, LoopResponseType.REGULAR, worker_id)


def answer_to_bytes(item: tuple) -> tuple[bytes, bytes]:
    """One answer as a JSON header and a raw body, nothing pickled: an HTTP process never unpickles what
    reaches its socket. The payload is a starlette Response (an answer) or an HTTPException (an error)."""
    uid, (payload, status, _, worker_id) = item
    header: dict[str, Any] = {"uid": uid, "ok": status == LitAPIStatus.OK, "worker": worker_id}
    if isinstance(payload, HTTPException):
        header.update(status=payload.status_code, detail=payload.detail, headers=payload.headers)
        return orjson.dumps(header), b""
    header.update(
        status=payload.status_code,
        media_type=payload.media_type,
        headers=[[k.decode("latin-1"), v.decode("latin-1")] for k, v in payload.raw_headers],
    )
    return orjson.dumps(header), bytes(payload.body)


def answer_from_bytes(header_bytes: bytes, body: bytes) -> tuple:
    """The answer answer_to_bytes encoded, rebuilt as the objects LitServe's reader and handler expect."""
    header = orjson.loads(header_bytes)
    if not header["ok"]:
        error = HTTPException(header["status"], header["detail"], header["headers"])
        return answer(header["uid"], error, False, header["worker"])
    response = Response(body, header["status"], media_type=header["media_type"])
    response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in header["headers"]]
    return answer(header["uid"], response, True, header["worker"])


class WorkerLoop(DefaultLoop):
    """Base of the engine's batching loop: LitServe calls `__call__` in each inference worker."""


# ---- the HTTP side -------------------------------------------------------------------------------------


class SubmitHook(RegularRequestHandler):
    """LitServe's request handler (register for the answer, await it, raise its error) with our `submit`
    in place of its one-`put`-per-request `_submit_request`."""

    async def _submit_request(self, payload: Any) -> tuple[str, int]:
        return self.submit(payload)

    def submit(self, payload: Any) -> tuple[str, int]:
        raise NotImplementedError

    def request_queue(self):
        return self.server.litapi_request_queues[self.lit_api.api_path]


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

    def send_answers(self, answers: list[tuple], response_queue_id: int) -> None:
        self.server._transport.send_many(answers, response_queue_id)

    def request_queue(self, api_path: str):
        return self.server.litapi_request_queues[api_path]

    def replace_response_buffer(self, buffer: dict) -> None:
        """The HTTP processes' map of awaited answers (LitServe's handler and reader use it)."""
        self.server.response_buffer = buffer

    def replace_middlewares(self, add: Callable[[Any], None]) -> None:
        """Drop LitServe's middlewares (its request counter costs a Manager round trip per request); `add`
        installs ours on the app."""
        self.server.middlewares = []
        self.server.app.user_middleware.clear()
        add(self.server.app)

    def install_queues(self, make_queue: Callable[[Any], Any], make_transport: Callable[[], Any]) -> None:
        """Once LitServe has created its Manager: `make_queue(manager)` replaces each request queue and
        `make_transport()` the answer transport, before any worker starts."""
        server = self.server
        init_manager = server._init_manager
        server.transport_config.transport_type = "zmq"  # not "mp": that would create a Manager queue each

        def init_manager_with_engine(num_api_servers: int):
            manager = init_manager(num_api_servers)
            server._transport = make_transport()
            for api_path in server.litapi_request_queues:
                server.litapi_request_queues[api_path] = make_queue(manager)
            return manager

        server._init_manager = init_manager_with_engine

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

        def start_http(*args, **kwargs):
            if not before_http():
                self.stop()  # the drain may have run before LitServe created the event
                return {}
            return start_server(*args, **kwargs)

        server._init_manager = init_manager_after
        server.verify_worker_status = verify_while_loading
        server._start_server = start_http
        server.launch_inference_worker = wrap_launch(server.launch_inference_worker)
        server.launch_single_inference_worker = wrap_launch(server.launch_single_inference_worker)
