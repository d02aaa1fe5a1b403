"""The HTTP-only reference for bench.overhead: what FastAPI + pydantic + uvicorn + the same tokenizer cost
per request, with no model and no engine behind them.

    uvicorn bench.http_reference:app --workers 2   (BENCH_TOKENIZER=FOLDER, the served model's tokenizer)

It parses and validates the body with pydantic, tokenizes the texts, and answers a fixed 3-label
classification in bertserve's shape: everything a classify request costs but the queue, the inference worker
and the forward pass. bertserve's distance to it is the serving engine's own cost.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel, Field
from transformers import AutoTokenizer


class ClassifyBody(BaseModel):
    inputs: str | list[str] = Field(...)
    model: str | None = None


tokenizer = AutoTokenizer.from_pretrained(os.environ["BENCH_TOKENIZER"])
ANSWER = [
    {"label": "positive", "score": 0.7},
    {"label": "neutral", "score": 0.2},
    {"label": "negative", "score": 0.1},
]
app = FastAPI()


@app.get("/health")
async def health() -> str:
    return "ok"


@app.post("/v1/classify")
async def classify(body: ClassifyBody) -> dict:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    encoded = tokenizer(texts, truncation=True)
    return {"model": "reference", "version": "1", "predictions": [ANSWER for _ in encoded["input_ids"]]}
