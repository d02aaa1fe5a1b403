"""Every route the service answers, declared once.

Each row says what a route is to the rest of the service: its path and method, the protocol whose clients
call it (its adapter, protocols/, parses its body, writes its answer and shapes its errors), the queue of the
inference-process task its requests wait in (None: answered in the HTTP process), the label its requests
are counted under in the metrics (None: not counted under one of its own), whether it is open without an
API key by default, and whether it is an internal path the protocol layer routes a request to (POST / and
KServe's infer name no task by their path: protocols/middleware.py sends them on to one of these). The
instrumentation labels, the error shapes by route, the open paths' default, the task APIs' routes, the docs'
route table and the alerting queries are drawn from this table, or a test checks them against it
(tests/unit/test_routes.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

# Who defines a route's API: each has an adapter (protocols/adapters.py)
PROTOCOLS = ("bertserve", "openai", "tei", "cohere", "kserve")
# Paths under these speak that protocol even where no route matches (a 404 for a model id with a slash, a
# KServe path this server lacks): their clients parse nothing else.
PREFIX_PROTOCOLS = {"/v1/models/": "openai", "/v2/": "kserve"}


@dataclass(frozen=True)
class Route:
    path: str
    method: str
    protocol: str
    queue: str | None = None  # the inference-process task (its queue) that answers it
    label: str | None = None  # metrics `endpoint` label
    open: bool = False  # needs no key by default (BERTSERVE_AUTH_OPEN_PATHS)
    internal: bool = False  # reached only through the protocol layer; not in /docs
    by_body: bool = False  # the protocol layer sends it to an internal route, by what its body asks


# The paths the code names (the modules that answer them import these); the table below holds every route.
CLASSIFY, FILL_MASK, EXPLAIN, EMBED = "/v1/classify", "/v1/fill-mask", "/v1/explain", "/v1/embed"
OPENAI_EMBEDDINGS, OPENAI_MODEL = "/v1/embeddings", "/v1/models/{model_id}"
TEI_ROOT, TEI_EMBED, TEI_EMBED_ALL, TEI_SIMILARITY = "/", "/embed", "/embed_all", "/similarity"
TEI_RERANK, TEI_PREDICT, TEI_INFO = "/rerank", "/predict", "/info"
TEI_TOKENIZE, TEI_DECODE = "/tokenize", "/decode"
HF_CLASSIFY = "/_protocol/hf/text-classification"  # POST / of HF's text classification, once told apart
COHERE_RERANK, COHERE_RERANK_V2 = "/v1/rerank", "/v2/rerank"
KSERVE_PREFIX = "/v2"
KSERVE_CLASSIFY_INFER = "/_protocol/kserve/classification/infer"
KSERVE_EMBED_INFER = "/_protocol/kserve/embedding/infer"

ROUTES: tuple[Route, ...] = (
    # bertserve's own API
    Route(CLASSIFY, "POST", "bertserve", "classify", "classify"),
    Route(FILL_MASK, "POST", "bertserve", "fill-mask", "fill-mask"),
    Route(EXPLAIN, "POST", "bertserve", "explain", "explain"),
    Route(EMBED, "POST", "bertserve", "embeddings", "embed"),
    Route("/v1/models", "GET", "openai", None, "models"),
    Route("/health", "GET", "bertserve", open=True),
    Route("/live", "GET", "bertserve", open=True),
    Route("/metrics", "GET", "bertserve", open=True),
    Route("/ui", "GET", "bertserve", open=True),
    Route("/", "GET", "bertserve"),
    # OpenAI
    Route(OPENAI_EMBEDDINGS, "POST", "openai", "embeddings", "embeddings"),
    Route(OPENAI_MODEL, "GET", "openai"),
    # Hugging Face Text Embeddings Inference, and the inference API's POST /
    Route(TEI_ROOT, "POST", "tei", None, "tei-root", by_body=True),
    Route(TEI_EMBED, "POST", "tei", "embeddings", "tei-embed"),
    Route(TEI_EMBED_ALL, "POST", "tei", "embeddings", "tei-embed-all"),
    Route(TEI_SIMILARITY, "POST", "tei", "embeddings", "tei-similarity"),
    Route(TEI_RERANK, "POST", "tei", "embeddings", "tei-rerank"),
    Route(TEI_PREDICT, "POST", "tei", "classify", "tei-predict"),
    Route(TEI_TOKENIZE, "POST", "tei", None, "tei-tokenize"),
    Route(TEI_DECODE, "POST", "tei", None, "tei-decode"),
    Route(TEI_INFO, "GET", "tei"),
    Route(HF_CLASSIFY, "POST", "tei", "classify", "hf-classify", internal=True),
    # Cohere
    Route(COHERE_RERANK, "POST", "cohere", "embeddings", "rerank"),
    Route(COHERE_RERANK_V2, "POST", "cohere", "embeddings", "rerank-v2"),
    # KServe's Open Inference Protocol
    Route(KSERVE_PREFIX, "GET", "kserve"),
    Route("/v2/health/live", "GET", "kserve", open=True),
    Route("/v2/health/ready", "GET", "kserve", open=True),
    Route("/v2/models/{model_name}", "GET", "kserve"),
    Route("/v2/models/{model_name}/versions/{model_version}", "GET", "kserve"),
    Route("/v2/models/{model_name}/ready", "GET", "kserve"),
    Route("/v2/models/{model_name}/versions/{model_version}/ready", "GET", "kserve"),
    Route("/v2/models/{model_name}/infer", "POST", "kserve", by_body=True),
    Route("/v2/models/{model_name}/versions/{model_version}/infer", "POST", "kserve", by_body=True),
    Route(KSERVE_CLASSIFY_INFER, "POST", "kserve", "classify", "v2-infer-classify", internal=True),
    Route(KSERVE_EMBED_INFER, "POST", "kserve", "embeddings", "v2-infer-embed", internal=True),
)


def metric_labels() -> dict[str, str]:
    """Instrumented path -> its metrics `endpoint` label."""
    return {route.path: route.label for route in ROUTES if route.label is not None}


def queues() -> dict[str, str]:
    """Path -> the inference-process task whose queue its requests wait in."""
    return {route.path: route.queue for route in ROUTES if route.queue is not None}


def open_paths() -> tuple[str, ...]:
    """The paths open without a key by default: the probes (KServe's too), Prometheus, the page."""
    return tuple(route.path for route in ROUTES if route.open)


def documented_error_routes() -> tuple[str, ...]:
    """The public bertserve and OpenAI routes that reach an inference process: /openapi.json lists their
    error statuses with bertserve's error body (OpenAI's shape is not described there yet)."""
    public = (r for r in ROUTES if r.queue is not None and not r.internal)
    return tuple(r.path for r in public if r.protocol in ("bertserve", "openai"))


def route(path: str, method: str = "POST") -> Route:
    """The row of `path` (KeyError: no such route)."""
    for row in ROUTES:
        if row.path == path and row.method == method:
            return row
    raise KeyError(f"{method} {path} is not in the route table")


@cache
def _protocols() -> tuple[dict[str, str], list[tuple[re.Pattern, str]]]:
    exact = {row.path: row.protocol for row in ROUTES if "{" not in row.path}
    templated = [
        (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", row.path) + "$"), row.protocol)
        for row in ROUTES
        if "{" in row.path
    ]
    return exact, templated


def protocol_of(path: str) -> str:
    """The protocol that speaks on `path`, whose error shape its errors take. Where two methods share a path
    (GET / and POST /), the later row's protocol wins: POST /, TEI's, is the one that answers errors."""
    exact, templated = _protocols()
    if path in exact:
        return exact[path]
    for pattern, protocol in templated:
        if pattern.match(path):
            return protocol
    return next((p for prefix, p in PREFIX_PROTOCOLS.items() if path.startswith(prefix)), "bertserve")


def markdown_table() -> str:
    """The routes as docs/api.md shows them (tests/unit/test_routes.py checks the page against it)."""
    lines = [
        "| path | method | protocol | queue | metric label | without a key |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for route in ROUTES:
        if route.internal:
            continue
        queue = f"`{route.queue}`" if route.queue else "- (the HTTP process answers)"
        if route.by_body:
            queue = "`classify` or `embeddings`, by its body (or the model's task)"
        label = f"`{route.label}`" if route.label else "-"
        lines.append(
            f"| `{route.path}` | {route.method} | {route.protocol} | {queue} | {label} | "
            f"{'open' if route.open else 'key'} |"
        )
    return "\n".join(lines)


def by_protocol() -> str:
    """The public routes, one paragraph per protocol (`bertserve serve --help` prints it)."""
    paragraphs = []
    for protocol in PROTOCOLS:
        listed = [f"{r.method} {r.path}" for r in ROUTES if r.protocol == protocol and not r.internal]
        if listed:
            paragraphs.append(f"{protocol}: {', '.join(listed)}")
    return "\n\n".join(paragraphs)
