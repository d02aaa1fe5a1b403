"""Other protocols on the same server, for the clients people already run: OpenAI's (/v1/embeddings,
/v1/models), Text Embeddings Inference's routes at the root, Cohere/Jina's /v1/rerank and KServe's Open
Inference Protocol v2 under /v2.

The routes that run a model are the task APIs' own (api/classify.py, api/embeddings.py list them), so they
go through the same queue, workers, limits and metrics as ours. `install` adds the rest: the routes that
read the store or a tokenizer only, the public doc-and-fallback routes of the paths the protocol middleware
dispatches (protocols/middleware.py), and the error layer; `dispatcher` is the dispatch layer, which the
request layers place after the API key check (http_layers.install_layers)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from bertserve import __version__
from bertserve.config import Settings
from bertserve.errors import ClientError
from bertserve.limits import check_input_chars, check_input_count, check_inputs, render_bounded
from bertserve.protocols import kserve, tei
from bertserve.protocols.middleware import ProtocolDispatch, ProtocolErrors
from bertserve.protocols.served import ServedModels
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import OpenAIModel

INTERNAL_PREFIX = "/_protocol/"
OPENAI_MODELS = "/v1/models"


def dispatcher(settings: Settings, served: ServedModels) -> Callable[[ASGIApp], ASGIApp]:
    """The layer that routes POST / and KServe's infer by their body."""
    return functools.partial(ProtocolDispatch, settings=settings, served=served)


def install(app: FastAPI, settings: Settings, served: ServedModels, drain_flag: Path | None) -> None:
    """Add the protocol routes, and the error layer outermost, to the service's app (after the task APIs'
    routes and the request layers)."""
    # LitServe's own GET /info (its settings) gives way to TEI's
    app.router.routes = [
        route for route in app.router.routes if getattr(route, "path", None) != tei.INFO_PATH
    ]
    for route in app.routes:  # the dispatch targets: /docs shows the public paths instead
        if isinstance(route, APIRoute) and route.path.startswith(INTERNAL_PREFIX):
            route.include_in_schema = False
    _tei_routes(app, settings, served)
    _kserve_routes(app, served, drain_flag)
    _openai_routes(app, served)
    app.add_middleware(ProtocolErrors)


def _tei_routes(app: FastAPI, settings: Settings, served: ServedModels) -> None:
    encoders: dict[tuple[str, str], TextEncoder] = {}  # /tokenize and /decode run here, in a thread

    def encoder(ref: str | None) -> TextEncoder:
        ref = ref or served.root_ref()
        if ref is None:
            raise ClientError(404, "no model is served here", "unknown_model")
        key = served.resolve(ref)  # 404 / 422 for what is not served
        if key not in encoders:
            try:
                encoders[key] = TextEncoder(served.store.read_manifest(*key), served.store.version_dir(*key))
            except Exception as exc:  # a damaged version: the workers refuse it too
                raise ClientError(424, f"the tokenizer of {ref} cannot be read: {exc}", "backend") from None
        return encoders[key]

    @app.post(tei.ROOT_PATH, tags=["tei"], response_model=None)
    def root(
        request: tei.TeiEmbedRequest
        | tei.SimilarityRequest
        | tei.TeiRerankRequest
        | tei.HfClassifyRequest
        | tei.PredictRequest,
    ) -> JSONResponse:
        """TEI's and Hugging Face InferenceClient's route: /embed, /similarity, /rerank, text classification
        or /predict, by the body (see protocols/tei.py). Reaching this handler means no served model fits."""
        raise ClientError(422, "no model served here answers this request", "no_model").to_http()

    # /tokenize and /decode run in a thread and answer the bytes orjson rendered there: FastAPI would validate
    # and encode the answer again, seconds for a large one, holding the event loop (and /live) meanwhile.
    @app.post(tei.TOKENIZE_PATH, tags=["tei"], response_model=list[list[tei.SimpleToken]])
    def tokenize(request: tei.TokenizeRequest) -> Response:
        """The default model's (or `model`'s) tokens, with character spans (TEI's /tokenize)."""
        try:
            texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
            check_inputs(settings, texts)
            found = encoder(request.model)
            prompt = found.prompt(request.prompt_name)
            tokens = (found.tokens(prompt + text, request.add_special_tokens) for text in texts)
            return Response(render_bounded(tokens, settings, "tokens"), media_type="application/json")
        except ClientError as exc:
            raise exc.to_http() from None

    @app.post(tei.DECODE_PATH, tags=["tei"], response_model=list[str])
    def decode(request: tei.DecodeRequest) -> Response:
        """Token ids back to text (TEI's /decode); each text is an input, as long as the other routes take."""
        try:
            rows = request.ids if isinstance(request.ids[0], list) else [request.ids]
            check_input_count(len(rows), settings.max_inputs)
            found = encoder(request.model)

            def texts() -> Iterator[str]:
                for index, ids in enumerate(rows):
                    text = found.decode(ids, request.skip_special_tokens)
                    check_input_chars(settings, index, text)
                    yield text

            return Response(render_bounded(texts(), settings, "texts"), media_type="application/json")
        except ClientError as exc:
            raise exc.to_http() from None

    @app.get(tei.INFO_PATH, tags=["tei"])
    def info() -> tei.Info:
        """TEI's /info, of the model POST / answers with."""
        try:
            ref = served.root_ref()
            if ref is None:
                raise ClientError(404, "no model is served here", "unknown_model")
            manifest = served.manifest(ref)
        except ClientError as exc:
            raise exc.to_http() from None
        if manifest.task == "embedding":
            model_type: dict = {"embedding": {"pooling": manifest.pooling}}
        else:
            labels = dict(enumerate(manifest.labels or ["LABEL_0"]))
            kind = "reranker" if manifest.task == "rerank" else "classifier"
            model_type = {kind: {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}}
        return tei.Info(
            model_id=f"{manifest.name}@{manifest.version}",
            model_sha=None,
            model_dtype=settings.backend_for(manifest.name),
            model_type=model_type,
            max_concurrent_requests=settings.max_queue,
            max_input_length=manifest.max_length,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_size,
            max_client_batch_size=settings.max_embedding_inputs,
            auto_truncate=True,
            tokenization_workers=settings.api_servers,
            version=__version__,
        )


def _openai_routes(app: FastAPI, served: ServedModels) -> None:
    @app.get(f"{OPENAI_MODELS}/{{model_id}}", tags=["openai"])
    def retrieve_model(model_id: str) -> OpenAIModel:
        """OpenAI's `client.models.retrieve(id)`: one entry of GET /v1/models' `data`."""
        store = served.store
        manifests = store.manifests(model_id) if model_id in store.models() else []
        if not manifests:  # a folder with no version or no readable manifest is no model
            raise ClientError(404, f"model {model_id!r} is not in the store", "unknown_model").to_http()
        created = int(datetime.fromisoformat(manifests[-1].created_at).timestamp())
        return OpenAIModel(id=model_id, created=created)


def _kserve_routes(app: FastAPI, served: ServedModels, drain_flag: Path | None) -> None:
    def model_metadata(name: str, version: str | None) -> dict:
        try:
            task = served.task_of(name)
            manifest = served.manifest(f"{name}@{version}" if version else name)
        except ClientError as exc:
            raise ClientError(
                404, f"model {name!r} not found: {exc.message}", "unknown_model"
            ).to_http() from None
        versions = served.loaded_versions(manifest.name)
        return kserve.metadata(manifest.name, versions, task or manifest.task, manifest)

    def readiness(name: str, version: str | None) -> JSONResponse:
        """The Open Inference Protocol's model readiness: 200 when an inference process serves the version
        `name` (or `name`'s default) resolves to, 400 (the protocol's "false") when it refused it."""
        try:
            resolved, resolved_version = served.resolve(f"{name}@{version}" if version else name)
        except ClientError as exc:
            raise ClientError(
                404, f"model {name!r} not found: {exc.message}", "unknown_model"
            ).to_http() from None
        ready = served.is_loaded(resolved, resolved_version)
        return JSONResponse({"name": resolved, "ready": ready}, 200 if ready else 400)

    @app.get(kserve.PREFIX, tags=["kserve"])
    def server_metadata() -> dict:
        """The Open Inference Protocol's server metadata."""
        return {"name": "bertserve", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get(f"{kserve.PREFIX}/health/live", tags=["kserve"])
    def live() -> dict:
        return {"live": True}

    @app.get(f"{kserve.PREFIX}/health/ready", tags=["kserve"])
    def ready() -> JSONResponse:
        """Ready once the workers are (the HTTP server starts after them), until a drain begins."""
        draining = drain_flag is not None and drain_flag.exists()
        return JSONResponse({"ready": not draining}, 503 if draining else 200)

    @app.get(f"{kserve.PREFIX}/models/{{model_name}}", tags=["kserve"])
    def model(model_name: str) -> dict:
        return model_metadata(model_name, None)

    @app.get(f"{kserve.PREFIX}/models/{{model_name}}/versions/{{model_version}}", tags=["kserve"])
    def model_version(model_name: str, model_version: str) -> dict:
        return model_metadata(model_name, model_version)

    @app.get(f"{kserve.PREFIX}/models/{{model_name}}/ready", tags=["kserve"])
    def model_ready(model_name: str) -> JSONResponse:
        return readiness(model_name, None)

    @app.get(f"{kserve.PREFIX}/models/{{model_name}}/versions/{{model_version}}/ready", tags=["kserve"])
    def model_version_ready(model_name: str, model_version: str) -> JSONResponse:
        return readiness(model_name, model_version)

    def refuse(model_name: str) -> None:
        task = served.task_of(model_name)
        if task is None:
            raise ClientError(404, f"model {model_name!r} not found", "unknown_model").to_http()
        raise ClientError(
            400, f"model {model_name!r} is a {task} model: infer serves classification and embedding models"
        ).to_http()

    @app.post(f"{kserve.PREFIX}/models/{{model_name}}/infer", tags=["kserve"])
    def infer(model_name: str, request: kserve.InferRequest) -> kserve.InferResponse:
        """Texts as one BYTES input; see protocols/kserve.py for the outputs."""
        refuse(model_name)

    @app.post(f"{kserve.PREFIX}/models/{{model_name}}/versions/{{model_version}}/infer", tags=["kserve"])
    def infer_version(
        model_name: str, model_version: str, request: kserve.InferRequest
    ) -> kserve.InferResponse:
        refuse(model_name)
