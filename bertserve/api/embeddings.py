"""POST /v1/embeddings (OpenAI's shape) and POST /v1/embed (Text Embeddings Inference's shape).

One TaskAPI answers both routes: each route's request becomes an EmbedJob in the HTTP process, so both
share one request queue, the same inference workers and their batches."""

from __future__ import annotations

import base64

import orjson
import torch

from bertserve.api.base import TaskAPI
from bertserve.api.encoders import HttpEncoders, Tokens
from bertserve.errors import ClientError
from bertserve.runtime.embed import normalize, shorten
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import EmbeddingsRequest, EmbeddingsResponse, EmbedJob, EmbedRequest

OPENAI_PATH, TEI_PATH = "/v1/embeddings", "/v1/embed"


class EmbeddingsAPI(TaskAPI):
    task = "embedding"
    endpoint = "embeddings"
    request_type = EmbedJob
    response_type = EmbeddingsResponse

    def routes(self) -> dict[str, tuple[type, type]]:
        return {
            OPENAI_PATH: (EmbeddingsRequest, EmbeddingsResponse),
            TEI_PATH: (EmbedRequest, list[list[float]]),
        }

    # ---- in the HTTP processes -------------------------------------------------------------------

    def submission(self, request: EmbeddingsRequest | EmbedRequest, encoders: HttpEncoders):
        return super().submission(request.job(), encoders)

    def tokenize(self, encoder: TextEncoder, request: EmbedJob) -> Tokens:
        return Tokens(encoder.key, encoder.encode(request.texts, request.truncate))

    # ---- in the inference workers ----------------------------------------------------------------

    def prepare(self, model, tokens: Tokens, request: EmbedJob):
        from bertserve.runtime.loaded import Prepared

        if request.dimensions is not None and request.dimensions > model.dimensions:
            raise ClientError(
                422,
                f"dimensions={request.dimensions}: model {model.ref} makes {model.dimensions}-dimensional "
                "vectors",
                "bad_dimensions",
            )
        return Prepared(model, tokens.inputs, options=request)

    def run_model(self, model, requests: list) -> list:
        pooled = model.embed(requests, self.settings.max_batch_size, self.settings.max_batch_tokens)
        return [_answer(model, request, vectors) for request, vectors in zip(requests, pooled, strict=True)]

    def response_body(self, model, answer) -> bytes:
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def _answer(model, request, vectors: torch.Tensor):
    """One request's body: TEI's list of vectors, or OpenAI's list object (vectors as numbers or base64)."""
    job: EmbedJob = request.options
    if job.shape == "tei":
        return (normalize(vectors) if job.normalize else vectors).numpy()
    if model.normalize or job.dimensions is not None:
        vectors = shorten(normalize(vectors), job.dimensions)
    rows = vectors.numpy().astype("<f4")
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(row.tobytes()).decode() if job.encoding_format == "base64" else row,
        }
        for index, row in enumerate(rows)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model.name,
        "version": model.version,
        "usage": {"prompt_tokens": request.tokens, "total_tokens": request.tokens},
    }
