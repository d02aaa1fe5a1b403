"""What a task is asked and what it answers, with no protocol in it.

Every route's request becomes one of these jobs in the HTTP process (its protocol adapter's request schema
makes it: protocols/); the task APIs (api/) validate, tokenize and queue it, the inference workers compute
it, and the route's adapter writes the result in its protocol's shape. What only the writing needs (KServe's
request id, Cohere's top_n, the answer's nesting) travels in `reply`, which no task reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

Direction = Literal["left", "right"]


class ClassifyJob(BaseModel):
    """Texts (or pairs) to score with a classification model's labels, validated already by the route's
    schema."""

    model: str | None
    inputs: list[str | tuple[str, str]]
    top_k: int | None = None  # only the k best labels
    truncate: bool = True
    truncation_direction: Direction = "right"
    function: Literal["softmax", "sigmoid", "none"] | None = None  # None: the model's own
    reply: dict[str, Any] = {}

    def as_list(self) -> list[str | tuple[str, str]]:
        return self.inputs


class EmbedJob(BaseModel):
    """Texts (or token ids) to embed, compare or rank: `kind` says which."""

    model: str | None
    kind: Literal["embed", "embed_all", "similarity", "rerank"] = "embed"
    texts: list[str] = []  # to embed; similarity and rerank: the sentences / documents
    ids: list[list[int]] | None = None  # token-id inputs instead of texts
    query: str | None = None  # similarity: the source sentence; rerank: the query
    normalize: bool | None = None  # unit vectors; None: as the model normalizes
    dimensions: int | None = None  # keep the first N components (normalized again when normalizing)
    truncate: bool = True
    truncation_direction: Direction = "right"
    prompt_name: str | None = None
    raw_scores: bool = False  # a cross-encoder's logits instead of their sigmoid
    number_bytes: float = 0  # an answer's bytes per number (limits.py); 0: as JSON writes a float
    reply: dict[str, Any] = {}

    def as_list(self) -> list[str]:
        """The texts the limits apply to (token ids are counted as tokens)."""
        return ([self.query] if self.query is not None else []) + self.texts


def embedding_input(value: str | list[str] | list[int] | list[list[int]]) -> tuple[list[str], list | None]:
    """(texts, token ids): OpenAI's and TEI's inputs are texts or token-id arrays, one or many."""
    if isinstance(value, str):
        return [value], None
    if all(isinstance(item, int) for item in value):
        return [], [list(value)]
    if all(isinstance(item, list) for item in value):
        return [], [list(item) for item in value]
    return list(value), None


@dataclass
class Ranking:
    """Documents scored against a query: `order` their indices best first (ties keep input order)."""

    scores: list[float]
    order: list[int]

    @classmethod
    def of(cls, scores: list[float]) -> Ranking:
        return cls(scores, sorted(range(len(scores)), key=lambda i: -scores[i]))
