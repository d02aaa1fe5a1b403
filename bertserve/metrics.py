"""Every Prometheus metric, defined once. Correct across processes via prometheus-client's multiprocess mode.

`bertserve serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker starts, so the HTTP
processes (end-to-end latency, status codes, in-flight) and the inference workers (queue time, model time,
batch shapes, predicted labels) all write there and /metrics sums them.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "bertserve"

# Buckets chosen for a CPU BERT: a short forward is ~1-10 ms, a long batch ~0.1-2 s.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

MODEL_LABELS = ("endpoint", "model", "version")

REQUEST_DURATION = Histogram(
    f"{PREFIX}_request_duration_seconds",
    "End-to-end request time in the HTTP server, from first byte to response.",
    [*MODEL_LABELS, "code"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    f"{PREFIX}_requests",
    "HTTP requests answered, by status code.",
    [*MODEL_LABELS, "code"],
)
IN_FLIGHT = Gauge(
    f"{PREFIX}_requests_in_flight",
    "Requests being handled by the HTTP servers right now.",
    ["endpoint"],
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    f"{PREFIX}_queue_depth",
    "Requests waiting for an inference worker, sampled by the workers at every batch.",
    ["endpoint"],
    multiprocess_mode="livemax",
)
QUEUE_DURATION = Histogram(
    f"{PREFIX}_queue_duration_seconds",
    "Time a request waited between submission and the start of its batch.",
    MODEL_LABELS,
    buckets=LATENCY_BUCKETS,
)
MODEL_DURATION = Histogram(
    f"{PREFIX}_model_duration_seconds",
    "Time of one batch in the model: pad + forward + decode (requests arrive tokenized).",
    MODEL_LABELS,
    buckets=LATENCY_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    f"{PREFIX}_batch_requests",
    "Requests merged into one forward pass.",
    MODEL_LABELS,
    buckets=BATCH_BUCKETS,
)
BATCH_SEQUENCES = Histogram(
    f"{PREFIX}_batch_sequences",
    "Sequences (inputs) in one forward pass.",
    MODEL_LABELS,
    buckets=BATCH_BUCKETS,
)
BATCH_TOKENS = Histogram(
    f"{PREFIX}_batch_tokens",
    "Padded tokens (sequences x longest sequence) in one forward pass.",
    MODEL_LABELS,
    buckets=TOKEN_BUCKETS,
)
SEQUENCES = Counter(
    f"{PREFIX}_sequences",
    "Sequences answered by the model.",
    MODEL_LABELS,
)
PREDICTIONS = Counter(
    f"{PREFIX}_predictions",
    "Top predicted label per classified input.",
    ["model", "version", "label"],
)
PREDICTION_SCORE = Histogram(
    f"{PREFIX}_prediction_score",
    "Score of the top label per classified input (watch it for drift).",
    ["model", "version", "label"],
    buckets=SCORE_BUCKETS,
)
EXPIRED = Counter(
    f"{PREFIX}_expired_requests",
    "Requests a worker dropped uncomputed (answered 504): they waited in the queue past request_timeout.",
    ["endpoint"],
)
CANCELLED = Counter(
    f"{PREFIX}_cancelled_requests",
    "Requests withdrawn uncomputed because their client went away: it disconnected, or was answered 504.",
    ["endpoint"],
)
WORKER_RESTARTS = Counter(
    f"{PREFIX}_worker_restarts",
    "Inference processes that died and were replaced (by slot); their in-flight requests were answered 503.",
    ["slot"],
)
MAX_QUEUE = Gauge(
    f"{PREFIX}_max_queue",
    "BERTSERVE_MAX_QUEUE: most requests one queue holds before new ones get 503 (the queue alert's bound)",
    multiprocess_mode="max",
)
MODEL_INFO = Gauge(
    f"{PREFIX}_model_info",
    "1 for every model version loaded by a worker, with the backend and the device (cpu, cuda:N) it runs on.",
    ["endpoint", "model", "version", "task", "backend", "device"],
    multiprocess_mode="liveall",
)


def render_latest() -> tuple[bytes, str]:
    """Exposition text summed over every process writing to PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class Loaded(NamedTuple):
    """How a version is served; device: every device a worker runs it on, comma-joined ('cuda:0,cuda:1')."""

    backend: str | None = None
    device: str | None = None


def reports_loaded() -> bool:
    """Whether inference processes report what they loaded here (the server's metrics folder is set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def loaded_versions() -> dict[tuple[str, str], Loaded]:
    """(model, version) -> Loaded for every version an inference worker reports loaded (MODEL_INFO = 1):
    what /v1/models calls served, so a version refused at load time shows as not served."""
    if not reports_loaded():
        return {}
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    backends: dict[tuple[str, str], str] = {}
    devices: dict[tuple[str, str], set[str]] = {}
    for family in registry.collect():
        if family.name != MODEL_INFO._name:
            continue
        for sample in family.samples:
            # /v1/explain's workers hold float32 copies of the classification versions: what a version is
            # served with is what answers /v1/classify
            if sample.value == 1 and sample.labels["endpoint"] != "explain":
                key = sample.labels["model"], sample.labels["version"]
                backends[key] = sample.labels["backend"]
                devices.setdefault(key, set()).add(sample.labels["device"])
    return {key: Loaded(backend, ",".join(sorted(devices[key]))) for key, backend in backends.items()}
