"""Embeddings, similarity and ranking: every route whose queue is `embeddings` in the route table
(routes.py) becomes an EmbedJob in the HTTP process, so they share one request queue, the same inference
workers and their batches. Its workers load the embedding models and the cross-encoders (task rerank): a
rerank request is answered by either. The result is vectors (one per input, or per token), similarity
scores, or a Ranking; the route's adapter (protocols/) writes it for the route's clients."""

from __future__ import annotations

import torch

from bertserve.api.base import TaskAPI
from bertserve.api.encoders import Tokens
from bertserve.errors import ClientError
from bertserve.jobs import EmbedJob, Ranking
from bertserve.limits import JSON_FLOAT_BYTES, check_answer, check_input_count
from bertserve.runtime.embed import normalize, shorten
from bertserve.runtime.encoding import TextEncoder

# an answer's bytes per input besides its numbers (the object around a vector, its index)
INPUT_BYTES = 64


class EmbeddingsAPI(TaskAPI):
    task = "embedding"
    serves = ("embedding", "rerank")
    endpoint = "embeddings"
    job_type = EmbedJob

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
        number = job.number_bytes or JSON_FLOAT_BYTES
        size = vectors * dimensions * number + prepared.sequences * INPUT_BYTES
        check_answer(size, self.settings, f"{vectors} vectors of {dimensions} numbers")

    def run_model(self, model, requests: list) -> list:
        sizes = self.settings.max_batch_size, self.settings.max_batch_tokens
        if model.task == "rerank":
            scored = model.logits(requests, *sizes)
            return [
                Ranking.of(model.activate(s[:, 0], "none" if r.options.raw_scores else None).tolist())
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
                answers[i] = _result(model, requests[i].options, per_request)
        return answers


def _result(model, job: EmbedJob, vectors: torch.Tensor):
    """One request's result from its pooled vectors: cosine scores against the first (similarity), a
    Ranking of the rest by them (rerank), or the vectors, normalized as the job (else the model) says and
    shortened to `dimensions`, as little-endian float32 rows."""
    if job.kind in ("similarity", "rerank"):
        unit = normalize(vectors)
        scores = (unit[1:] @ unit[0]).tolist()
        return scores if job.kind == "similarity" else Ranking.of(scores)
    if model.normalize if job.normalize is None else job.normalize:
        vectors = shorten(normalize(vectors), job.dimensions)
    else:
        vectors = vectors[:, : job.dimensions]
    return vectors.numpy().astype("<f4", copy=False)
