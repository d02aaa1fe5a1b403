"""Token states -> one vector per text: pooling and normalization as sentence-transformers computes them.

Rows are right-padded (runtime/batching.py), `mask` is the attention mask (1 = a real token). The modes are
the ones store/embedding.py accepts from a model folder."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, tokens, dim] states and [batch, tokens] mask -> [batch, dim] float32 vectors."""
    hidden = hidden.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        counts = torch.clamp(weights.sum(dim=1), min=1e-9)
        return (hidden * weights).sum(dim=1) / (counts if mode == "mean" else torch.sqrt(counts))
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode == "lasttoken":
        last = torch.clamp(mask.sum(dim=1) - 1, min=0)
        return hidden[torch.arange(hidden.shape[0]), last]
    raise ValueError(f"unknown pooling {mode!r}")


def normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Unit L2 length (a zero vector stays zero), as sentence-transformers' Normalize module."""
    return torch.nn.functional.normalize(vectors, p=2, dim=-1)


def shorten(vectors: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """The first `dimensions` components, L2-normalized again (OpenAI's `dimensions`: meaningful only for
    models trained for truncation, e.g. Matryoshka ones; for others it loses information)."""
    if dimensions is None or dimensions >= vectors.shape[-1]:
        return vectors
    return normalize(vectors[..., :dimensions])
