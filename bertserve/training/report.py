"""Evaluation metrics (scikit-learn's definitions) and the PNG reports stored beside a version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)


def _per_class(labels: list[str], y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, float]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=None if y_true.ndim > 1 else list(range(len(labels))), zero_division=0
    )
    return {
        label: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def classification_metrics(labels: list[str], y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Single-label: class indices; multi-label: 0/1 indicator matrices (subset accuracy, micro/macro F1)."""
    metrics = {
        "n": len(y_true),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
    }
    if y_true.ndim > 1:
        metrics["micro_f1"] = round(float(f1_score(y_true, y_pred, average="micro", zero_division=0)), 4)
    metrics["per_class"] = _per_class(labels, y_true, y_pred)
    return metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(labels: list[str], y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str) -> None:
    """One matrix for single-label; one 2x2 matrix per label for multi-label."""
    plt = _pyplot()
    if y_true.ndim > 1:
        matrices = multilabel_confusion_matrix(y_true, y_pred)
        panels = [(label, matrices[i], ["no", "yes"]) for i, label in enumerate(labels)]
    else:
        panels = [(title, confusion_matrix(y_true, y_pred, labels=list(range(len(labels)))), labels)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (name, matrix, ticks) in zip(axes[0], panels, strict=True):
        ax.imshow(matrix, cmap="Blues")
        for (row, col), value in np.ndenumerate(matrix):
            color = "white" if value > matrix.max() / 2 else "black"
            ax.text(col, row, str(value), ha="center", va="center", color=color)
        ax.set_xticks(range(len(ticks)), ticks, rotation=30)
        ax.set_yticks(range(len(ticks)), ticks)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curve(
    steps: list[int],
    losses: list[float],
    eval_steps: list[int],
    eval_values: list[float],
    metric: str,
    path: Path,
) -> None:
    """Training loss per step (smoothed) and the eval metric at each evaluation."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    other = ax.twinx()
    other.plot(eval_steps, eval_values, "o-", color="tab:orange", label=f"eval {metric}")
    other.set_ylabel(f"eval {metric}")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
