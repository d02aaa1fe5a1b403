"""Plan forward passes over many sequences: sort by length, cap sequences and padded tokens, pad.

Sorting by length before chunking keeps padding small when short and long inputs arrive together; the token
budget stops one long input from inflating a whole batch to (batch size x longest length).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into forward passes: each holds <= max_batch_size sequences and
    len(group) * longest <= max_batch_tokens (a single over-long sequence still gets its own pass)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest so far
        if current and (len(current) >= max_batch_size or (len(current) + 1) * longest > max_batch_tokens):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def pad_batch(
    input_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of this batch (not to the model's maximum)."""
    width = max(len(ids) for ids in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(input_ids), width), dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, (seq, seq_types) in enumerate(zip(input_ids, type_ids, strict=True)):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        types[row, : len(seq)] = torch.tensor(seq_types, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
