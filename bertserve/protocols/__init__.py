"""The protocols the server speaks, one adapter each, for the clients people already run: bertserve's own
(native.py), OpenAI's (/v1/embeddings, /v1/models), Text Embeddings Inference's routes at the root (tei.py),
Cohere/Jina's rerank (cohere.py) and KServe's Open Inference Protocol v2 under /v2 (kserve.py).

The routes that run a model are queued for the task APIs (api/), which take each route's handler from its
adapter (adapters.py), so they go through the same queue, workers, limits and metrics as ours. `install`
adds the rest: each adapter's routes that read the store or a tokenizer only, the public doc-and-fallback
routes of the paths the protocol middleware dispatches (protocols/middleware.py), and the error layer;
`dispatcher` is the dispatch layer, which the request layers place after the API key check
(http_layers.install_layers)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp

from bertserve import routes
from bertserve.config import Settings
from bertserve.protocols import kserve, openai, tei
from bertserve.protocols.middleware import ProtocolDispatch, ProtocolErrors
from bertserve.protocols.served import ServedModels


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
    internal = {row.path for row in routes.ROUTES if row.internal}
    for route in app.routes:  # the dispatch targets: /docs shows the public paths instead
        if isinstance(route, APIRoute) and route.path in internal:
            route.include_in_schema = False
    tei.install_routes(app, settings, served)
    kserve.install_routes(app, served, drain_flag)
    openai.install_routes(app, served)
    app.add_middleware(ProtocolErrors)
