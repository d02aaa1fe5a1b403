"""What a protocol adapter is: for each of its routes that a task answers, the request schema that turns a
body into the task's job (jobs.py) and the function that writes the task's result in the protocol's shape;
and the shape of the protocol's errors.

A route is declared once, in the route table (routes.py): its path, protocol, queue, metric label. Its
adapter gives the rest; tests/unit/test_routes.py checks that each queued route has exactly one handler, in
the adapter of its protocol. The result a handler writes is what the task computed (api/), never shaped by
it: scores by label (classification), vectors (embeddings), a Ranking (rerank), mask fills, explanations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (model, the request as the batch saw it, the task's result) -> the answer's JSON-able body (numpy arrays
# allowed). It runs in the inference process, where the result is, so that only the body's bytes travel back.
# The request (runtime/loaded.py's Prepared) holds the job (`options`) and the tokens read (`tokens`).
Render = Callable[[Any, Any, Any], Any]
# (status, our error body) -> (status, the protocol's error body)
Reshape = Callable[[int, dict], tuple[int, dict]]


@dataclass(frozen=True)
class Handler:
    request: type  # the body's schema; its job() makes the task's job
    response: Any  # the answer's schema, for /docs
    render: Render


@dataclass(frozen=True)
class Adapter:
    protocol: str
    handlers: dict[str, Handler] = field(default_factory=dict)  # route path -> its handler
    reshape: Reshape | None = None  # None: bertserve's own error shape


def wrapped(field_name: str) -> Render:
    """bertserve's body: the version that answered beside the task's result, as `field_name` (a partial:
    the handlers travel to the inference processes pickled)."""
    return functools.partial(_beside_version, field_name)


def _beside_version(field_name: str, model, prepared, result) -> dict:
    return {"model": model.name, "version": model.version, field_name: result}


def bare(model, prepared, result):
    """The result itself (TEI's bare arrays)."""
    return result


def error_parts(body: dict) -> tuple[str, str, Any] | None:
    """(message, code, details) of our error body; None when it is another shape already."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    return str(error.get("message", "")), str(error.get("code", "")), error.get("details")
