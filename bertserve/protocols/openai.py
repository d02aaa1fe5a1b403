"""OpenAI's API, for its clients (openai, LangChain's OpenAIEmbeddings, LlamaIndex): POST /v1/embeddings,
GET /v1/models (bertserve's list carries OpenAI's `data` beside its own, server.py) and
GET /v1/models/{id}. Errors: `{"error": {"message", "type", "param", "code"}}`, 400 for any bad request (our
413s and 422s), as OpenAI answers."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from bertserve import routes
from bertserve.errors import ClientError
from bertserve.jobs import EmbedJob, embedding_input
from bertserve.limits import BASE64_FLOAT_BYTES
from bertserve.protocols.adapter import Adapter, Handler, error_parts
from bertserve.protocols.served import ServedModels
from bertserve.schemas import NonEmpty, OpenAIModel, Text, TokenIds, _Request

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}
ERROR_CODES = {"unauthorized": "invalid_api_key", "unknown_model": "model_not_found"}


class EmbeddingsRequest(_Request):
    input: Text | NonEmpty[Text] | TokenIds | NonEmpty[TokenIds] = Field(
        ...,
        description="One text, a list of texts, one token-id array or a list of them (ids of the model's "
        "own vocabulary, as a client-side tokenizer makes them). Inputs longer than the model's limit are "
        "cut to it.",
        examples=["The pill stopped my migraine."],
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        description="Keep the first N components and L2-normalize again; meaningful only for models "
        "trained for it (Matryoshka).",
    )
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; not used.")

    def job(self) -> EmbedJob:
        texts, ids = embedding_input(self.input)
        base64_answer = self.encoding_format == "base64"
        return EmbedJob(
            model=self.model,
            texts=texts,
            ids=ids,
            normalize=True if self.dimensions is not None else None,  # shortened vectors are unit again
            dimensions=self.dimensions,
            number_bytes=BASE64_FLOAT_BYTES if base64_answer else 0,
            reply={"base64": base64_answer},
        )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its base64 float32 bytes.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    version: str
    usage: EmbeddingUsage


def embeddings_body(model, prepared, rows) -> dict:
    """The vectors (float32 rows) as OpenAI's list of embeddings, with the tokens read as usage."""
    as_base64 = prepared.options.reply.get("base64", False)
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(row.tobytes()).decode() if as_base64 else row,
        }
        for index, row in enumerate(rows)
    ]
    usage = {"prompt_tokens": prepared.tokens, "total_tokens": prepared.tokens}
    return {"object": "list", "data": data, "model": model.name, "version": model.version, "usage": usage}


def reshape(status: int, body: dict) -> tuple[int, dict]:
    parts = error_parts(body)
    if parts is None:
        return status, body
    message, code, details = parts
    if status in (413, 422):
        status = 400
    param = None
    if isinstance(details, list) and details:
        param = ".".join(str(p) for p in details[0].get("loc", ()) if p != "body") or None
    error = {
        "message": message,
        "type": ERROR_TYPES.get(status, "server_error"),
        "param": param,
        "code": ERROR_CODES.get(code, code) or None,
    }
    if "request_id" in body["error"]:  # OpenAI's clients ignore it; our logs find the request by it
        error["request_id"] = body["error"]["request_id"]
    return status, {"error": error}


def install_routes(app: FastAPI, served: ServedModels) -> None:
    """The routes answered here, from the store: GET /v1/models/{id}."""

    @app.get(routes.OPENAI_MODEL, tags=["openai"])
    def retrieve_model(model_id: str) -> OpenAIModel:
        """OpenAI's `client.models.retrieve(id)`: one entry of GET /v1/models' `data`."""
        store = served.store
        manifests = store.manifests(model_id) if model_id in store.models() else []
        if not manifests:  # a folder with no version or no readable manifest is no model
            raise ClientError(404, f"model {model_id!r} is not in the store", "unknown_model").to_http()
        created = int(datetime.fromisoformat(manifests[-1].created_at).timestamp())
        return OpenAIModel(id=model_id, created=created)


ADAPTER = Adapter(
    "openai",
    {routes.OPENAI_EMBEDDINGS: Handler(EmbeddingsRequest, EmbeddingsResponse, embeddings_body)},
    reshape,
)
