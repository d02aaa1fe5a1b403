"""bertserve's own API (docs/api.md): its task routes' answers are the version that answered beside the
task's result; its errors are the service's own shape (errors.py), so it reshapes none."""

from __future__ import annotations

from bertserve import routes
from bertserve.protocols.adapter import Adapter, Handler, bare, wrapped
from bertserve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    ExplainRequest,
    ExplainResponse,
    FillMaskRequest,
    FillMaskResponse,
)

ADAPTER = Adapter(
    "bertserve",
    {
        routes.CLASSIFY: Handler(ClassifyRequest, ClassifyResponse, wrapped("predictions")),
        routes.FILL_MASK: Handler(FillMaskRequest, FillMaskResponse, wrapped("predictions")),
        routes.EXPLAIN: Handler(ExplainRequest, ExplainResponse, wrapped("explanations")),
        routes.EMBED: Handler(EmbedRequest, list[list[float]], bare),  # TEI's bare arrays
    },
)
