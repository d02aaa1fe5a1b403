"""Text Embeddings Inference's routes at the root: TEI's request fields with TEI's meaning, TEI's answers and
TEI's error shape, and the routes that need no model run (/tokenize, /decode, /info), answered here. The
routes that run a model are queued for the task APIs (api/embeddings.py, api/classify.py), by the handlers
below.

POST / is TEI's and Hugging Face's InferenceClient's: the protocol middleware (protocols/middleware.py) sends
it to /similarity when `inputs` is a {source_sentence, sentences} object, to /rerank for {query, texts}, to
Hugging Face's text classification when the body holds `parameters` (InferenceClient.text_classification
always sends them), else to /embed when an embedding model is served and /predict when not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import FastAPI
from pydantic import BaseModel, BeforeValidator, Field
from starlette.responses import JSONResponse, Response

from bertserve import __version__, routes
from bertserve.config import Settings
from bertserve.errors import QUEUE_FULL, ClientError
from bertserve.jobs import ClassifyJob, EmbedJob, embedding_input
from bertserve.limits import check_input_chars, check_input_count, check_inputs, render_bounded
from bertserve.protocols.adapter import Adapter, Handler, bare, error_parts
from bertserve.protocols.served import ServedModels
from bertserve.runtime.encoding import TextEncoder
from bertserve.schemas import NonEmpty, Text, TokenIds, _Request

ROOT_PATH, EMBED_PATH, EMBED_ALL_PATH = routes.TEI_ROOT, routes.TEI_EMBED, routes.TEI_EMBED_ALL
SIMILARITY_PATH, PREDICT_PATH, RERANK_PATH = routes.TEI_SIMILARITY, routes.TEI_PREDICT, routes.TEI_RERANK
TOKENIZE_PATH, DECODE_PATH, INFO_PATH = routes.TEI_TOKENIZE, routes.TEI_DECODE, routes.TEI_INFO
HF_CLASSIFY_PATH = routes.HF_CLASSIFY  # not in /docs: the protocol layer routes POST / there


def _lower(value):
    return value.lower() if isinstance(value, str) else value


# TEI's OpenAPI writes Left / Right, Hugging Face's client left / right
Direction = Annotated[Literal["left", "right"], BeforeValidator(_lower)]
Truncate = Field(
    None, description="Cut inputs longer than the model's limit; null: yes (this server's default)."
)
TruncationDirection = Field("right", description="The side a too-long input loses tokens from.")
PromptName = Field(
    None,
    description="A prompt of the model's sentence-transformers config, put before every text; null: its "
    "default_prompt_name, if any.",
)
EmbeddingInputs = Field(
    ...,
    description="One text, a list of texts, one token-id array or a list of them.",
    examples=["The pill stopped my migraine."],
)
TextsOrIds = Text | NonEmpty[Text] | TokenIds | NonEmpty[TokenIds]


class _TeiRequest(_Request):
    truncate: bool | None = Truncate
    truncation_direction: Direction = TruncationDirection


class TeiEmbedRequest(_TeiRequest):
    """POST /embed (and Hugging Face's feature_extraction, which posts it to /)."""

    inputs: TextsOrIds = EmbeddingInputs
    normalize: bool = Field(True, description="L2-normalize each vector; false: the pooled vector as is.")
    prompt_name: str | None = PromptName
    dimensions: int | None = Field(
        None,
        ge=1,
        description="Keep the first N components (Matryoshka models), normalized again if normalize.",
    )

    def job(self) -> EmbedJob:
        texts, ids = embedding_input(self.inputs)
        return EmbedJob(
            model=self.model,
            texts=texts,
            ids=ids,
            normalize=self.normalize,
            truncate=self.truncate is not False,
            truncation_direction=self.truncation_direction,
            prompt_name=self.prompt_name,
            dimensions=self.dimensions,
        )


class TeiEmbedAllRequest(_TeiRequest):
    """POST /embed_all: every token's vector, unpooled."""

    inputs: TextsOrIds = EmbeddingInputs
    prompt_name: str | None = PromptName

    def job(self) -> EmbedJob:
        texts, ids = embedding_input(self.inputs)
        return EmbedJob(
            model=self.model,
            kind="embed_all",
            texts=texts,
            ids=ids,
            truncate=self.truncate is not False,
            truncation_direction=self.truncation_direction,
            prompt_name=self.prompt_name,
        )


class SimilarityInputs(BaseModel):
    source_sentence: Text
    sentences: NonEmpty[Text]


class SimilarityParameters(BaseModel):
    model_config = {"extra": "forbid"}

    truncate: bool | None = Truncate
    truncation_direction: Direction = TruncationDirection
    prompt_name: str | None = PromptName


class SimilarityRequest(_Request):
    """POST /similarity (and Hugging Face's sentence_similarity, posted to /): cosine of each sentence's
    embedding to the source sentence's."""

    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = None

    def job(self) -> EmbedJob:
        parameters = self.parameters or SimilarityParameters()
        return EmbedJob(
            model=self.model,
            kind="similarity",
            query=self.inputs.source_sentence,
            texts=self.inputs.sentences,
            truncate=parameters.truncate is not False,
            truncation_direction=parameters.truncation_direction,
            prompt_name=parameters.prompt_name,
        )


class TeiRerankRequest(_TeiRequest):
    """POST /rerank: every text scored against the query, best first."""

    query: Text
    texts: NonEmpty[Text]
    raw_scores: bool = Field(False, description="A cross-encoder's logits instead of their sigmoid.")
    return_text: bool = Field(False, description="Answer each text beside its score.")

    def job(self) -> EmbedJob:
        return EmbedJob(
            model=self.model,
            kind="rerank",
            query=self.query,
            texts=self.texts,
            truncate=self.truncate is not False,
            truncation_direction=self.truncation_direction,
            raw_scores=self.raw_scores,
            reply={"return_text": self.return_text},
        )


class RankedText(BaseModel):
    index: int
    score: float
    text: str | None = None


Pair = Annotated[tuple[Text, Text], Field(description="A sentence pair: [CLS] a [SEP] b [SEP].")]


def _pair_first(value):
    """TEI reads a list of exactly two strings as one sentence pair before it reads it as a batch."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(item, str) for item in value):
        return tuple(value)
    return value


class PredictRequest(_TeiRequest):
    """POST /predict. As TEI reads it: a string or a [a, b] pair is one input (answered with one ranking);
    a list of them is a batch (a list of rankings); two strings are a pair, not a batch of two."""

    inputs: Annotated[Text | Pair | NonEmpty[Text | Pair], BeforeValidator(_pair_first)] = Field(
        ..., examples=["I took the pill and my headache went away."]
    )
    raw_scores: bool = Field(False, description="Logits instead of softmax (sigmoid) scores.")

    def job(self) -> ClassifyJob:
        single = isinstance(self.inputs, str | tuple)
        return ClassifyJob(
            model=self.model,
            inputs=[self.inputs] if single else list(self.inputs),
            truncate=self.truncate is not False,
            function="none" if self.raw_scores else None,
            truncation_direction=self.truncation_direction,
            reply={"single": single},
        )


class Prediction(BaseModel):
    score: float
    label: str


PredictResponse = list[Prediction] | list[list[Prediction]]


class HfClassifyParameters(BaseModel):
    model_config = {"extra": "forbid"}

    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None
    top_k: int | None = Field(None, ge=1)


class HfClassifyRequest(_Request):
    """Hugging Face's text_classification body (posted to /): `parameters` always present."""

    inputs: Text | NonEmpty[Text]
    parameters: HfClassifyParameters

    def job(self) -> ClassifyJob:
        return ClassifyJob(
            model=self.model,
            inputs=[self.inputs] if isinstance(self.inputs, str) else list(self.inputs),
            top_k=self.parameters.top_k,
            function=self.parameters.function_to_apply,
        )


class TokenizeRequest(_Request):
    inputs: Text | NonEmpty[Text]
    add_special_tokens: bool = True
    prompt_name: str | None = PromptName


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class DecodeRequest(_Request):
    ids: TokenIds | NonEmpty[TokenIds]
    skip_special_tokens: bool = True


class Info(BaseModel):
    """GET /info, TEI's fields (of the model POST / answers with)."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None


def root_target(body: object, tasks: set[str]) -> str | None:
    """Which route POST / means for this JSON body, given the tasks the server serves (see the module
    docstring); None when no route fits (the POST / route then answers why)."""
    if not isinstance(body, dict):
        return None
    inputs = body.get("inputs")
    embeds = "embedding" in tasks
    if isinstance(inputs, dict) and embeds:
        return SIMILARITY_PATH
    if "query" in body and "texts" in body and (embeds or "rerank" in tasks):
        return RERANK_PATH
    if "parameters" in body and "classification" in tasks:
        return HF_CLASSIFY_PATH
    if embeds:
        return EMBED_PATH
    return PREDICT_PATH if "classification" in tasks else None


# ---- answers: the task's results in TEI's shape -----------------------------------------------------------


def ranked_texts(model, prepared, ranking) -> list[dict]:
    """/rerank: every text's {index, score, text?}, best first."""
    job: EmbedJob = prepared.options
    with_text = job.reply.get("return_text", False)
    return [
        {"index": i, "score": ranking.scores[i], **({"text": job.texts[i]} if with_text else {})}
        for i in ranking.order
    ]


def _predictions(rankings: list[list[dict]]) -> list[list[dict]]:
    return [[{"score": item["score"], "label": item["label"]} for item in ranking] for ranking in rankings]


def predictions(model, prepared, rankings) -> list:
    """/predict: one input (a text or a pair) is answered with its ranking, a batch with a list of them."""
    answered = _predictions(rankings)
    return answered[0] if prepared.options.reply.get("single", False) else answered


def hf_predictions(model, prepared, rankings) -> list:
    """Hugging Face's text classification: always a ranking per input."""
    return _predictions(rankings)


# ---- errors: TEI's {"error", "error_type"} and TEI's statuses, by our error code ----------------------


def reshape(status: int, body: dict) -> tuple[int, dict]:
    """413 for inputs over the limits, 422 for the rest of what a client sent wrong, 424 for a model
    failure, 429 when the queue is full."""
    parts = error_parts(body)
    if parts is None:
        return status, body
    message, code, _ = parts
    if status == 503 and code == QUEUE_FULL:
        return 429, {"error": message, "error_type": "overloaded"}
    if status == 503:
        return 503, {"error": message, "error_type": "unhealthy"}
    if status == 413 or code == "input_too_long":
        return 413, {"error": message, "error_type": "validation"}
    if status in (404, 422):
        kind = "tokenizer" if code in ("bad_token_id", "input_too_long") else "validation"
        return 422, {"error": message, "error_type": kind}
    if status >= 500 and status != 504:
        return 424, {"error": message, "error_type": "backend"}
    return status, {"error": message, "error_type": "empty" if status == 400 else "validation"}


# ---- the routes answered here, with no model run -------------------------------------------------------


def install_routes(app: FastAPI, settings: Settings, served: ServedModels) -> None:
    encoders: dict[tuple[str, str], TextEncoder] = {}  # /tokenize and /decode run here, in a thread

    def encoder(ref: str | None) -> TextEncoder:
        ref = ref or served.root_ref()
        if ref is None:
            raise ClientError(404, "no model is served here", "unknown_model")
        key = served.resolve(ref)  # 404 / 422 for what is not served
        if key not in encoders:
            try:
                encoders[key] = TextEncoder(served.store.read_manifest(*key), served.store.version_dir(*key))
            except Exception as exc:  # a damaged version: the workers refuse it too
                raise ClientError(424, f"the tokenizer of {ref} cannot be read: {exc}", "backend") from None
        return encoders[key]

    @app.post(ROOT_PATH, tags=["tei"], response_model=None)
    def root(
        request: TeiEmbedRequest | SimilarityRequest | TeiRerankRequest | HfClassifyRequest | PredictRequest,
    ) -> JSONResponse:
        """TEI's and Hugging Face InferenceClient's route: /embed, /similarity, /rerank, text classification
        or /predict, by the body (see root_target). Reaching this handler means no served model fits."""
        raise ClientError(422, "no model served here answers this request", "no_model").to_http()

    # /tokenize and /decode run in a thread and answer the bytes orjson rendered there: FastAPI would validate
    # and encode the answer again, seconds for a large one, holding the event loop (and /live) meanwhile.
    @app.post(TOKENIZE_PATH, tags=["tei"], response_model=list[list[SimpleToken]])
    def tokenize(request: TokenizeRequest) -> Response:
        """The default model's (or `model`'s) tokens, with character spans (TEI's /tokenize)."""
        try:
            texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
            check_inputs(settings, texts)
            found = encoder(request.model)
            prompt = found.prompt(request.prompt_name)
            tokens = (found.tokens(prompt + text, request.add_special_tokens) for text in texts)
            return Response(render_bounded(tokens, settings, "tokens"), media_type="application/json")
        except ClientError as exc:
            raise exc.to_http() from None

    @app.post(DECODE_PATH, tags=["tei"], response_model=list[str])
    def decode(request: DecodeRequest) -> Response:
        """Token ids back to text (TEI's /decode); each text is an input, as long as the other routes take."""
        try:
            rows = request.ids if isinstance(request.ids[0], list) else [request.ids]
            check_input_count(len(rows), settings.max_inputs)
            found = encoder(request.model)

            def texts() -> Iterator[str]:
                for index, ids in enumerate(rows):
                    text = found.decode(ids, request.skip_special_tokens)
                    check_input_chars(settings, index, text)
                    yield text

            return Response(render_bounded(texts(), settings, "texts"), media_type="application/json")
        except ClientError as exc:
            raise exc.to_http() from None

    @app.get(INFO_PATH, tags=["tei"])
    def info() -> Info:
        """TEI's /info, of the model POST / answers with."""
        try:
            ref = served.root_ref()
            if ref is None:
                raise ClientError(404, "no model is served here", "unknown_model")
            manifest = served.manifest(ref)
        except ClientError as exc:
            raise exc.to_http() from None
        if manifest.task == "embedding":
            model_type: dict = {"embedding": {"pooling": manifest.pooling}}
        else:
            labels = dict(enumerate(manifest.labels or ["LABEL_0"]))
            kind = "reranker" if manifest.task == "rerank" else "classifier"
            model_type = {kind: {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}}
        return Info(
            model_id=f"{manifest.name}@{manifest.version}",
            model_sha=None,
            model_dtype=settings.backend_for(manifest.name),
            model_type=model_type,
            max_concurrent_requests=settings.max_queue,
            max_input_length=manifest.max_length,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_size,
            max_client_batch_size=settings.max_embedding_inputs,
            auto_truncate=True,
            tokenization_workers=settings.api_servers,
            version=__version__,
        )


ADAPTER = Adapter(
    "tei",
    {
        EMBED_PATH: Handler(TeiEmbedRequest, list[list[float]], bare),
        EMBED_ALL_PATH: Handler(TeiEmbedAllRequest, list[list[list[float]]], bare),
        SIMILARITY_PATH: Handler(SimilarityRequest, list[float], bare),
        RERANK_PATH: Handler(TeiRerankRequest, list[RankedText], ranked_texts),
        PREDICT_PATH: Handler(PredictRequest, PredictResponse, predictions),
        HF_CLASSIFY_PATH: Handler(HfClassifyRequest, list[PredictResponse], hf_predictions),
    },
    reshape,
)
