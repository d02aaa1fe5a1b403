"""Assembles the LitServer: the task routes, /v1/models, /metrics, the error handlers, the middleware; and
runs it, top to bottom: the store, the models' tokenizers, the inference processes, the HTTP processes.

Process layout (docs/engine.md): the main process supervises; `api_servers` uvicorn processes (forked)
parse HTTP, validate and tokenize, and stream each request straight to one of the `workers` inference
processes per device (spawned), each of which hosts every served model of every task, batches per model
and streams the answers back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import litserve as ls
from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute
from starlette.responses import Response

from bertserve import http_layers, logs, metrics, protocols, routes
from bertserve.api.base import TaskAPI
from bertserve.api.classify import ClassifyAPI
from bertserve.api.embeddings import EmbeddingsAPI
from bertserve.api.encoders import HttpEncoders
from bertserve.api.explain import ExplainAPI
from bertserve.api.fill_mask import FillMaskAPI
from bertserve.auth import Authenticator
from bertserve.config import Settings
from bertserve.engine import wire
from bertserve.engine.admission import InFlight, ticket
from bertserve.engine.client import EngineClient
from bertserve.engine.litserve_seam import ServerInternals, check_litserve
from bertserve.engine.process import InferenceProcess
from bertserve.engine.supervisor import WorkerSupervisor
from bertserve.errors import ClientError, document_error_shape, install_error_handlers
from bertserve.protocols.adapter import Handler
from bertserve.runtime.device import resolve_device
from bertserve.runtime.encoding import EncoderBusy
from bertserve.runtime.selection import served_models
from bertserve.schemas import ModelInfo, ModelsResponse, ModelVersionInfo
from bertserve.store.errors import StoreError
from bertserve.store.layout import ModelStore
from bertserve.store.manifest import Manifest

logger = logging.getLogger("bertserve")

INSTRUMENTED = routes.metric_labels()  # path -> the endpoint label it is counted under


def describe_models(store: ModelStore, settings: Settings) -> ModelsResponse:
    """GET /v1/models, from the store's manifests (read fresh: aliases may have moved) and what the
    inference workers report loaded (a version refused at start-up is listed, not served)."""
    loaded = metrics.loaded_versions()
    endpoint_tasks = {
        "classify": "classification",
        "fill-mask": "fill-mask",
        "embeddings": "embedding",
        "embed": "embedding",
        "rerank": "rerank",
    }
    defaults = {endpoint: settings.default_model(task) for endpoint, task in endpoint_tasks.items()}
    models = []
    for name in store.models():
        versions, task = [], None
        for version in store.versions(name):
            try:
                manifest = store.read_manifest(name, version)
            except StoreError as exc:  # refused alone, like damaged weights: listed with why, never served
                versions.append(ModelVersionInfo(version=version, served=False, problem=str(exc)))
                continue
            versions.append(_version_info(manifest, loaded))
            task = manifest.task
        if task is None:  # no version, or none whose manifest reads: `store verify` names it
            continue
        try:
            from bertserve.store.resolve import resolve

            default_version = resolve(store, name)[1]
        except StoreError:
            default_version = None
        models.append(
            ModelInfo(
                name=name,
                task=task,
                versions=versions,
                aliases=store.aliases(name),
                default_version=default_version,
                default_for=[ep for ep, ref in defaults.items() if ref.split("@")[0].split(":")[0] == name],
            )
        )
    return ModelsResponse(models=models)


def _version_info(m: Manifest, loaded: dict) -> ModelVersionInfo:
    return ModelVersionInfo(
        version=m.version,
        served=(m.name, m.version) in loaded,
        **loaded.get((m.name, m.version), metrics.Loaded())._asdict(),
        encoder=m.encoder,
        base_model=m.base_model,
        labels=m.labels,
        problem_type=m.problem_type,
        max_length=m.max_length,
        pooling=m.pooling,
        normalize=m.normalize,
        dimensions=m.dimensions,
        metrics=m.metrics,
        below_baseline=m.metrics.get("holdout", {}).get("below_baseline"),
        created_at=m.created_at,
    )


def _add_task_routes(app: FastAPI, apis: list[TaskAPI], client: EngineClient) -> list[HttpEncoders]:
    """Each task's routes: validate and tokenize here, in the HTTP process, then stream the request to an
    inference process and answer what comes back (LitServe's own route for the engine's LitAPI is removed).
    Returns each task's encoders, to load before the fork (not on the api: that is pickled to each
    inference process)."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/inference"]
    every_encoders = []
    for api in apis:
        encoders = HttpEncoders(api.settings, api.serves)
        every_encoders.append(encoders)
        for path, handler in api.routes().items():
            app.add_api_route(path, _task_endpoint(api, client, encoders, path, handler), methods=["POST"])
    return every_encoders


def _task_endpoint(api: TaskAPI, client: EngineClient, encoders: HttpEncoders, path: str, handler: Handler):
    # Large requests are tokenized in a thread (the tokenizer runs without the GIL), so that the event loop
    # goes on delivering answers meanwhile; small ones cost less than the hand-off and stay in the loop.
    tokenizing = ThreadPoolExecutor(1, thread_name_prefix=f"tokenize-{api.endpoint}")  # started on first use

    async def endpoint(request) -> Response:
        admitted = ticket()
        try:
            job = request.job()  # once: the route's adapter makes its request the task's job here
            submission = None
            if not api.is_large(job):
                with contextlib.suppress(EncoderBusy):  # a large one holds the tokenizer: queue behind it
                    submission = api.submission(job, encoders, path)
            if submission is None:
                loop = asyncio.get_running_loop()
                submission = await loop.run_in_executor(tokenizing, api.submission, job, encoders, path)
        except ClientError as exc:
            raise exc.to_http() from None
        try:
            answer = await client.call(
                api.endpoint, admitted, submission.header(), submission.body, submission.sequences
            )
        except wire.Unencodable:
            message = "a number in the request is out of range (integers of at most 64 bits)"
            raise ClientError(422, message).to_http() from None
        if answer.status != 200:
            raise HTTPException(answer.status, answer.detail, answer.headers)
        return Response(answer.body, media_type="application/json", headers={"X-Model-Version": answer.ref})

    endpoint.__annotations__ = {"request": handler.request, "return": handler.response}  # for /docs
    return endpoint


def _document_plain_text_routes(app: FastAPI) -> None:
    """LitServe's `/` and `/health` answer a short text with no Content-Type; /openapi.json said JSON."""
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path in ("/", "/health"):
            route.response_class = Response


def _add_routes(app: FastAPI, store: ModelStore, settings: Settings) -> None:
    @app.get("/live", response_class=Response, tags=["health"])
    def live() -> Response:
        """Liveness: 200 whenever this HTTP process answers, also while a worker is replaced or the server
        drains (/health, the readiness check, is 503 then): restarting the pod would not help."""
        return Response("ok", media_type="text/plain")

    document_error_shape(app)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"])
    def list_models() -> ModelsResponse:
        """Every model in the store: versions, aliases, which are served, labels, encoder, metrics."""
        return describe_models(store, settings)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render_latest()
        return Response(body, media_type=content_type)

    page = resources.files("bertserve.ui").joinpath("index.html").read_bytes()

    @app.get("/ui", include_in_schema=False)
    def ui() -> Response:
        """The self-contained page: classify, fill-mask and explain (no outside requests)."""
        return Response(page, media_type="text/html; charset=utf-8")


@dataclass
class AssembledServer:
    """The LitServer, and what run_server still needs: the tokenizers to load before the HTTP processes fork,
    and the 0700 folder of the inference processes' sockets (removed at exit)."""

    litserver: ls.LitServer
    encoders: list[HttpEncoders]
    socket_dir: Path
    in_flight: InFlight  # made before the fork: shared by every HTTP process


def socket_folder() -> Path:
    """A fresh folder only our user can enter (mkdtemp makes it 0700), with a short path: a unix socket's
    path holds at most 107 bytes, and a deep TMPDIR can exceed that."""
    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="bertserve-engine-", dir=base))


def build_server(settings: Settings, drain_flag: Path, socket_dir: Path) -> AssembledServer:
    """The LitServer for `settings`; the inference processes will listen in `socket_dir` (0700)."""
    check_litserve()  # the seam names what an installed LitServe no longer has, before anything starts
    settings = settings.resolved()  # a no-op when run_server already did it
    gpus = resolve_device(settings.device).gpus
    store = ModelStore(settings.store)
    served, task_of = served_models(store, settings.models)
    if not served:
        raise StoreError(
            f"no model to serve in {store.root}: run `bertserve bootstrap` or `bertserve store import`"
        )
    for problem in store.problems(store.models()):  # once, here in the main process: not served
        logger.warning("store: %s (`bertserve store verify` lists every problem)", problem)
    tasks = set(task_of.values())
    hosted: list[TaskAPI] = [
        api(settings) for api in (ClassifyAPI, FillMaskAPI, EmbeddingsAPI) if tasks & {api.task, *api.serves}
    ]
    explain = ExplainAPI(settings) if "classification" in tasks and settings.explain_workers else None
    engine = InferenceProcess(settings, hosted, explain, socket_dir, drain_flag)
    server = ls.LitServer(
        engine,
        accelerator="cuda" if gpus else "cpu",
        devices=list(gpus) or 1,
        workers_per_device=settings.workers,
        timeout=settings.request_timeout,
        track_requests=False,
    )
    slots = settings.workers * max(1, len(gpus))
    internals = ServerInternals(server)
    apis = [*hosted, *([explain] if explain is not None else [])]
    # each route's admission bound is its task's: routes that share a task share one count
    queue_labels = {path: api.endpoint for api in apis for path in api.routes()}  # of the tasks served
    in_flight = InFlight(http_layers.in_flight_slots(INSTRUMENTED, queue_labels))
    by_protocol = protocols.ServedModels(settings)
    internals.replace_middlewares(
        lambda app: http_layers.install_layers(
            app,
            settings=settings,
            auth=Authenticator(settings),
            in_flight=in_flight,
            drain_flag=drain_flag,
            endpoints=INSTRUMENTED,
            queue_labels=queue_labels,
            dispatch=protocols.dispatcher(settings, by_protocol),
        )
    )
    install_error_handlers(server.app)
    engine.client = EngineClient(socket_dir, slots)
    encoders = _add_task_routes(server.app, apis, engine.client)
    _add_routes(server.app, store, settings)
    protocols.install(server.app, settings, by_protocol, drain_flag)  # after every other route and layer
    _document_plain_text_routes(server.app)
    server.app.title = "bertserve"
    server.app.description = (
        "BERT text classification, fill-mask and sentence embeddings, from a versioned model store."
    )
    return AssembledServer(server, encoders, socket_dir, in_flight)


def _drain_then_stop(server: ls.LitServer, drain_flag: Path, in_flight: InFlight, settings: Settings) -> None:
    """SIGTERM or Ctrl-C: fail /health at once (load balancers stop sending), let in-flight requests finish,
    stop."""
    drain_flag.touch()
    deadline = time.monotonic() + settings.drain_seconds
    while time.monotonic() < deadline and in_flight.total() > 0:
        time.sleep(0.1)
    logger.info("drained (%d requests still in flight); shutting down", in_flight.total())
    ServerInternals(server).stop()


def hold_port(host: str, port: int) -> socket.socket:
    """The service port, bound with SO_REUSEPORT and never listened on: taken first (a port in use fails
    start-up before any model loads), it holds the port while each HTTP process binds a twin of its own
    and listens on that (the kernel then spreads connections between them). A plain bind comes first: with
    SO_REUSEPORT alone, a second bertserve of the same user would share the port with a running one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # OSError (in use) when anything holds it, with SO_REUSEPORT or not
        port = probe.getsockname()[1]  # the one picked for port 0
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _spin_briefly_between_forwards() -> None:
    """The inference processes' OpenMP threads spin ~10,000 rounds (microseconds) after a parallel region,
    then sleep: enough to stay hot between the ops of one forward, not so long that they take the cores the
    HTTP processes need between two forwards (libgomp's default spins 300,000; measured in
    docs/performance.md#how-to-tune). Inherited by the spawned processes; the environment's choice wins."""
    if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        os.environ["GOMP_SPINCOUNT"] = "10000"


def _log_sizing(settings: Settings) -> None:
    logger.info(
        "device %s: %d inference process(es)%s, each hosting every model, x %d torch threads (1 for "
        "batches of <= %g M multiply-adds); HTTP processes: %d; batches of <= %d sequences / %d tokens",
        settings.device,
        settings.workers,
        " per GPU" if settings.device != "cpu" else "",
        settings.torch_threads,
        settings.single_thread_mflops,
        settings.api_servers,
        settings.max_batch_size,
        settings.max_batch_tokens,
    )


def _stop_signals_drain(server: ls.LitServer, drain_flag: Path, in_flight: InFlight, settings: Settings):
    """SIGTERM (an orchestrator) and Ctrl-C both drain; the forked HTTP processes inherit the handler."""
    main_process = os.getpid()

    def drain_in_background(*_) -> None:
        if os.getpid() != main_process:
            # A forked HTTP process: uvicorn has shut it down and re-raised the signal, or the signal came
            # before uvicorn took the signals over (a stop during start-up). Either way: end now, quietly.
            raise SystemExit(0)
        threading.Thread(
            target=_drain_then_stop, args=(server, drain_flag, in_flight, settings), daemon=True
        ).start()

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, drain_in_background)


def run_server(settings: Settings) -> None:
    """Serve until stopped: the store and its models, then the inference processes, then the HTTP processes
    (as TEI's run() does). Raises DeviceUnavailable (before anything starts) when the device is not here."""
    settings = settings.resolved()
    logs.configure_logging(settings)
    if settings.device == "cpu":
        _spin_briefly_between_forwards()
    _log_sizing(settings)
    metrics.MAX_QUEUE.set(settings.max_queue)  # the queue alert reads its bound from here
    drain_flag = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / "draining"
    drain_flag.unlink(missing_ok=True)
    try:
        port = hold_port(settings.host, settings.port)
    except OSError as exc:
        logger.error("cannot listen on %s port %d: %s", settings.host, settings.port, exc)
        raise SystemExit(2) from None

    # the store, the models it serves, the routes of their tasks
    assembled = build_server(settings, drain_flag, socket_folder())
    server = assembled.litserver
    internals = ServerInternals(server)
    _stop_signals_drain(server, drain_flag, assembled.in_flight, settings)
    # the drain flag doubles as the supervisor's verdict: /health answers 503 once it gives up
    supervisor = WorkerSupervisor(server, verdict_file=drain_flag)
    internals.prepare_start_up()
    http_processes: dict = {}
    try:
        # the inference processes load every model, each binding its slot's socket before it reports ready
        internals.launch_inference_processes()
        supervisor.start()  # restarts one that dies, in its setup (with back-off) or later
        for encoders in assembled.encoders:
            encoders.load()  # meanwhile: the HTTP processes are forked with the tokenizers loaded
        while not internals.any_ready():
            if drain_flag.exists() or internals.stopping():  # stopped, or the supervisor gave up
                break
            time.sleep(0.05)
        if drain_flag.exists() or internals.stopping():
            logger.info("stopped during start-up: not starting the HTTP servers")
        else:
            # the HTTP processes, each with a listening socket of its own on the port
            http_processes = internals.start_http_processes(
                port,
                settings.api_servers,
                log_level=settings.log_level,
                # Outlive clients' and load balancers' idle timeouts (httpx 5 s, cloud LBs 60 s): a server
                # closing an idle connection just as a client reuses it fails that request with a reset.
                timeout_keep_alive=75,
                log_config=logs.uvicorn_log_config(settings),
                access_log=False,  # our middleware writes the access log, with request ids
            )
            logger.info("serving on http://%s:%d", settings.host, settings.port)
            internals.wait_until_stopped()
    finally:
        port.close()
        internals.shut_down(http_processes)
        shutil.rmtree(assembled.socket_dir, ignore_errors=True)
    if supervisor.failed:  # logged, not printed: a bare line on stderr would break the JSON log
        logger.error("an inference worker failed its setup; exiting for the orchestrator to restart us")
        raise SystemExit(1)
