"""From a finished training run to a store version: resolve the base, write the folder, publish atomically.

Training writes into a private temporary folder; only a completed run reaches `publish_version`, so an
interrupted or failed run (Ctrl-C included) leaves the store exactly as it was."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bertserve.store.layout import ModelStore
from bertserve.store.manifest import Manifest
from bertserve.store.publish import publish_version
from bertserve.store.resolve import resolve
from bertserve.training.classify import ClassifyOptions, TrainResult, write_version_folder
from bertserve.training.mlm import PretrainResult, write_mlm_folder


@dataclass(frozen=True)
class Base:
    """A checkpoint folder to start from, and how the manifest names it."""

    path: Path
    description: str


def resolve_base(base: str, store_root: Path) -> Base:
    """A local Hugging Face folder (has config.json) wins; otherwise a store ref: name, name@V, name:alias."""
    candidate = Path(base).expanduser()
    if (candidate / "config.json").is_file():
        return Base(candidate.resolve(), str(candidate.resolve()))
    store = ModelStore(store_root)
    try:
        name, version = resolve(store, base)
    except Exception as error:  # the store's own error names what is missing
        raise ValueError(
            f"base {base!r} is neither a folder with config.json nor a model in the store: {error}"
        ) from error
    return Base(Path(store.version_dir(name, version)), f"{name}@{version}")


def _publish(
    store_root: Path,
    name: str,
    write: Callable[[Path], list[str]],
    fields: dict,
    created_by: str,
) -> Manifest:
    store = ModelStore(store_root)
    with tempfile.TemporaryDirectory(prefix=f"bertserve-{name}-") as scratch:
        folder = Path(scratch) / "version"
        write(folder)
        return publish_version(store, name, folder, fields, created_by=created_by)


def publish_classifier(
    store_root: Path,
    name: str,
    result: TrainResult,
    base: Base,
    data: dict,
    created_by: str,
    training_extra: dict | None = None,
) -> Manifest:
    """The manifest carries the eval metrics and, with a test split, `holdout`: the scores the promotion gate
    compares, on the rows training never read (their predictions are stored in the version folder)."""
    metrics = dict(result.eval_metrics)
    metrics["split"] = "eval"
    if result.holdout is not None:
        metrics["holdout"] = result.holdout.summary()
    fields = {
        "task": "classification",
        "problem_type": "multi_label" if result.multi_label else "single_label",
        "labels": result.labels,
        "base_model": base.description,
        "encoder": "frozen" if result.options.encoder == "frozen" else "fine-tuned",
        "max_length": result.options.max_length,
        "training": {
            "data": data,
            "data_use": _data_use(result.options, result.holdout is not None),
            **result.summary,
            **(training_extra or {}),
        },
        "metrics": metrics,
    }
    return _publish(
        store_root, name, lambda folder: write_version_folder(result, base.path, folder), fields, created_by
    )


def _data_use(options: ClassifyOptions, has_holdout: bool) -> dict[str, str]:
    """What each split of `training.data` was read for: the gate trusts only data that no step chose with."""
    use = {"train": "weights"}
    if options.select_on == "last":  # every evaluation "improves": neither selection nor early stopping
        use["eval"] = "reported only (the last weights are kept)"
    else:
        stopping = ", early stopping" if options.patience else ""
        use["eval"] = f"checkpoint selection (best {options.select_on}){stopping}"
    if has_holdout:
        use["test"] = "holdout: reported and compared by the promotion gate, never read by training"
    return use


def publish_masked_lm(
    store_root: Path,
    name: str,
    result: PretrainResult,
    base: Base,
    data: dict,
    created_by: str,
    training_extra: dict | None = None,
) -> Manifest:
    fields = {
        "task": "fill-mask",
        "problem_type": None,
        "labels": [],
        "base_model": base.description,
        "encoder": "fine-tuned" if result.options.train_layers != 0 else "frozen",
        "max_length": result.model.config.max_position_embeddings,  # trained on shorter packed rows
        "training": {"data": data, **result.summary, **(training_extra or {})},
        "metrics": result.metrics,
    }
    return _publish(
        store_root, name, lambda folder: write_mlm_folder(result, base.path, folder), fields, created_by
    )
