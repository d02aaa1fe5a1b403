"""The `train` and `pretrain` commands as functions: files in, one published store version out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertserve.store.manifest import Manifest
from bertserve.training.classify import ClassifierTrainer, ClassifyOptions, StepCallback
from bertserve.training.data import (
    Examples,
    load_examples,
    read_corpus,
    read_rows,
    sha256_file,
    stratified_split,
)
from bertserve.training.mlm import MaskedLMTrainer, PretrainOptions
from bertserve.training.publishing import publish_classifier, publish_masked_lm, resolve_base


@dataclass
class Columns:
    text: str = "text"
    label: str = "label"
    pair: str | None = None
    multi_label: bool = False
    delimiter: str = "|"

    def load(self, path: Path) -> Examples:
        return load_examples(path, self.text, self.label, self.pair, self.multi_label, self.delimiter)


def file_record(path: Path) -> dict:
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(Path(path))}


def train_job(
    store_root: Path,
    name: str,
    base: str,
    data: Path,
    columns: Columns,
    options: ClassifyOptions,
    eval_file: Path | None = None,
    eval_fraction: float = 0.15,
    test_file: Path | None = None,
    progress: bool = True,
    callback: StepCallback | None = None,
    created_by: str = "bertserve train",
) -> Manifest:
    """Train on `data`, early-stop on the eval file (or a stratified, seeded split of `data`),
    report on `test_file` if given, then publish. Nothing is published unless training completes."""
    checkpoint = resolve_base(base, store_root)
    examples = columns.load(data)
    record: dict = {"train": file_record(data), "columns": vars(columns).copy()}
    if eval_file is not None:
        train, evaluation = examples, columns.load(eval_file)
        record["eval"] = file_record(eval_file)
    else:
        train, evaluation = stratified_split(examples, eval_fraction, options.seed)
        record["eval"] = {"split_of": "train", "fraction": eval_fraction, "seed": options.seed}
    test = columns.load(test_file) if test_file is not None else None
    if test_file is not None:
        record["test"] = file_record(test_file)
    trainer = ClassifierTrainer(
        checkpoint.path, train, evaluation, options, multi_label=columns.multi_label, test=test
    )
    result = trainer.run(progress=progress, callback=callback)
    return publish_classifier(store_root, name, result, checkpoint, record, created_by)


def corpus_passages(paths: list[Path], text_column: str = "text") -> list[str]:
    """Plain text files give paragraphs; CSV/TSV/JSONL give one passage per row of `text_column`."""
    passages: list[str] = []
    for path in paths:
        if Path(path).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".ndjson"):
            passages += [str(row[text_column]) for row in read_rows(Path(path)) if row.get(text_column)]
        else:
            passages += read_corpus(Path(path))
    return passages


def pretrain_job(
    store_root: Path,
    name: str,
    base: str,
    passages: list[str],
    data: dict,
    options: PretrainOptions,
    progress: bool = True,
    callback: StepCallback | None = None,
    created_by: str = "bertserve pretrain",
) -> Manifest:
    """Masked-LM training on `passages`; `data` describes the corpus for the manifest."""
    checkpoint = resolve_base(base, store_root)
    trainer = MaskedLMTrainer(checkpoint.path, passages, options)
    result = trainer.run(progress=progress, callback=callback)
    return publish_masked_lm(store_root, name, result, checkpoint, data, created_by)
