"""Compare fine-tuning recipes by stratified k-fold cross-validation on one labelled set (by default
drugsComTrain; never the test file).

The bootstrap's validation split has 90 reviews (8 neutral): one review moves macro-F1 by points, too coarse
to rank recipes. Here every recipe runs the bootstrap's procedure inside each fold — train with an
inner validation split (where `select_on` may choose the checkpoint), score on the held-out fold — and the
held-out predictions of all folds are pooled, so each recipe is scored on all 600 reviews, fold by fold
against the same splits.

    .venv/bin/python scripts/compare_recipes.py --recipe base='{}' --recipe ema='{"ema_decay": 0.98}'
    .venv/bin/python scripts/compare_recipes.py --recipe best='{"select_on": "macro_f1"}' --recipe last='{}'

A recipe is a JSON object of ClassifyOptions fields over the bootstrap's fine-tune defaults. ~3.5 min per
fold and recipe on 2 cores with native bf16. `--train-seeds 42,43,44` repeats each recipe's cross-validation
with other training seeds (initialisation, data order, dropout), which move the pooled numbers by points
on 600 reviews; the report gives each run and the mean and range. `--train-fraction 0.5` trains each fold
on a stratified half of its training part: a point of the learning curve. Writes the numbers to --output.
`--base` and `--data` (with `--text-column` / `--label-column`) compare recipes for another model or data set.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertserve.training import assets
from bertserve.training.bootstrap import BUDGETS, SPLIT_SEED, VALIDATION_FRACTION
from bertserve.training.classify import ClassifierTrainer, ClassifyOptions
from bertserve.training.data import Examples, load_examples, stratified_folds, stratified_split
from bertserve.training.report import classification_metrics


def cross_validate(
    base: Path,
    examples: Examples,
    labels: list[str],
    parts: list[list[int]],
    split_seed: int,
    options: ClassifyOptions,
    name: str,
    train_fraction: float = 1.0,
) -> dict:
    """One recipe, one training seed: the bootstrap's procedure in every fold, held-out predictions pooled.
    A `train_fraction` under 1 trains on that stratified share of each fold's training part (a learning
    curve: how much the score owes to the amount of data); validation and held-out parts stay whole."""
    truth, predicted, per_fold = [], [], []
    for number, held_out in enumerate(parts, start=1):
        held = set(held_out)
        rest = examples.subset([i for i in range(len(examples)) if i not in held])
        train, validation = stratified_split(rest, VALIDATION_FRACTION, split_seed)
        if train_fraction < 1:
            train = stratified_split(train, train_fraction, split_seed)[1]
        started = time.monotonic()
        trainer = ClassifierTrainer(
            base, train, validation, options, test=examples.subset(held_out), labels=labels
        )
        result = trainer.run(progress=False)
        y_true, y_pred = result.predictions["test"]
        truth.extend(y_true.tolist())
        predicted.extend(y_pred.tolist())
        fold = {key: result.test_metrics[key] for key in ("accuracy", "macro_f1")}
        fold |= {key: result.summary[key] for key in ("best_epoch", "epochs_run")}
        fold["trained_on"] = len(train)
        per_fold.append(fold)
        print(
            f"[recipes] {name} seed {options.seed} fold {number}/{len(parts)}: held-out accuracy "
            f"{fold['accuracy']:.3f} macro-F1 {fold['macro_f1']:.3f}, kept epoch {fold['best_epoch']} of "
            f"{fold['epochs_run']} run, trained on {len(train)} ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    pooled = classification_metrics(labels, np.array(truth), np.array(predicted))
    return {"seed": options.seed, "folds": per_fold, "pooled": pooled}


def compare(
    base: Path,
    examples: Examples,
    recipes: dict[str, dict],
    folds: int,
    seed: int,
    output: Path,
    train_seeds: list[int] | None = None,
    train_fraction: float = 1.0,
):
    """Cross-validate every recipe on the same folds, once per training seed (initialisation, data order,
    dropout: on 600 reviews they move pooled accuracy by points); the report is rewritten after each."""
    labels = sorted({label for row in examples.labels for label in row})
    parts = stratified_folds(examples, folds, seed)
    report: dict = {"folds": folds, "rows": len(examples), "train_fraction": train_fraction, "recipes": {}}
    for name, overrides in recipes.items():
        options = replace(BUDGETS["full"].fine_tune, **overrides)
        seeds = train_seeds or [options.seed]
        runs = [
            cross_validate(
                base, examples, labels, parts, seed, replace(options, seed=train_seed), name, train_fraction
            )
            for train_seed in seeds
        ]
        summary = {
            key: {
                "mean": round(float(np.mean([run["pooled"][key] for run in runs])), 4),
                "min": min(run["pooled"][key] for run in runs),
                "max": max(run["pooled"][key] for run in runs),
            }
            for key in ("accuracy", "macro_f1")
        }
        report["recipes"][name] = {"options": overrides, "runs": runs, "summary": summary}
        accuracy, macro_f1 = summary["accuracy"], summary["macro_f1"]
        print(
            f"[recipes] {name} pooled over {len(runs)} seed(s): accuracy {accuracy['mean']:.4f} "
            f"({accuracy['min']:.3f}-{accuracy['max']:.3f}) macro-F1 {macro_f1['mean']:.4f} "
            f"({macro_f1['min']:.3f}-{macro_f1['max']:.3f})"
        )
        output.write_text(json.dumps(report, indent=2))
    print(f"[recipes] written to {output}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", required=True, help="NAME=JSON options (repeat)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the folds and inner splits")
    parser.add_argument(
        "--train-seeds", default="", help="comma-separated training seeds, each a full CV run (default: 42)"
    )
    parser.add_argument(
        "--train-fraction", type=float, default=1.0, help="train on this stratified share of each fold"
    )
    parser.add_argument("--output", type=Path, default=Path("recipes.json"))
    parser.add_argument("--base", type=Path, help="HF folder to fine-tune (default: the bootstrap's MiniLM)")
    parser.add_argument("--data", type=Path, help="labelled file (default: drugsComTrain)")
    parser.add_argument("--text-column", default="review")
    parser.add_argument("--label-column", default="rating")
    args = parser.parse_args()

    recipes = {name: json.loads(text) for name, text in (item.split("=", 1) for item in args.recipe)}
    base = args.base or assets.fetch(assets.ENCODER)
    data = args.data or assets.fetch(assets.REVIEWS) / "drugsComTrain.tsv"
    examples = load_examples(data, args.text_column, args.label_column)
    seeds = [int(seed) for seed in args.train_seeds.split(",") if seed.strip()]
    compare(base, examples, recipes, args.folds, args.seed, args.output, seeds or None, args.train_fraction)


if __name__ == "__main__":
    main()
