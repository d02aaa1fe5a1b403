"""Train a classification head (frozen encoder) or the whole BERT (fine-tune) and write a servable folder."""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertForSequenceClassification
from transformers.utils import logging as hf_logging

from bertserve.store.gate import HOLDOUT_FILE, Holdout, LabelSet, holdout_sha256
from bertserve.training.data import Examples
from bertserve.training.loop import (
    WeightAverage,
    autocast,
    bf16_supported,
    copy_tokenizer,
    length_batches,
    on_device,
    optimizer_and_schedule,
    optimizer_step,
    pad,
    seed_everything,
    training_device,
    use_threads,
)
from bertserve.training.report import classification_metrics, plot_confusion, plot_curve

StepCallback = Callable[[int, float], None]


@dataclass
class ClassifyOptions:
    """Hyper-parameters; the defaults are the ones chosen for MiniLM on the drug reviews (README)."""

    encoder: Literal["frozen", "fine-tune"] = "fine-tune"
    max_length: int = 256
    epochs: int | None = None  # None: 8 fine-tune, 40 frozen (cached features make frozen epochs ~free)
    batch_size: int = 16
    learning_rate: float | None = None  # None: 1e-4 fine-tune, 2e-3 frozen
    head_learning_rate: float | None = None  # None: 10 x learning_rate when fine-tuning (fresh head)
    layer_decay: float = 1.0  # learning rate x decay^depth-from-top for encoder layers (1: off)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Evaluations without a better eval score (select_on) before stopping; 0: off. None: 6 frozen (40 cheap
    # epochs), off for fine-tuning: with 510 reviews a noisy early peak stopped 3 of 10 cross-validated runs
    # at epoch 4-5 (held-out accuracy 0.56-0.64); run to the end they kept a later, better checkpoint.
    patience: int | None = None
    # What picks the kept checkpoint: best eval macro-F1, lowest eval loss, or the last weights. None: the
    # last when fine-tuning (cross-validated on the drug reviews, the best of 16 scores on a 72-review eval
    # split kept a worse model than the end of the schedule: README), best macro-F1 for frozen heads.
    select_on: Literal["macro_f1", "loss", "last"] | None = None
    evals_per_epoch: int = 2
    class_weight: Literal["none", "sqrt", "balanced"] = "sqrt"
    label_smoothing: float = 0.0  # single-label targets spread this share evenly over all labels
    # fine-tuning moves the word embeddings too (off: they stay bit-identical to the base's)
    train_embeddings: bool = True
    ema_decay: float = 0.0  # evaluate and keep a moving average of the weights with this decay (0: off)
    threshold: float = 0.5  # multi-label decision threshold on sigmoid scores
    ordinal: list[str] | None = None  # labels low to high: one score direction, adjacent-category logits
    seed: int = 42
    bf16: bool = True
    threads: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N: serve's rule, see loop.training_device

    def resolved(self) -> ClassifyOptions:
        frozen = self.encoder == "frozen"
        device = training_device(self.device)
        lr = self.learning_rate or (2e-3 if frozen else 1e-4)
        return replace(
            self,
            epochs=self.epochs or (40 if frozen else 8),
            patience=(6 if frozen else 0) if self.patience is None else self.patience,
            select_on=self.select_on or ("macro_f1" if frozen else "last"),
            learning_rate=lr,
            head_learning_rate=self.head_learning_rate or (lr if frozen else 10 * lr),
            bf16=self.bf16 and bf16_supported(device),
            device=device,
        )


@dataclass
class TrainResult:
    model: BertForSequenceClassification
    labels: list[str]
    multi_label: bool
    options: ClassifyOptions
    eval_metrics: dict
    test_metrics: dict | None
    summary: dict
    history: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)
    holdout: Holdout | None = None  # predictions on the test split, stored with the version for the gate


class _Encoded:
    """Token ids of a split, tokenized once (truncated, unpadded) with the targets as a tensor."""

    def __init__(self, tokenizer, examples: Examples, labels: list[str], multi_label: bool, max_length: int):
        encoded = tokenizer(
            examples.texts, examples.pairs, truncation=True, max_length=max_length, return_token_type_ids=True
        )
        self.ids: list[list[int]] = encoded["input_ids"]
        self.types: list[list[int]] = encoded["token_type_ids"]
        self.lengths = [len(ids) for ids in self.ids]
        index = {label: i for i, label in enumerate(labels)}
        if multi_label:
            targets = torch.zeros(len(examples), len(labels))
            for row, label_set in enumerate(examples.labels):
                targets[row, [index[label] for label in label_set if label in index]] = 1.0
            self.targets = targets
        else:
            self.targets = torch.tensor([index.get(label_set[0], -100) for label_set in examples.labels])

    def batch(self, rows: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        input_ids = pad([self.ids[r] for r in rows], pad_id)
        return {
            "input_ids": input_ids,
            "token_type_ids": pad([self.types[r] for r in rows], 0),
            "attention_mask": pad([[1] * self.lengths[r] for r in rows], 0),
        }


def label_names(*splits: Examples) -> list[str]:
    return sorted({label for split in splits for label_set in split.labels for label in label_set})


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors `--encoder frozen` promises not to touch: embeddings and transformer layers."""
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.startswith(("bert.embeddings.", "bert.encoder."))
    }


def load_base(base: Path, labels: list[str], multi_label: bool) -> BertForSequenceClassification:
    """Any BERT checkpoint (plain encoder, MLM, another classifier): the head is fresh when labels differ."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights are newly initialised" is the point here, not news
    try:
        model = BertForSequenceClassification.from_pretrained(
            base,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            problem_type="multi_label_classification" if multi_label else "single_label_classification",
            ignore_mismatched_sizes=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float()


def _class_weights(targets: torch.Tensor, count: int, mode: str) -> torch.Tensor | None:
    """Rare classes (neutral reviews) would otherwise be ignored: weight them up by inverse frequency."""
    if mode == "none" or targets.ndim > 1:
        return None
    counts = torch.bincount(targets[targets >= 0], minlength=count).float().clamp(min=1)
    weights = counts.sum() / (count * counts)
    return weights.sqrt() if mode == "sqrt" else weights


def _param_groups(model: BertForSequenceClassification, options: ClassifyOptions) -> list[dict]:
    """Head at its own rate; encoder layers at learning_rate x layer_decay^(distance from the top)."""
    layers = model.config.num_hidden_layers
    groups: dict[float, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("bert.embeddings."):
            lr = options.learning_rate * options.layer_decay ** (layers + 1)
        elif match := re.match(r"bert\.encoder\.layer\.(\d+)\.", name):
            lr = options.learning_rate * options.layer_decay ** (layers - int(match.group(1)))
        else:
            lr = options.head_learning_rate
        groups.setdefault(lr, []).append((name, param))
    return [{"params": params, "lr": lr} for lr, params in groups.items()]


class OrdinalRows(nn.Module):
    """Classifier weight rows 0, u, 2u, ... for ordered labels (negative < neutral < positive): every pair of
    neighbours differs by the same direction u, the adjacent-category logit model. The middle label is then
    learned from all the data (it is the stretch between its neighbours on one sentiment axis) instead of
    from its own few examples. Removed after training: the saved head is a plain classifier."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def forward(self, direction: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(self.count, dtype=direction.dtype, device=direction.device)
        return steps[:, None] * direction

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight[1:2] - weight[0:1]


def ordered_labels(order: list[str], found: list[str], multi_label: bool) -> list[str]:
    """`--ordinal` fixes the label order; it must place every label the data has (it may name more)."""
    if multi_label:
        raise ValueError("--ordinal needs single-label data: ordered labels exclude each other")
    if len(set(order)) != len(order) or len(order) < 2:
        raise ValueError(f"--ordinal needs two or more distinct labels, got {order}")
    if missing := sorted(set(found) - set(order)):
        raise ValueError(f"--ordinal {','.join(order)} does not place the labels {missing}")
    return list(order)


class _Head(nn.Module):
    """BertForSequenceClassification after the encoder: pooler (reads token 0 only), dropout, classifier.
    Frozen training caches token 0's hidden state once and trains only this, exactly as served."""

    def __init__(self, model: BertForSequenceClassification):
        super().__init__()
        self.model = model

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        pooled = self.model.bert.pooler(first_token.unsqueeze(1))
        return self.model.classifier(self.model.dropout(pooled))


class ClassifierTrainer:
    """One training run; `run` returns the checkpoint `select_on` keeps (early stopping if patience)."""

    def __init__(
        self,
        base: Path,
        train: Examples,
        evaluation: Examples,
        options: ClassifyOptions,
        multi_label: bool = False,
        test: Examples | None = None,
        labels: list[str] | None = None,
    ):
        self.options = options.resolved()
        self.multi_label = multi_label
        self.labels = labels or label_names(train, evaluation)
        if self.options.ordinal:
            self.labels = ordered_labels(self.options.ordinal, self.labels, multi_label)
        use_threads(self.options.threads)
        seed_everything(self.options.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.device = self.options.device
        self.model = load_base(base, self.labels, multi_label).to(self.device)
        if self.options.ordinal:
            parametrize.register_parametrization(
                self.model.classifier, "weight", OrdinalRows(len(self.labels))
            )
        self.frozen = self.options.encoder == "frozen"

        def encode(split: Examples) -> _Encoded:
            return _Encoded(self.tokenizer, split, self.labels, multi_label, self.options.max_length)

        self.train, self.eval = encode(train), encode(evaluation)
        self.test = encode(test) if test is not None else None
        self.test_examples, self.read = test, (train, evaluation)
        self.sizes = {"train": len(train), "eval": len(evaluation), "test": len(test) if test else 0}
        weights = _class_weights(self.train.targets, len(self.labels), self.options.class_weight)
        self.loss_fn: nn.Module = (
            nn.BCEWithLogitsLoss()
            if multi_label
            else nn.CrossEntropyLoss(
                weight=None if weights is None else weights.to(self.device),
                ignore_index=-100,
                label_smoothing=self.options.label_smoothing,
            )
        )
        self.class_weights = None if weights is None else [round(float(w), 4) for w in weights]

    # -- forward passes -------------------------------------------------------------------------
    @torch.inference_mode()
    def _logits(self, split: _Encoded, bf16: bool, features: torch.Tensor | None = None) -> torch.Tensor:
        self.model.eval()
        if features is not None:
            return _Head(self.model)(features).float().cpu()
        out = torch.empty(len(split.ids), len(self.labels))
        for rows in length_batches(split.lengths, 64, None):
            with autocast(bf16, self.device):
                batch = on_device(split.batch(rows, self.pad_id), self.device)
                out[rows] = self.model(**batch).logits.float().cpu()
        return out

    @torch.inference_mode()
    def _first_token(self, split: _Encoded) -> torch.Tensor:
        """Token 0's last hidden state, in fp32 so the frozen head trains on what serving computes."""
        self.model.eval()
        out = torch.empty(len(split.ids), self.model.config.hidden_size, device=self.device)
        for rows in length_batches(split.lengths, 64, None):
            batch = on_device(split.batch(rows, self.pad_id), self.device)
            out[rows] = self.model.bert(**batch).last_hidden_state[:, 0].float()
        return out

    def _predict(self, logits: torch.Tensor) -> np.ndarray:
        if self.multi_label:
            return (torch.sigmoid(logits) >= self.options.threshold).int().numpy()
        return logits.argmax(-1).numpy()

    def _metrics(self, split: _Encoded, logits: torch.Tensor) -> dict:
        keep = (
            split.targets >= 0 if not self.multi_label else torch.ones(len(split.targets), dtype=torch.bool)
        )
        return classification_metrics(
            self.labels, split.targets[keep].numpy(), self._predict(logits)[keep.numpy()]
        )

    # -- training -------------------------------------------------------------------------------
    def run(self, progress: bool = True, callback: StepCallback | None = None) -> TrainResult:
        options = self.options
        started = time.monotonic()
        features: dict[str, torch.Tensor | None] = {"train": None, "eval": None, "test": None}
        if self.frozen:
            for param in self.model.bert.parameters():
                param.requires_grad = False
            for param in self.model.bert.pooler.parameters():
                param.requires_grad = True
            features = {
                name: self._first_token(split) if split is not None else None
                for name, split in (("train", self.train), ("eval", self.eval), ("test", self.test))
            }
        else:
            self.model.bert.embeddings.word_embeddings.weight.requires_grad = options.train_embeddings
        batch_size = options.batch_size
        steps_per_epoch = math.ceil(len(self.train.ids) / batch_size)
        total = steps_per_epoch * options.epochs
        optimizer, schedule = optimizer_and_schedule(
            _param_groups(self.model, options),
            options.learning_rate,
            options.weight_decay,
            options.warmup_ratio,
            total,
        )
        average = WeightAverage(self.model, options.ema_decay) if options.ema_decay else None
        eval_at = {
            round(steps_per_epoch * (k + 1) / options.evals_per_epoch) for k in range(options.evals_per_epoch)
        }
        rng = random.Random(options.seed)
        history: dict[str, list] = {
            "step": [],
            "loss": [],
            "eval_step": [],
            "eval_macro_f1": [],
            "eval_loss": [],
        }
        best: tuple[float, dict[str, torch.Tensor], int, float] | None = None
        stale, step, epochs_run = 0, 0, 0
        bar = tqdm(total=total, desc=f"train {options.encoder}", disable=not progress, unit="step")
        try:
            for epoch in range(options.epochs):
                epochs_run = epoch + 1
                lengths = [1] * len(self.train.ids) if self.frozen else self.train.lengths
                for index, rows in enumerate(length_batches(lengths, batch_size, rng), start=1):
                    self.model.train()
                    targets = self.train.targets[rows].to(self.device)
                    with autocast(options.bf16 and not self.frozen, self.device):
                        if self.frozen:
                            logits = _Head(self.model)(features["train"][rows])
                        else:
                            batch = on_device(self.train.batch(rows, self.pad_id), self.device)
                            logits = self.model(**batch).logits
                    loss = self.loss_fn(logits.float(), targets)
                    trainable = [p for p in self.model.parameters() if p.requires_grad]
                    loss_value = optimizer_step(loss, trainable, options.max_grad_norm, optimizer, schedule)
                    if average is not None:
                        average.update()
                    step += 1
                    history["step"].append(step)
                    history["loss"].append(loss_value)
                    bar.update(1)
                    bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", epoch=epoch + 1)
                    if callback is not None:
                        callback(step, history["loss"][-1])
                    if index not in eval_at:
                        continue
                    with average.applied() if average is not None else contextlib.nullcontext():
                        logits = self._logits(self.eval, options.bf16, features["eval"])
                        metrics = self._metrics(self.eval, logits)
                        eval_loss = float(
                            self.loss_fn(logits.to(self.device), self.eval.targets.to(self.device))
                        )
                        score = {"macro_f1": metrics["macro_f1"], "loss": -eval_loss, "last": step}[
                            options.select_on
                        ]
                        improved = best is None or score > best[0]
                        # `last` keeps only the final weights: no copy at the evaluations before them
                        if improved and (options.select_on != "last" or step == total):
                            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                            best = (score, state, step, epoch + 1)
                    stale = 0 if improved else stale + 1
                    history["eval_step"].append(step)
                    history["eval_macro_f1"].append(metrics["macro_f1"])
                    history["eval_loss"].append(round(eval_loss, 4))
                    bar.set_postfix(
                        loss=f"{history['loss'][-1]:.3f}", epoch=epoch + 1, eval_f1=metrics["macro_f1"]
                    )
                if options.patience and stale >= options.patience:
                    break
        finally:
            bar.close()
        assert best is not None, "no evaluation ran: is the training set empty?"
        self.model.load_state_dict(best[1])
        if parametrize.is_parametrized(self.model.classifier):
            parametrize.remove_parametrizations(self.model.classifier, "weight", leave_parametrized=True)
        self.model.eval()
        # Reported numbers come from fp32, as the fp32 backend serves them.
        eval_logits = self._logits(self.eval, False, features["eval"])
        eval_metrics = self._metrics(self.eval, eval_logits)
        test_logits = self._logits(self.test, False, features["test"]) if self.test is not None else None
        test_metrics = self._metrics(self.test, test_logits) if test_logits is not None else None
        predictions = {"eval": (self.eval.targets.numpy(), self._predict(eval_logits))}
        holdout = None
        if test_logits is not None:
            predictions["test"] = (self.test.targets.numpy(), self._predict(test_logits))
            predicted = self._label_sets(predictions["test"][1])
            holdout = record_holdout(self.test_examples, predicted, self.read)
        summary = {
            "hyperparameters": asdict(options),
            "class_weights": self.class_weights,
            "split_sizes": self.sizes,
            "label_counts": dict(
                Counter(label for ls in self._label_sets(self.train.targets) for label in ls)
            ),
            "epochs_run": epochs_run,
            "steps": step,
            "best_step": best[2],
            "best_epoch": best[3],
            "duration_s": round(time.monotonic() - started, 1),
            "threads": torch.get_num_threads(),
            "device": self.device,
            "torch": torch.__version__,
        }
        self.model.to("cpu")  # published from the CPU, as the server loads it
        return TrainResult(
            model=self.model,
            labels=self.labels,
            multi_label=self.multi_label,
            options=options,
            eval_metrics=eval_metrics,
            test_metrics=test_metrics,
            summary=summary,
            history=history,
            predictions=predictions,
            holdout=holdout,
        )

    def _label_sets(self, values: torch.Tensor | np.ndarray) -> list[LabelSet]:
        """Class indices (single-label, -100: none) or 0/1 rows (multi-label) as label names per row."""
        rows = np.asarray(values)
        if self.multi_label:
            return [tuple(self.labels[j] for j in np.flatnonzero(row)) for row in rows]
        return [(self.labels[int(t)],) if t >= 0 else () for t in rows]


def record_holdout(holdout: Examples, predicted: list[LabelSet], read: tuple[Examples, ...]) -> Holdout:
    """The holdout's truth and predictions, and which of its rows training or selection also read (same
    text): the gate leaves those out, since a model may have learned exactly those answers."""

    def rows(split: Examples) -> list[tuple[str, str | None]]:
        return list(zip(split.texts, split.pairs or [None] * len(split), strict=True))

    known = {row for split in read for row in rows(split)}
    return Holdout(
        sha256=holdout_sha256(holdout.texts, holdout.pairs, holdout.labels),
        truth=[tuple(label_set) for label_set in holdout.labels],
        predicted=predicted,
        seen=frozenset(i for i, row in enumerate(rows(holdout)) if row in known),
    )


def write_version_folder(result: TrainResult, base: Path, folder: Path) -> list[str]:
    """Save a complete HF folder (weights, config with id2label, tokenizer) plus the PNG reports."""
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer(base, folder)
    if result.holdout is not None:
        (folder / HOLDOUT_FILE).write_text(json.dumps(result.holdout.to_json()) + "\n")
    split = "test" if "test" in result.predictions else "eval"
    y_true, y_pred = result.predictions[split]
    plot_confusion(result.labels, y_true, y_pred, folder / "confusion_matrix.png", f"{split} split")
    history = result.history
    plot_curve(
        history["step"],
        history["loss"],
        history["eval_step"],
        history["eval_macro_f1"],
        "macro-F1",
        folder / "training_curve.png",
    )
    return ["confusion_matrix.png", "training_curve.png"]
