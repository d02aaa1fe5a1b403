"""What plain transformers answers for one input on its own (no padding, no batching): the reference the
served answers are compared with."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline


def close(got: float, expected: float) -> bool:
    """Within 1e-5, and within 0.1% for the tiny scores of unlikely target words."""
    return got == pytest.approx(expected, abs=1e-5) and got == pytest.approx(expected, rel=1e-3, abs=1e-9)


@cache
def classifier(folder: str):
    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder)


def transformers_scores(folder: str, item: str | list[str], multi_label: bool = False) -> dict[str, float]:
    """What transformers answers for one input (a text or a pair) on its own: no padding."""
    tokenizer, model = classifier(folder)
    encoded = tokenizer(*([item] if isinstance(item, str) else item), return_tensors="pt")
    with torch.inference_mode():
        logits = model.eval()(**encoded).logits[0]
    scores = logits.sigmoid() if multi_label else logits.softmax(-1)
    return {model.config.id2label[i]: float(s) for i, s in enumerate(scores)}


def as_scores(ranking: list[dict]) -> dict[str, float]:
    return {item["label"]: item["score"] for item in ranking}


def assert_same_scores(got: dict[str, float], expected: dict[str, float], what) -> None:
    assert got.keys() == expected.keys(), what
    for label, score in expected.items():
        assert close(got[label], score), (what, label, got[label], score)


@cache
def fill_mask_pipeline(folder: str):
    return pipeline("fill-mask", model=folder, tokenizer=folder, device="cpu")


def transformers_fill(folder: str, text: str, top_k: int, targets: list[str] | None) -> list[list[dict]]:
    """The fill-mask pipeline's candidates for each mask of `text`, alone."""
    found = fill_mask_pipeline(folder)(text, top_k=top_k, **({"targets": targets} if targets else {}))
    return [found] if text.count("[MASK]") == 1 else found
