"""Labelled and plain-text data sets read from CSV, TSV or JSONL, plus seeded stratified splits and folds."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Examples:
    """Texts (and optional second texts for pairs) with their label sets; single-label rows hold one."""

    texts: list[str]
    labels: list[list[str]]
    pairs: list[str] | None = None
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> Examples:
        return Examples(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            pairs=None if self.pairs is None else [self.pairs[i] for i in indices],
            sources=self.sources,
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(path: Path) -> list[dict]:
    """Rows as dicts; the format follows the suffix (.jsonl/.json lines, .tsv, anything else CSV)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))


def _clean(value: object) -> str:
    """Reviews in the wild carry HTML entities (&#039;) and quoting; the model should see plain text."""
    return html.unescape(str(value)).strip().strip('"').strip()


def _label_set(value: object, multi_label: bool, delimiter: str) -> list[str]:
    if isinstance(value, list):
        items = [str(item).strip() for item in value]
    elif multi_label:
        items = [item.strip() for item in str(value).split(delimiter)]
    else:
        items = [str(value).strip()]
    return [item for item in items if item]


def load_examples(
    path: Path,
    text_column: str,
    label_column: str,
    pair_column: str | None = None,
    multi_label: bool = False,
    delimiter: str = "|",
) -> Examples:
    """Read a labelled file; rows without text or (single-label) without a label are a data error."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    for column in filter(None, (text_column, label_column, pair_column)):
        if column not in rows[0]:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(rows[0])})")
    texts, pairs, labels = [], [], []
    for number, row in enumerate(rows, start=1):
        text = _clean(row[text_column])
        label_set = _label_set(row[label_column], multi_label, delimiter)
        if not text or (not multi_label and not label_set):
            raise ValueError(f"{path}: row {number} has an empty text or label")
        texts.append(text)
        labels.append(label_set)
        if pair_column:
            pairs.append(_clean(row[pair_column]))
    return Examples(texts=texts, labels=labels, pairs=pairs if pair_column else None, sources=[str(path)])


def _shuffled_label_groups(examples: Examples, seed: int) -> list[list[int]]:
    """Row indices by first label (labels in sorted order), each group shuffled by one seeded rng."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, label_set in enumerate(examples.labels):
        groups[label_set[0] if label_set else ""].append(index)
    rng = random.Random(seed)
    shuffled = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        shuffled.append(members)
    return shuffled


def stratified_split(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Hold out `fraction` of every label group (by first label) so rare classes appear in both parts."""
    held: list[int] = []
    for members in _shuffled_label_groups(examples, seed):
        take = round(len(members) * fraction)
        if len(members) > 1:
            take = min(max(take, 1), len(members) - 1)
        held.extend(members[:take])
    held_set = set(held)
    kept = [i for i in range(len(examples)) if i not in held_set]
    return examples.subset(kept), examples.subset(sorted(held))


def stratified_folds(examples: Examples, folds: int, seed: int) -> list[list[int]]:
    """Row indices of each of `folds` parts; every label group is dealt over them round-robin."""
    parts: list[list[int]] = [[] for _ in range(folds)]
    position = 0
    for members in _shuffled_label_groups(examples, seed):
        for index in members:
            parts[position % folds].append(index)
            position += 1
    return [sorted(part) for part in parts]


def read_corpus(path: Path, min_chars: int = 20) -> list[str]:
    """Plain text for MLM: one passage per non-empty paragraph (blank-line separated)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    passages = [" ".join(block.split()) for block in text.split("\n\n")]
    return [passage for passage in passages if len(passage) >= min_chars]
