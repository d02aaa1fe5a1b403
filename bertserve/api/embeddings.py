"""Every route that embeds or ranks texts: POST /v1/embeddings (OpenAI's shape), /v1/embed, TEI's /embed,
/embed_all, /similarity and /rerank, Cohere's /v1/rerank and KServe's infer for embedding models.

One TaskAPI answers them all: each route's request becomes an EmbedJob in the HTTP process, so they share one
request queue, the same inference workers and their batches. Its workers load the embedding models and the
cross-encoders (task rerank): a rerank request is answered by either (protocols/rerank.py)."""

from __future__ import annotations

import base64

import orjson
import torch

from bertserve import routes
from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.errors import ClientError
from bertserve.limits import BASE64_FLOAT_BYTES, JSON_FLOAT_BYTES, check_answer, check_input_count
from bertserve.protocols import kserve, rerank, tei
from bertserve.runtime.embed import normalize, shorten
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import EmbeddingsRequest, EmbeddingsResponse, EmbedJob, EmbedRequest

OPENAI_PATH, OWN_TEI_PATH = routes.OPENAI_EMBEDDINGS, routes.EMBED
# an answer's bytes per input besides its numbers: OpenAI's {"object": "embedding", "index": ...} item
INPUT_BYTES = 64


class EmbeddingsAPI(TaskAPI):
    task = "embedding"
    serves = ("embedding", "rerank")
    endpoint = "embeddings"
    request_type = EmbedJob
    response_type = EmbeddingsResponse

    def routes(self) -> dict[str, tuple[type, type]]:
        return {
            OPENAI_PATH: (EmbeddingsRequest, EmbeddingsResponse),
            OWN_TEI_PATH: (EmbedRequest, list[list[float]]),
            tei.EMBED_PATH: (tei.TeiEmbedRequest, list[list[float]]),
            tei.EMBED_ALL_PATH: (tei.TeiEmbedAllRequest, list[list[list[float]]]),
            tei.SIMILARITY_PATH: (tei.SimilarityRequest, list[float]),
            tei.RERANK_PATH: (tei.TeiRerankRequest, list[tei.RankedText]),
            rerank.COHERE_PATH: (rerank.RerankRequest, rerank.RerankResponse),
            rerank.COHERE_V2_PATH: (rerank.RerankV2Request, rerank.RerankResponse),
            kserve.INFER_PATHS["embedding"]: (kserve.EmbedInferRequest, kserve.InferResponse),
        }

    # ---- in the HTTP processes -------------------------------------------------------------------

    def default_for(self, job: EmbedJob) -> str:
        return self.settings.default_model("rerank" if job.kind == "rerank" else "embedding")

    def accepts(self, job: EmbedJob) -> tuple[str, ...]:
        """A cross-encoder only ranks; an embedding model embeds, compares and ranks."""
        return ("embedding", "rerank") if job.kind == "rerank" else ("embedding",)

    def input_limit(self, job: EmbedJob) -> int:
        return self.settings.max_embedding_inputs + (job.query is not None)

    def tokenize(self, encoder: TextEncoder, job: EmbedJob) -> Tokens:
        if job.ids is not None:
            check_input_count(len(job.ids), self.settings.max_embedding_inputs)
            inputs = encoder.encode_ids(job.ids, job.truncate, job.truncation_direction)
        elif job.kind == "rerank" and encoder.task == "rerank":  # a cross-encoder reads (query, document)
            pairs = [(job.query, text) for text in job.texts]
            inputs = encoder.encode(pairs, job.truncate, job.truncation_direction)
        else:
            prompt = encoder.prompt(job.prompt_name)
            inputs = encoder.encode(
                [prompt + text for text in job.as_list()], job.truncate, job.truncation_direction
            )
        tokens = sum(len(item.ids) for item in inputs)
        if tokens > self.settings.max_request_tokens:
            raise ClientError(
                413,
                f"{tokens} tokens in one request; the limit is {self.settings.max_request_tokens}",
                "too_many_tokens",
            )
        return Tokens(encoder.key, inputs)

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

    def check_answer(self, prepared, job: EmbedJob) -> None:
        """A vector per input (per token on /embed_all) of the model's dimensions, or of `dimensions`: from a
        few token ids, thousands of numbers. A score per input (similarity, rerank) never outgrows the
        request."""
        if job.kind in ("similarity", "rerank"):
            return
        dimensions = min(job.dimensions or prepared.model.dimensions, prepared.model.dimensions)
        vectors = prepared.tokens if job.kind == "embed_all" else prepared.sequences
        number = BASE64_FLOAT_BYTES if job.encoding_format == "base64" else JSON_FLOAT_BYTES
        size = vectors * dimensions * number + prepared.sequences * INPUT_BYTES
        check_answer(size, self.settings, f"{vectors} vectors of {dimensions} numbers")

    def run_model(self, model, requests: list) -> list:
        sizes = self.settings.max_batch_size, self.settings.max_batch_tokens
        if model.task == "rerank":
            scored = model.logits(requests, *sizes)
            return [
                _ranking(model, r, model.activate(s[:, 0], "none" if r.options.raw_scores else None))
                for r, s in zip(requests, scored, strict=True)
            ]
        answers: list = [None] * len(requests)
        every_token = [i for i, r in enumerate(requests) if r.options.kind == "embed_all"]
        pooled = [i for i, r in enumerate(requests) if r.options.kind != "embed_all"]
        if every_token:
            vectors = model.token_vectors([requests[i] for i in every_token], *sizes)
            for i, per_input in zip(every_token, vectors, strict=True):
                answers[i] = [row.numpy() for row in per_input]
        if pooled:
            vectors = model.embed([requests[i] for i in pooled], *sizes)
            for i, per_request in zip(pooled, vectors, strict=True):
                answers[i] = _answer(model, requests[i], per_request)
        return answers

    def response_body(self, model, answer) -> bytes:
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def _answer(model, request, vectors: torch.Tensor):
    """One request's body from its pooled vectors, in its route's shape."""
    job: EmbedJob = request.options
    if job.kind == "similarity":
        unit = normalize(vectors)
        return (unit[1:] @ unit[0]).tolist()
    if job.kind == "rerank":
        unit = normalize(vectors)
        return _ranking(model, request, unit[1:] @ unit[0])
    if job.shape in ("tei", "hf"):
        vectors = (
            shorten(normalize(vectors), job.dimensions) if job.normalize else vectors[:, : job.dimensions]
        )
        return vectors.numpy()
    if model.normalize or job.dimensions is not None:
        vectors = shorten(normalize(vectors), job.dimensions)
    rows = vectors.numpy().astype("<f4")
    if job.shape == "kserve":
        return kserve.embedding_outputs(model, job, rows)
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


def _ranking(model, request, scores: torch.Tensor):
    """A rerank request's answer: TEI's list of {index, score, text?} best first, or Cohere's body."""
    job: EmbedJob = request.options
    values = scores.tolist()
    if job.shape == "cohere":
        return rerank.answer(model, job, values, request.tokens)
    return [
        {"index": i, "score": values[i], **({"text": job.texts[i]} if job.return_documents else {})}
        for i in rerank.ranked(values, None)
    ]
