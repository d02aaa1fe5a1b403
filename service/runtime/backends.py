"""Inference backends behind one small interface: logits for sequences, logits at masked positions.

The task decode (softmax, top-k, labels) lives in loaded.py and never knows which backend ran.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Backend(Protocol):
    name: str

    def sequence_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, num_labels] float32 classification logits."""

    def masked_logits(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        """[len(positions), vocab] float32 logits at (row, column) positions of the batch."""


def _masked_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(encoder, head) when the head can run on gathered hidden states alone (BERT `cls`, RoBERTa `lm_head`),
    so the vocabulary projection is computed only at masked positions, not for every token."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None:
        return None
    return model.base_model, head


class TorchBackend:
    """Eager PyTorch in float32 (the reference) or bfloat16 weights (AVX-512 BF16 on this CPU)."""

    def __init__(
        self, model: nn.Module, dtype: torch.dtype = torch.float32, input_names: tuple[str, ...] = ()
    ):
        self.name = "fp32" if dtype == torch.float32 else "bf16"
        self.model = model.to(dtype).eval()
        self.input_names = input_names or ("input_ids", "attention_mask", "token_type_ids")
        self._mlm_parts = _masked_lm_parts(self.model)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in batch.items() if key in self.input_names}

    @torch.inference_mode()
    def sequence_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**self._inputs(batch)).logits.float()

    @torch.inference_mode()
    def masked_logits(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        rows, cols = positions[:, 0], positions[:, 1]
        if self._mlm_parts is None:
            return self.model(**self._inputs(batch)).logits[rows, cols].float()
        encoder, head = self._mlm_parts
        hidden = encoder(**self._inputs(batch)).last_hidden_state
        return head(hidden[rows, cols]).float()


def make_backend(name: str, model: nn.Module, input_names: tuple[str, ...]) -> Backend:
    """Build the named backend for a loaded transformers model."""
    if name in ("fp32", "auto"):
        return TorchBackend(model, torch.float32, input_names)
    if name == "bf16":
        return TorchBackend(model, torch.bfloat16, input_names)
    raise ValueError(f"unknown backend {name!r}")
