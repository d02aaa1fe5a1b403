"""`bertserve train`, `pretrain` and `bootstrap`. torch and transformers load inside the commands only,
so `bertserve --help` and the serving path never pay for (or depend on) the training code."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

import typer

from bertserve.config import flag_help
from bertserve.runtime.device import DeviceUnavailable
from bertserve.store.cli import MODEL_NAME
from bertserve.training.default_store import described


def _store_default() -> Path:
    return Path(os.environ.get("BERTSERVE_STORE", "model_store"))


class Encoder(StrEnum):
    frozen = "frozen"
    fine_tune = "fine-tune"


class ClassWeight(StrEnum):
    none = "none"
    sqrt = "sqrt"
    balanced = "balanced"


class SelectOn(StrEnum):
    macro_f1 = "macro_f1"
    loss = "loss"
    last = "last"


class BudgetName(StrEnum):
    full = "full"
    quick = "quick"


STORE = typer.Option(None, help=flag_help("store"))
SEED = typer.Option(42, help="Seed for the split, initialisation, data order, masking and dropout.")
THREADS = typer.Option(0, help="Torch threads (0: every core this process may use).")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
BF16 = typer.Option(True, "--bf16/--no-bf16", help="bf16 autocast where the device computes it natively.")
DEVICE = typer.Option(
    "auto", help="auto | cpu | cuda | cuda:N: where to train (auto: the GPU when torch sees one, as serve)."
)
TRAIN_EMBEDDINGS = typer.Option(
    True,
    "--train-embeddings/--freeze-embeddings",
    help="Train the word embeddings (in a masked LM they are also the tied decoder).",
)


def _interrupted() -> None:
    typer.echo("interrupted: nothing was published", err=True)
    raise typer.Exit(130)


def _refused(error: Exception) -> None:
    """Bad input (unknown base, missing column, labels that do not fit): one line, not a traceback."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


def _report(manifest) -> None:
    typer.echo(f"published {manifest.name}@{manifest.version}")
    metrics = {k: v for k, v in manifest.metrics.items() if not isinstance(v, dict)}
    typer.echo("  eval: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    if isinstance(manifest.metrics.get("holdout"), dict):
        holdout = manifest.metrics["holdout"]
        baseline = holdout["majority_baseline"]
        typer.echo(
            f"  holdout: accuracy={holdout['accuracy']}, macro_f1={holdout['macro_f1']} on {holdout['rows']} "
            f"rows; majority baseline accuracy={baseline['accuracy']}"
            + (" (BELOW the baseline: promotion refuses it)" if holdout["below_baseline"] else "")
        )


def train(
    data: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="Training data: .csv, .tsv or .jsonl."
    ),
    name: str = typer.Option(
        ..., "--name", help="Store model name to publish the next version of.", callback=MODEL_NAME
    ),
    base: str = typer.Option(..., help="Base: store ref (name, name@V, name:alias) or a local HF folder."),
    store: Path = STORE,
    text_column: str = typer.Option("text", help="Column with the text."),
    pair_column: str = typer.Option(
        None, help="Column with the second text of a sentence pair (default: none, single texts)."
    ),
    label_column: str = typer.Option("label", help="Column with the label(s)."),
    multi_label: bool = typer.Option(
        False, "--multi-label", help="Several labels per row (sigmoid; default: off)."
    ),
    label_delimiter: str = typer.Option("|", help="Separator of labels in a multi-label text cell."),
    eval_file: Path = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Held-out eval data (default: none, an --eval-fraction split).",
    ),
    eval_fraction: float = typer.Option(0.15, help="Without --eval-file: stratified share of the data."),
    test_file: Path = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Holdout: never read by training; the promotion gate compares on it (default: none, promoting "
        "then needs --force).",
    ),
    encoder: Encoder = typer.Option(Encoder.fine_tune, help="frozen: head only; fine-tune: everything."),
    epochs: int = typer.Option(None, help="Most epochs (default 8 fine-tune, 40 frozen)."),
    batch_size: int = typer.Option(16, help="Sequences per step."),
    learning_rate: float = typer.Option(None, help="Encoder LR (default 1e-4 fine-tune, 2e-3 frozen)."),
    head_learning_rate: float = typer.Option(None, help="Head LR (default 10x learning rate)."),
    layer_decay: float = typer.Option(1.0, help="LR x decay^depth for lower encoder layers (1: off)."),
    max_length: int = typer.Option(256, help="Tokens per sequence (longer input is truncated)."),
    warmup_ratio: float = typer.Option(0.1, help="Share of steps with linear warm-up."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping norm."),
    patience: int = typer.Option(
        None,
        help="Evaluations without a better eval score before stopping (0: off; default frozen 6, tuning 0).",
    ),
    select_on: SelectOn = typer.Option(
        None, help="What picks the kept checkpoint (default: last when fine-tuning, macro_f1 frozen)."
    ),
    evals_per_epoch: int = typer.Option(2, help="Evaluations (and checkpoint choices) per epoch."),
    class_weight: ClassWeight = typer.Option(ClassWeight.sqrt, help="Loss weights against imbalance."),
    label_smoothing: float = typer.Option(
        0.0, min=0.0, max=0.99, help="Share of each target spread evenly over all labels (single-label)."
    ),
    train_embeddings: bool = TRAIN_EMBEDDINGS,
    ema_decay: float = typer.Option(
        0.0, min=0.0, max=0.9999, help="Keep a moving average of the weights with this decay (0: off)."
    ),
    ordinal: str = typer.Option(
        None,
        help="Ordered labels, low to high, comma-separated (negative,neutral,positive): one score axis "
        "(default: none, unordered).",
    ),
    seed: int = SEED,
    threads: int = THREADS,
    bf16: bool = BF16,
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Train a classifier and publish it as the next version of NAME (eval metrics in the manifest)."""
    from bertserve.training.classify import ClassifyOptions
    from bertserve.training.jobs import Columns, train_job

    options = ClassifyOptions(
        encoder=encoder.value,
        max_length=max_length,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        head_learning_rate=head_learning_rate,
        layer_decay=layer_decay,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        max_grad_norm=max_grad_norm,
        patience=patience,
        select_on=select_on.value if select_on else None,
        evals_per_epoch=evals_per_epoch,
        class_weight=class_weight.value,
        label_smoothing=label_smoothing,
        train_embeddings=train_embeddings,
        ema_decay=ema_decay,
        ordinal=[label.strip() for label in ordinal.split(",")] if ordinal else None,
        seed=seed,
        bf16=bf16,
        threads=threads,
        device=device,
    )
    columns = Columns(text_column, label_column, pair_column, multi_label, label_delimiter)
    try:
        manifest = train_job(
            store or _store_default(),
            name,
            base,
            data,
            columns,
            options,
            eval_file,
            eval_fraction,
            test_file,
            progress=progress,
        )
    except KeyboardInterrupt:
        _interrupted()
    except (ValueError, DeviceUnavailable) as error:
        _refused(error)
    _report(manifest)


def pretrain(
    corpus: list[Path] = typer.Argument(None, help="Text files (paragraphs) or .csv/.tsv/.jsonl files."),
    name: str = typer.Option(
        ..., "--name", help="Store model name to publish the next version of.", callback=MODEL_NAME
    ),
    base: str = typer.Option(..., help="Base: store ref or local HF folder (an MLM head is optional)."),
    store: Path = STORE,
    text_column: str = typer.Option("text", help="Column with the text in tabular corpus files."),
    stdlib_docs: bool = typer.Option(
        False, "--stdlib-docs", help="Add the Python stdlib's docstrings (default: off)."
    ),
    max_steps: int = typer.Option(250, help="Optimiser steps (the LR schedule spans them)."),
    max_minutes: float = typer.Option(0.0, help="Stop earlier after this many minutes (0: no cap)."),
    batch_size: int = typer.Option(32, help="Packed sequences per step."),
    max_length: int = typer.Option(128, help="Tokens per packed sequence."),
    learning_rate: float = typer.Option(2e-4, help="Encoder learning rate."),
    head_learning_rate: float = typer.Option(None, help="MLM head learning rate (default 5x)."),
    train_layers: int = typer.Option(-1, help="Top encoder layers to train (-1: all, 0: head only)."),
    train_embeddings: bool = TRAIN_EMBEDDINGS,
    mask_probability: float = typer.Option(0.15, help="Share of tokens to predict (80/10/10)."),
    heldout_fraction: float = typer.Option(0.05, help="Share of passages held out for top-1/top-5."),
    eval_every: int = typer.Option(100, help="Held-out evaluation every N steps (0: only at the end)."),
    seed: int = SEED,
    threads: int = THREADS,
    bf16: bool = BF16,
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Masked-LM training of a BERT encoder; publishes a fill-mask version with held-out top-1/top-5."""
    from bertserve.training.corpus import stdlib_passages
    from bertserve.training.jobs import corpus_passages, file_record, pretrain_job
    from bertserve.training.mlm import PretrainOptions

    files = list(corpus or [])
    passages = corpus_passages(files, text_column) + (stdlib_passages() if stdlib_docs else [])
    if not passages:
        raise typer.BadParameter("no text: give corpus files and/or --stdlib-docs")
    options = PretrainOptions(
        max_length=max_length,
        batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        head_learning_rate=head_learning_rate,
        mask_probability=mask_probability,
        train_layers=train_layers,
        train_embeddings=train_embeddings,
        heldout_fraction=heldout_fraction,
        eval_every=eval_every,
        max_minutes=max_minutes,
        seed=seed,
        bf16=bf16,
        threads=threads,
        device=device,
    )
    data = {
        "files": [file_record(path) for path in files],
        "stdlib_docs": stdlib_docs,
        "passages": len(passages),
    }
    try:
        manifest = pretrain_job(
            store or _store_default(), name, base, passages, data, options, progress=progress
        )
    except KeyboardInterrupt:
        _interrupted()
    except (ValueError, DeviceUnavailable) as error:
        _refused(error)
    _report(manifest)


def bootstrap(
    store: Path = STORE,
    budget: BudgetName = typer.Option(BudgetName.full, help="full: the real defaults; quick: a smoke run."),
    cache: Path = typer.Option(None, help="Download cache [BERTSERVE_CACHE, default ~/.cache/bertserve]."),
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Build the default store; idempotent."""
    import json

    from bertserve.training.bootstrap import bootstrap as run_bootstrap

    try:
        summary = run_bootstrap(
            store or _store_default(), budget=budget.value, progress=progress, cache=cache, device=device
        )
    except KeyboardInterrupt:
        _interrupted()
    except (ValueError, DeviceUnavailable) as error:
        _refused(error)
    typer.echo(json.dumps(summary, indent=2))


def register_training_commands(app: typer.Typer) -> None:
    """Add train, pretrain and bootstrap to the top-level CLI."""
    app.command(help=train.__doc__)(train)
    app.command(help=pretrain.__doc__)(pretrain)
    app.command(help=f"Build the default store: {described()}. Idempotent: a step already done is skipped.")(
        bootstrap
    )
