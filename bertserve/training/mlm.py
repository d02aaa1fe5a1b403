"""Masked-LM training (BERT's 15% masking, 80/10/10) that turns any BERT encoder into a fill-mask model."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertForMaskedLM
from transformers.utils import logging as hf_logging

from bertserve.training.loop import (
    autocast,
    bf16_supported,
    copy_tokenizer,
    optimizer_and_schedule,
    optimizer_step,
    seed_everything,
    training_device,
    use_threads,
)

StepCallback = Callable[[int, float], None]


@dataclass
class PretrainOptions:
    """Defaults measured on MiniLM (README): every layer trains, short sequences, a few thousand steps."""

    max_length: int = 128  # tokens per packed training sequence
    batch_size: int = 32
    max_steps: int = 250
    learning_rate: float = 2e-4
    head_learning_rate: float | None = None  # None: 5 x learning_rate (the head may start from scratch)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    mask_probability: float = 0.15
    train_layers: int = -1  # top-N encoder layers that train; -1: all, 0: only the MLM head
    train_embeddings: bool = True  # word embeddings double as the (tied) decoder
    heldout_fraction: float = 0.05
    eval_every: int = 100
    dropout: bool = False  # short runs underfit anyway, and dropout costs ~20% of a CPU step (profiled)
    max_minutes: float = 0.0  # a wall-clock cap on training (0: none); the schedule still follows max_steps
    seed: int = 42
    bf16: bool = True
    threads: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N: serve's rule, see loop.training_device

    def resolved(self) -> PretrainOptions:
        device = training_device(self.device)
        return replace(
            self,
            head_learning_rate=self.head_learning_rate or 5 * self.learning_rate,
            bf16=self.bf16 and bf16_supported(device),
            device=device,
        )


@dataclass
class PretrainResult:
    model: BertForMaskedLM
    options: PretrainOptions
    metrics: dict
    summary: dict
    history: dict = field(default_factory=dict)


def load_masked_lm(base: Path) -> tuple[BertForMaskedLM, bool]:
    """Load a BERT as BertForMaskedLM; a base without `cls.predictions` (e.g. MiniLM) gets a fresh head.
    The decoder is tied to the word embeddings, as in BERT, so the head starts from meaningful outputs."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = BertForMaskedLM.from_pretrained(base, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    fresh_head = any(key.startswith("cls.") for key in info.get("missing_keys", []))
    return model.float(), fresh_head


def pack(tokenizer, passages: list[str], max_length: int) -> torch.Tensor:
    """Concatenate passages ([SEP] between) into full-length [CLS] ... [SEP] rows: no padding to pay for."""
    body = max_length - 2
    stream: list[int] = []
    for ids in tokenizer(passages, add_special_tokens=False)["input_ids"]:
        stream.extend([*ids, tokenizer.sep_token_id])
    rows = [stream[start : start + body] for start in range(0, len(stream) - body + 1, body)]
    if not rows and stream:  # a tiny corpus still yields one (shorter) row
        rows = [stream[:body]]
    return torch.tensor([[tokenizer.cls_token_id, *row, tokenizer.sep_token_id] for row in rows])


def mask_tokens(
    ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator, mask_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: choose `probability` of the non-special tokens; of those 80% -> [MASK],
    10% -> a random token, 10% unchanged. `mask_only` puts [MASK] on all of them (held-out scoring)."""
    inputs, labels = ids.clone(), ids.clone()
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    if mask_only:
        inputs[chosen] = tokenizer.mask_token_id
        return inputs, labels
    roll = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    randomize = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[randomize] = torch.randint(len(tokenizer), ids.shape, generator=generator)[randomize]
    return inputs, labels


def masked_logits(model: BertForMaskedLM, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits only where a label exists: the 30k-wide projection at ~15% of the positions
    instead of all of them, which is most of an MLM step's cost for a small encoder."""
    hidden = model.bert(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state
    return model.cls(hidden[labels != -100])


def _configure_trainable(model: BertForMaskedLM, options: PretrainOptions) -> list[dict]:
    """Freeze what the options keep; return optimiser groups (head faster: it may be brand new)."""
    layers = model.config.num_hidden_layers
    top = layers if options.train_layers < 0 else min(options.train_layers, layers)
    for param in model.bert.parameters():
        param.requires_grad = False
    for layer in model.bert.encoder.layer[layers - top :]:
        for param in layer.parameters():
            param.requires_grad = True
    model.bert.embeddings.word_embeddings.weight.requires_grad = options.train_embeddings
    head = [(n, p) for n, p in model.cls.named_parameters() if n != "predictions.decoder.weight"]
    body = [(n, p) for n, p in model.bert.named_parameters() if p.requires_grad]
    return [{"params": body, "lr": options.learning_rate}, {"params": head, "lr": options.head_learning_rate}]


class MaskedLMTrainer:
    """One MLM run over a plain-text corpus with a held-out share for top-1/top-5 accuracy."""

    def __init__(self, base: Path, passages: list[str], options: PretrainOptions):
        self.options = options.resolved()
        use_threads(self.options.threads)
        seed_everything(self.options.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.model, self.fresh_head = load_masked_lm(base)
        self.device = self.options.device
        self.model.to(self.device)
        order = list(range(len(passages)))
        random.Random(self.options.seed).shuffle(order)
        held = max(1, round(len(order) * self.options.heldout_fraction)) if len(order) > 1 else 0
        self.heldout_passages = [passages[i] for i in order[:held]]
        self.train_rows = pack(self.tokenizer, [passages[i] for i in order[held:]], self.options.max_length)
        self.heldout_rows = pack(self.tokenizer, self.heldout_passages, self.options.max_length)
        if not len(self.train_rows):
            raise ValueError("the corpus is empty after tokenization")
        # One fixed corruption of the held-out rows: every evaluation scores the same positions.
        fixed = torch.Generator().manual_seed(self.options.seed + 1)
        self.heldout = mask_tokens(
            self.heldout_rows, self.tokenizer, self.options.mask_probability, fixed, mask_only=True
        )

    @torch.inference_mode()
    def evaluate(self, bf16: bool | None = None) -> dict:
        """Top-1/top-5 over every held-out masked position (all shown as [MASK])."""
        self.model.eval()
        inputs, labels = self.heldout
        hits1 = hits5 = total = 0
        for start in range(0, len(inputs), 64):
            rows_in = inputs[start : start + 64].to(self.device)
            rows_lab = labels[start : start + 64].to(self.device)
            with autocast(self.options.bf16 if bf16 is None else bf16, self.device):
                logits = masked_logits(self.model, rows_in, rows_lab).float()
            target = rows_lab[rows_lab != -100]
            top5 = logits.topk(5, dim=-1).indices
            hits1 += int((top5[:, 0] == target).sum())
            hits5 += int((top5 == target[:, None]).any(-1).sum())
            total += len(target)
        return {
            "masked_tokens": total,
            "top1": round(hits1 / max(total, 1), 4),
            "top5": round(hits5 / max(total, 1), 4),
        }

    def run(self, progress: bool = True, callback: StepCallback | None = None) -> PretrainResult:
        options = self.options
        started = time.monotonic()
        groups = _configure_trainable(self.model, options)
        optimizer, schedule = optimizer_and_schedule(
            groups, options.learning_rate, options.weight_decay, options.warmup_ratio, options.max_steps
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(options.seed)
        loss_fn = nn.CrossEntropyLoss()
        history: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "eval_top5": []}
        before = self.evaluate() if len(self.heldout_rows) else {}
        rows = len(self.train_rows)
        per_epoch = max(1, math.ceil(rows / options.batch_size))
        order = torch.randperm(rows, generator=generator)
        step = 0
        bar = tqdm(total=options.max_steps, desc="pretrain mlm", disable=not progress, unit="step")
        try:
            while step < options.max_steps:
                if options.max_minutes and time.monotonic() - started > 60 * options.max_minutes:
                    break
                slot = step % per_epoch
                if slot == 0 and step:
                    order = torch.randperm(rows, generator=generator)
                batch = self.train_rows[order[slot * options.batch_size : (slot + 1) * options.batch_size]]
                inputs, labels = mask_tokens(batch, self.tokenizer, options.mask_probability, generator)
                inputs, labels = inputs.to(self.device), labels.to(self.device)
                self.model.train(options.dropout)  # eval mode = no dropout; BERT has no batch norm
                with autocast(options.bf16, self.device):
                    logits = masked_logits(self.model, inputs, labels)
                loss = loss_fn(logits.float(), labels[labels != -100])
                loss_value = optimizer_step(loss, trainable, options.max_grad_norm, optimizer, schedule)
                step += 1
                history["step"].append(step)
                history["loss"].append(loss_value)
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
                if callback is not None:
                    callback(step, history["loss"][-1])
                if options.eval_every and step % options.eval_every == 0 and len(self.heldout_rows):
                    top5 = self.evaluate()["top5"]
                    history["eval_step"].append(step)
                    history["eval_top5"].append(top5)
                    bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", top5=top5)
        finally:
            bar.close()
        metrics = self.evaluate(bf16=False) if len(self.heldout_rows) else {}
        if before:
            metrics["before"] = {"top1": before["top1"], "top5": before["top5"]}
        summary = {
            "hyperparameters": asdict(options),
            "fresh_head": self.fresh_head,
            "trainable_parameters": sum(p.numel() for p in trainable),
            "split_sizes": {
                "train_sequences": rows,
                "heldout_sequences": len(self.heldout_rows),
                "heldout_passages": len(self.heldout_passages),
            },
            "tokens_seen": step * options.batch_size * options.max_length,
            "steps": step,
            "epochs": round(step / per_epoch, 2),
            "duration_s": round(time.monotonic() - started, 1),
            "threads": torch.get_num_threads(),
            "device": self.device,
            "torch": torch.__version__,
        }
        self.model.eval()
        self.model.to("cpu")  # published from the CPU, as the server loads it
        return PretrainResult(self.model, options, metrics, summary, history)


@torch.inference_mode()
def probe(model: BertForMaskedLM, tokenizer, sentence: str, top_k: int = 5) -> list[str]:
    """Top-k tokens for the first [MASK] of a sentence, as the fill-mask endpoint would answer."""
    model.eval()
    encoded = tokenizer(sentence, return_tensors="pt")
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
    logits = model(**encoded).logits[0, position]
    return [tokenizer.decode([int(i)]).strip() for i in logits.topk(top_k).indices]


def write_mlm_folder(result: PretrainResult, base: Path, folder: Path) -> list[str]:
    """A complete BertForMaskedLM folder (tied decoder) with the base's tokenizer and a loss curve."""
    from bertserve.training.report import plot_curve

    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder, safe_serialization=True)
    copy_tokenizer(base, folder)
    history = result.history
    plot_curve(
        history["step"],
        history["loss"],
        history["eval_step"],
        history["eval_top5"],
        "top-5",
        folder / "training_curve.png",
    )
    return ["training_curve.png"]
