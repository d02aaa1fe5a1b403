"""POST /v1/rerank in Cohere's and Jina's shape (cohere.Client(base_url=...).rerank, Jina's reranker API,
infinity): `query`, `documents`, `top_n`, `return_documents` -> `results: [{index, relevance_score,
document?}]`, with `meta` and `usage`.

A cross-encoder (task rerank: a sequence classifier with one output, scored on (query, document) pairs,
sigmoid as sentence-transformers' CrossEncoder) or an embedding model (cosine of query and document vectors)
serves it; the answer's `scoring` says which. Served by the embedding workers (api/embeddings.py)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from bertserve import routes
from bertserve.jobs import EmbedJob, Ranking
from bertserve.protocols.adapter import Adapter, Handler
from bertserve.schemas import NonEmpty, Text, _Request

COHERE_PATH, COHERE_V2_PATH = routes.COHERE_RERANK, routes.COHERE_RERANK_V2
SCORING = {"rerank": "cross-encoder", "embedding": "cosine"}


class Document(BaseModel):
    """Cohere's document object: its `text` is ranked (and answered back as the document)."""

    model_config = ConfigDict(extra="allow")

    text: Text


class RerankRequest(_Request):
    query: Text
    documents: NonEmpty[Text | Document] = Field(..., description="Texts, or objects whose `text` is ranked.")
    top_n: int | None = Field(None, ge=1, description="Only the n best; null: every document.")
    return_documents: bool = Field(False, description="Answer each document beside its score.")
    truncate: bool = Field(True, description="Cut long (query, document) inputs; false: 422 instead.")

    def job(self) -> EmbedJob:
        return EmbedJob(
            model=self.model,
            kind="rerank",
            query=self.query,
            texts=[doc if isinstance(doc, str) else doc.text for doc in self.documents],
            truncate=self.truncate,
            reply={"top_n": self.top_n, "return_documents": self.return_documents},
        )


class RerankV2Request(_Request):
    """Cohere's v2 rerank (cohere.ClientV2): `model` required, documents are texts, no return_documents.
    `priority` is accepted and not used (requests are answered in arrival order)."""

    model: str
    query: Text
    documents: NonEmpty[Text]
    top_n: int | None = Field(None, ge=1, description="Only the n best; null: every document.")
    priority: int | None = Field(None, description="Accepted for Cohere compatibility; not used.")

    def job(self) -> EmbedJob:
        return EmbedJob(
            model=self.model,
            kind="rerank",
            query=self.query,
            texts=self.documents,
            reply={"top_n": self.top_n},
        )


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict | None = None


class RerankResponse(BaseModel):
    id: str
    results: list[RerankResult] = Field(description="Best first.")
    model: str
    version: str
    scoring: str = Field(description="cross-encoder (a rerank model) or cosine (an embedding model).")
    meta: dict
    usage: dict


def answer(model, prepared, ranking: Ranking) -> dict:
    """The Cohere/Jina body for one request: the `top_n` best, with their documents when asked."""
    job: EmbedJob = prepared.options
    top_n, with_documents = job.reply.get("top_n"), job.reply.get("return_documents", False)
    results = []
    for index in ranking.order[:top_n] if top_n else ranking.order:
        result: dict = {"index": index, "relevance_score": ranking.scores[index]}
        if with_documents:
            result["document"] = {"text": job.texts[index]}
        results.append(result)
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "model": model.name,
        "version": model.version,
        "scoring": SCORING[model.task],
        "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}},
        "usage": {"total_tokens": prepared.tokens},
    }


ADAPTER = Adapter(
    "cohere",
    {
        COHERE_PATH: Handler(RerankRequest, RerankResponse, answer),
        COHERE_V2_PATH: Handler(RerankV2Request, RerankResponse, answer),
    },
)
