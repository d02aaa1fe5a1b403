"""The HTTP contract (api.md v1) as pydantic models: they validate requests and generate /docs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field

from bertserve.jobs import ClassifyJob, EmbedJob


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON allows "\\ud800"; no tokenizer (nor UTF-8 JSON) can take it
        raise ValueError(f"text holds a lone surrogate at character {exc.start}: not valid Unicode") from exc
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text must not be empty or only whitespace")
    return _unicode(text)


T = TypeVar("T")
# The lists of a request stop validating at their first wrong item: listing each wrong item of a body of
# 500,000 cost the event loop seconds, and the answer hundreds of megabytes. Every list of a request is one.
Items = Annotated[list[T], Field(fail_fast=True)]
NonEmpty = Annotated[list[T], Field(min_length=1, fail_fast=True)]

Text = Annotated[str, AfterValidator(_not_blank)]
TokenIds = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(
        min_length=1,
        fail_fast=True,
        description="Token ids of the model's own vocabulary (special tokens are added).",
    ),
]
TextPair = Annotated[tuple[Text, Text], Field(description="A sentence pair: [CLS] a [SEP] b [SEP].")]
ClassifyInput = Text | TextPair


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, AfterValidator(_unicode)] | None = Field(
        None,
        description="'name', 'name@version' or 'name:alias'; absent: the server's default for this task.",
        examples=["sentiment", "sentiment@2", "sentiment:production"],
    )

    def job(self):
        """What the task API queues for this request (api/base.py): the request itself, unless its route's
        protocol asks in other words (its adapter's schema then makes the task's job, jobs.py)."""
        return self


class ClassifyRequest(_Request):
    inputs: Text | NonEmpty[ClassifyInput] = Field(
        ...,
        description="One text, a list of texts, or a list of [text_a, text_b] pairs.",
        examples=["I took the pill and my headache went away."],
    )
    top_k: int | None = Field(
        None, ge=1, description="Only the k best labels; null: every label, best first."
    )
    truncate: bool = Field(True, description="Cut inputs longer than the model's limit; false: 422 instead.")

    def as_list(self) -> list[str | tuple[str, str]]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)

    def job(self) -> ClassifyJob:
        return ClassifyJob(model=self.model, inputs=self.as_list(), top_k=self.top_k, truncate=self.truncate)


class FillMaskRequest(_Request):
    inputs: Text | NonEmpty[Text] = Field(
        ...,
        description="Text(s) holding one or more mask tokens.",
        examples=["The capital of France is [MASK]."],
    )
    top_k: int = Field(5, ge=1, le=100, description="Candidates per mask, best first.")
    targets: NonEmpty[Text] | None = Field(
        None, description="Restrict candidates to these words (each one vocabulary token)."
    )
    truncate: bool = Field(True, description="Cut inputs longer than the model's limit; false: 422 instead.")

    def as_list(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    version: str
    predictions: list[list[LabelScore]] = Field(description="One list per input, in input order, best first.")


class MaskCandidate(BaseModel):
    token: int
    token_str: str
    score: float
    sequence: str


class FillMaskResponse(BaseModel):
    model: str
    version: str
    predictions: list[list[list[MaskCandidate]]] = Field(
        description="Nesting: input -> mask (left to right) -> candidate (best first)."
    )


class ModelVersionInfo(BaseModel):
    version: str
    served: bool
    backend: str | None = None
    device: str | None = Field(
        None, description="Where the served version runs: cpu, cuda:N (several: comma-joined)."
    )
    encoder: str | None = None
    base_model: str | None = None
    labels: list[str] | None = None
    problem_type: str | None = None
    max_length: int | None = None
    pooling: str | None = Field(None, description="Embedding models: how token vectors become one vector.")
    normalize: bool | None = Field(None, description="Embedding models: vectors scaled to unit length.")
    dimensions: int | None = Field(None, description="Embedding models: length of a vector.")
    metrics: dict[str, Any] = {}
    below_baseline: bool | None = Field(
        None,
        description="True: on its holdout (metrics.holdout) the version is less accurate than always "
        "answering the most frequent label, and promotion refuses it. None: no holdout recorded.",
    )
    created_at: str | None = None
    problem: str | None = Field(
        None,
        description="Why the version cannot be served at all (its manifest.json does not read); "
        "`bertserve store verify` names the same. None for every readable version.",
    )


class ModelInfo(BaseModel):
    name: str
    task: Literal["classification", "fill-mask", "embedding", "rerank"]
    versions: list[ModelVersionInfo]
    aliases: dict[str, str]
    default_version: str | None = Field(description="The version a request naming only the model gets.")
    default_for: list[str] = Field(description="Endpoints using this model when the request names none.")


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time its default version was published.")
    owned_by: str = "bertserve"


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    object: Literal["list"] = Field("list", description="OpenAI's list shape, beside `models`.")

    @computed_field(description="OpenAI's model list (`client.models.list()`): one entry per model name.")
    @property
    def data(self) -> list[OpenAIModel]:
        return [OpenAIModel(id=model.name, created=_published(model)) for model in self.models]


def _published(model: ModelInfo) -> int:
    default = next((v for v in model.versions if v.version == model.default_version), None)
    stamp = (default or model.versions[-1]).created_at if model.versions else None
    try:
        return int(datetime.fromisoformat(stamp).timestamp()) if stamp else 0
    except ValueError:
        return 0


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. unknown_model (docs/api.md#errors).")
    message: str = Field(description="What went wrong, for people; its wording may change.")
    request_id: str | None = Field(
        None, description="The response's X-Request-ID, also in the access log line of the request."
    )
    details: list[dict[str, Any]] | None = Field(
        None, description="422 invalid_request only: each schema violation's loc, msg and type."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- POST /v1/explain ------------------------------------------------------------------------------------


class ExplainRequest(_Request):
    inputs: ClassifyInput = Field(
        ...,
        description="One text, or one [text_a, text_b] pair.",
        examples=["It made my headaches worse"],
    )
    target: Annotated[str, AfterValidator(_unicode)] | None = Field(
        None, description="The label to explain; null: the predicted one."
    )
    steps: int = Field(32, ge=1, le=256, description="Integrated-gradients steps (Gauss-Legendre points).")
    attention: bool = Field(
        False, description="Also answer attention probabilities [layer][head][query][key]."
    )
    truncate: bool = Field(
        False, description="Cut an input longer than the model's limit; false: 422 instead (the default)."
    )

    def as_list(self) -> list[str | tuple[str, str]]:
        return [self.inputs]


class Explanation(BaseModel):
    label: str
    score: float = Field(description="The label's probability (softmax; sigmoid for multi-label models).")
    logit: float
    baseline_logit: float = Field(description="The label's logit when every token but [CLS]/[SEP] is [PAD].")
    tokens: list[str] = Field(description="As the tokenizer shows them: word pieces keep their '##' prefix.")
    word_ids: list[int | None] | None = Field(
        description="Per token, the index of the word it belongs to within its text (null: [CLS], [SEP]); "
        "null when the model's tokenizer cannot tell."
    )
    attributions: list[float] = Field(description="Per token: its share of logit - baseline_logit.")
    convergence_delta: float = Field(description="sum(attributions) - (logit - baseline_logit).")
    attention: list[list[list[list[float]]]] | None = Field(
        None, description="[layer][head][query][key] attention probabilities, when asked for."
    )


class ExplainResponse(BaseModel):
    model: str
    version: str
    explanations: list[Explanation] = Field(description="One explanation (of the input, for the target).")


# ---- POST /v1/embed (TEI's shape; OpenAI's /v1/embeddings is protocols/openai.py's) --------------------


class EmbedRequest(_Request):
    inputs: Text | NonEmpty[Text] = Field(
        ..., description="One text or a list of texts.", examples=["The pill stopped my migraine."]
    )
    normalize: bool = Field(True, description="L2-normalize each vector; false: the pooled vector as is.")
    truncate: bool = Field(True, description="Cut inputs longer than the model's limit; false: 422 instead.")

    def job(self) -> EmbedJob:
        texts = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)
        return EmbedJob(model=self.model, texts=texts, normalize=self.normalize, truncate=self.truncate)
