"""manifest.json: what a version is, how it was made, how good it is, and the hash of every file in it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
CHUNK = 1 << 20
# Each task and the transformers Auto class its weights load with (named, so the store needs no torch)
TASK_MODEL_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "fill-mask": "AutoModelForMaskedLM",
    "embedding": "AutoModel",
    # a cross-encoder: a sequence classifier with one output, scoring (query, document) pairs
    "rerank": "AutoModelForSequenceClassification",
}


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    """The contract of model-store.md; unknown fields are kept so newer tools can add some."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    task: Literal["classification", "fill-mask", "embedding", "rerank"]
    problem_type: Literal["single_label", "multi_label"] | None = None
    labels: list[str] = Field(default_factory=list)
    base_model: str | None = None
    encoder: Literal["frozen", "fine-tuned"] | None = None
    max_length: int = 512
    # embedding: how token states become one vector (store/embedding.py, runtime/embed.py)
    pooling: Literal["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"] | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    pooling_source: str | None = None
    training: dict = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    created_by: str = ""

    def dump(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(folder: Path) -> dict[str, FileEntry]:
    """Every file below `folder` except the manifest itself, by relative POSIX path."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != MANIFEST_NAME:
            entries[relative] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return entries
