"""Pieces every training command shares: seeding, device and CPU threads, length buckets, optimiser and
schedule."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from bertserve.runtime.cpu import native_bf16
from bertserve.runtime.device import GpuProbe, resolve_device

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def seed_everything(seed: int) -> None:
    """Same seed, same data order, masks and dropout: on the same machine and thread count a run gives
    bit-identical weights. Deterministic algorithms only (a warning names any op that has none)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def keep_freed_memory() -> None:
    """glibc hands large freed blocks back to the kernel and page-faults them in again on the next
    step; training reuses the same sizes every step, so keep them (measured: ~10% faster, no sys time)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD, glibc's maximum (32 MiB)


def use_threads(threads: int = 0) -> int:
    """Use every core this process may run on (2 here) unless told otherwise."""
    keep_freed_memory()
    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def training_device(spec: str = "auto", probe: GpuProbe | None = None) -> str:
    """--device of train, pretrain and bootstrap, by serve's rule (runtime/device.py): auto is the GPU when
    torch sees one, else the CPU. A run trains on one device, the first GPU named. May raise
    DeviceUnavailable."""
    gpus = resolve_device(spec, probe).gpus
    return f"cuda:{gpus[0]}" if gpus else "cpu"


def bf16_supported(device: str = "cpu") -> bool:
    """bf16 autocast where the device computes it natively: a CPU with AVX-512 BF16 / AMX (see
    bertserve.runtime.cpu), a GPU that torch says supports it; elsewhere fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return native_bf16()


def autocast(enabled: bool, device: str = "cpu") -> contextlib.AbstractContextManager:
    kind = device.split(":")[0]
    return torch.autocast(kind, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def on_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None, pool: int = 50
) -> Iterator[list[int]]:
    """Batches of similar length (little padding); with an rng the order is shuffled, pools of batches
    are sorted by length inside, and the batches are shuffled again so training still sees mixed order."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        yield from (order[start : start + batch_size] for start in range(0, len(order), batch_size))
        return
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * pool
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
    rng.shuffle(batches)
    yield from batches


def pad(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(sequence) for sequence in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return out


def optimizer_and_schedule(
    groups: list[dict], learning_rate: float, weight_decay: float, warmup_ratio: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without decay on biases/LayerNorm, linear warm-up then linear decay to zero."""
    param_groups = []
    for group in groups:
        named = [(n, p) for n, p in group["params"] if p.requires_grad]
        lr = group.get("lr", learning_rate)
        exempt = [n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n for n, _ in named]
        decay = [p for (_, p), skip in zip(named, exempt, strict=True) if not skip]
        no_decay = [p for (_, p), skip in zip(named, exempt, strict=True) if skip]
        param_groups += [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], lr=learning_rate)
    schedule = get_linear_schedule_with_warmup(
        optimizer, int(warmup_ratio * total_steps), max(total_steps, 1)
    )
    return optimizer, schedule


def copy_tokenizer(source: Path, target: Path) -> None:
    """The served version must tokenize exactly as the base did: ship the base's tokenizer files."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


class WeightAverage:
    """Exponential moving average of the trainable weights (Polyak averaging). Evaluating and keeping the
    average instead of the last step's weights smooths the step-to-step noise of small-batch fine-tuning.
    The decay ramps up as (1 + t) / (10 + t) so the fresh head's random start is soon forgotten."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.params = [param for param in model.parameters() if param.requires_grad]
        self.average = [param.detach().clone() for param in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, param in zip(self.average, self.params, strict=True):
            average.lerp_(param.detach(), 1 - decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; afterwards its own again."""
        own = [param.detach().clone() for param in self.params]
        with torch.no_grad():
            for param, average in zip(self.params, self.average, strict=True):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, own, strict=True):
                    param.copy_(value)


def optimizer_step(loss: torch.Tensor, params: list, max_grad_norm: float, optimizer, schedule) -> float:
    """Backward, clip, step, advance the schedule, clear gradients; returns the loss as a float."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
