"""Text Embeddings Inference's routes at the root: TEI's request fields with TEI's meaning, and the ones that
need no model run (/tokenize, /decode, /info). The routes that run a model are served by the task APIs
(api/embeddings.py, api/classify.py), whose routes() name the paths and schemas below.

POST / is TEI's and Hugging Face's InferenceClient's: the protocol middleware (protocols/middleware.py) sends
it to /similarity when `inputs` is a {source_sentence, sentences} object, to /rerank for {query, texts}, to
Hugging Face's text classification when the body holds `parameters` (InferenceClient.text_classification
always sends them), else to /embed when an embedding model is served and /predict when not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field

from bertserve import routes
from bertserve.schemas import ClassifyJob, EmbedJob, NonEmpty, Text, TokenIds, _embedding_input, _Request

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
        texts, ids = _embedding_input(self.inputs)
        return EmbedJob(
            model=self.model,
            texts=texts,
            ids=ids,
            shape="tei",
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
        texts, ids = _embedding_input(self.inputs)
        return EmbedJob(
            model=self.model,
            kind="embed_all",
            texts=texts,
            ids=ids,
            shape="tei",
            normalize=False,
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
            shape="tei",
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
            shape="tei",
            truncate=self.truncate is not False,
            truncation_direction=self.truncation_direction,
            raw_scores=self.raw_scores,
            return_documents=self.return_text,
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
            shape="tei" if single else "tei-batch",
            function="none" if self.raw_scores else None,
            truncation_direction=self.truncation_direction,
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
            shape="hf",
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
