"""The promotion gate's evidence: each version's recorded predictions on a holdout that training never read.

A score a checkpoint was selected on is biased upward, and on a few hundred rows small differences are
noise. So versions are compared only on the rows of a shared holdout (same sha256) that neither version's
training or selection read, with a paired bootstrap interval of the difference, and a version must beat
always answering the holdout's most frequent label. numpy only: the store is read without torch."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOLDOUT_FILE = "holdout.json"
METRICS = ("macro_f1", "accuracy")
RESAMPLES, SEED, CHUNK = 2000, 0, 100  # CHUNK resamples at a time bounds the memory: CHUNK x rows
DEFAULT_MARGIN = 0.01

LabelSet = tuple[str, ...]


def holdout_sha256(texts: Sequence[str], pairs: Sequence[str] | None, truth: Sequence[Sequence[str]]) -> str:
    """Identifies a holdout by its content (rows in order), wherever the file lies or however it was cut."""
    rows = zip(texts, pairs or [None] * len(texts), truth, strict=True)
    canonical = json.dumps([[text, pair, sorted(labels)] for text, pair, labels in rows], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Holdout:
    """One version's predictions on a holdout: label sets per row, and the rows its training read."""

    sha256: str
    truth: list[LabelSet]
    predicted: list[LabelSet]
    seen: frozenset[int]  # rows whose text was also in this version's training or selection data

    @classmethod
    def from_json(cls, data: dict) -> Holdout:
        return cls(
            data["sha256"],
            [tuple(row) for row in data["truth"]],
            [tuple(row) for row in data["predicted"]],
            frozenset(data["seen"]),
        )

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256,
            "rows": len(self.truth),
            "seen": sorted(self.seen),
            "truth": [list(row) for row in self.truth],
            "predicted": [list(row) for row in self.predicted],
        }

    def clean_rows(self, other: Holdout | None = None) -> np.ndarray:
        """Rows neither this version nor `other` read during training or selection."""
        seen = self.seen | (other.seen if other is not None else frozenset())
        return np.array([row for row in range(len(self.truth)) if row not in seen], dtype=int)

    def summary(self) -> dict:
        """The manifest's `metrics.holdout`: scores on the clean rows and the majority baseline's."""
        rows = self.clean_rows()
        truth = [self.truth[row] for row in rows]
        predicted = [self.predicted[row] for row in rows]
        majority = Counter(truth).most_common(1)[0][0] if truth else ()
        scores = _point(truth, predicted)
        baseline = _point(truth, [majority] * len(truth))
        return {
            **scores,
            "rows": len(rows),
            "rows_seen_in_training": len(self.seen),
            "sha256": self.sha256,
            "majority_baseline": {"label": "|".join(majority), **baseline},
            "below_baseline": scores["accuracy"] < baseline["accuracy"],
            "predictions": HOLDOUT_FILE,
        }


def _indicators(label_sets: Sequence[LabelSet], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(label_sets), len(labels)))
    for row, label_set in enumerate(label_sets):
        out[row, [index[label] for label in label_set]] = 1.0
    return out


def _scores(weights: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 for each row of `weights` (how often each holdout row is drawn). Macro-F1
    averages the labels that occur in the truth or the predictions, as scikit-learn does for one label."""
    exact = (truth == predicted).all(axis=1).astype(float)
    true_positive = weights @ (truth * predicted)
    occurrences = weights @ truth + weights @ predicted
    present = occurrences > 0
    f1 = np.divide(2 * true_positive, occurrences, out=np.zeros_like(occurrences), where=present)
    total = weights.sum(axis=1)
    return {
        "accuracy": weights @ exact / total,
        "macro_f1": f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1),
    }


def _point(truth: Sequence[LabelSet], predicted: Sequence[LabelSet]) -> dict[str, float]:
    if not truth:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    labels = sorted({label for row in (*truth, *predicted) for label in row})
    scores = _scores(np.ones((1, len(truth))), _indicators(truth, labels), _indicators(predicted, labels))
    return {name: round(float(value[0]), 4) for name, value in scores.items()}


@dataclass(frozen=True)
class Comparison:
    """Candidate minus current on the shared clean rows, with its paired bootstrap 95% interval."""

    metric: str
    rows: int
    excluded: int
    candidate: float
    current: float
    low: float
    high: float

    @property
    def difference(self) -> float:
        return self.candidate - self.current

    def passes(self, margin: float) -> bool:
        return self.low > -margin

    def describe(self, margin: float) -> str:
        verdict = "passes" if self.passes(margin) else "refused"
        return (
            f"{self.metric} {self.candidate:.4f} vs {self.current:.4f} on {self.rows} shared holdout rows "
            f"({self.excluded} excluded: read in training), difference {self.difference:+.4f}, 95% interval "
            f"[{self.low:+.4f}, {self.high:+.4f}] (paired bootstrap, {RESAMPLES} resamples); "
            f"{verdict}: the gate needs the lower bound above -{margin:.4f}"
        )


def compare(candidate: Holdout, current: Holdout, metric: str = "macro_f1") -> Comparison:
    """Paired bootstrap of `metric` on the rows both versions left unread: each resample draws the same
    rows for both, so the interval reflects how much the difference depends on which rows were drawn."""
    if metric not in METRICS:
        raise ValueError(f"unknown gate metric {metric!r}: use one of {', '.join(METRICS)}")
    rows = candidate.clean_rows(current)
    truth = [candidate.truth[row] for row in rows]
    mine = [candidate.predicted[row] for row in rows]
    theirs = [current.predicted[row] for row in rows]
    labels = sorted({label for row in (*truth, *mine, *theirs) for label in row})
    matrices = [_indicators(sets, labels) for sets in (truth, mine, theirs)]
    rng = np.random.default_rng(SEED)
    differences = []
    for _ in range(RESAMPLES // CHUNK):
        weights = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=CHUNK).astype(float)
        ours = _scores(weights, matrices[0], matrices[1])[metric]
        other = _scores(weights, matrices[0], matrices[2])[metric]
        differences.append(ours - other)
    low, high = np.percentile(np.concatenate(differences), [2.5, 97.5])
    return Comparison(
        metric,
        len(rows),
        len(candidate.truth) - len(rows),
        _point(truth, mine)[metric],
        _point(truth, theirs)[metric],
        round(float(low), 4),
        round(float(high), 4),
    )
