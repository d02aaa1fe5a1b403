"""A loaded store version: its tokenizer, a backend, and the task's decode (labels, softmax, top-k, masks,
pooled embeddings).

Tokenizing (runtime/encoding.py) runs per request, in the HTTP processes, where client mistakes are found
(one bad request never fails a batch); `classify` / `fill_mask` / `embed` run on everything a batch holds,
in length-sorted forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from bertserve.runtime.backends import Backend, make_backend
from bertserve.runtime.batching import pad_batch, plan_batches
from bertserve.runtime.embed import pool
from bertserve.runtime.encoding import ClassifyInput, Encoded, TextEncoder
from bertserve.store.manifest import TASK_MODEL_CLASSES, Manifest


@dataclass
class Prepared:
    """One HTTP request after validation and tokenization, waiting for its batch."""

    model: LoadedModel
    inputs: list[Encoded]
    top_k: int | None = None
    target_ids: list[int] | None = None
    options: object = None  # the request's job: what else the task's answer depends on
    route: str = ""  # whose handler writes the answer (api/base.py sets it)
    sequences: int = field(init=False)
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.sequences = len(self.inputs)
        self.tokens = sum(len(item.ids) for item in self.inputs)


class LoadedModel:
    def __init__(
        self, manifest: Manifest, version_dir: Path, backend_name: str = "fp32", device: str = "cpu"
    ) -> None:
        self.manifest = manifest
        self.name, self.version, self.task = manifest.name, manifest.version, manifest.task
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(version_dir)
        auto_model = getattr(transformers, TASK_MODEL_CLASSES[self.task])
        # SDPA: PyTorch's fused attention kernels (flash / memory-efficient on a GPU), never the eager one
        model = auto_model.from_pretrained(
            version_dir, dtype=torch.float32, use_safetensors=True, attn_implementation="sdpa"
        ).eval()
        self.config = model.config
        rows, highest = model.get_input_embeddings().num_embeddings, max(self.tokenizer.get_vocab().values())
        if highest >= rows:  # a request holding such a token would fail its whole batch
            raise ValueError(
                f"{manifest.name}@{manifest.version}: the tokenizer has token id {highest}, "
                f"the model embeds only {rows} ids"
            )
        input_names = tuple(self.tokenizer.model_input_names)
        weights = manifest.files.get("model.safetensors")
        self.backend: Backend = make_backend(
            backend_name,
            model,
            input_names,
            version_dir,
            weights.sha256 if weights else None,
            self.tokenizer,
            device,
        )
        self.encoder = TextEncoder(
            manifest, version_dir, self.tokenizer, getattr(self.config, "max_position_embeddings", None)
        )
        self.max_length = self.encoder.max_length
        id2label = getattr(self.config, "id2label", None) or {}
        self.labels = list(manifest.labels or [id2label[i] for i in sorted(id2label)])
        self.multi_label = manifest.problem_type == "multi_label"
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.mask_id = self.tokenizer.mask_token_id
        self._drop_ids = set(self.tokenizer.all_special_ids) - {self.mask_id}
        self.pooling = manifest.pooling or "mean"
        self.normalize = manifest.normalize if manifest.normalize is not None else True
        self.dimensions = self.config.hidden_size  # every supported pooling keeps the hidden size
        self.padded_tokens = 0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    # ---- per request: validation + tokenization -------------------------------------------------

    def encode(self, inputs: Sequence[ClassifyInput], truncate: bool) -> list[Encoded]:
        return self.encoder.encode(inputs, truncate)

    def encode_masked(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        return self.encoder.encode_masked(texts, truncate)

    def target_ids(self, targets: Sequence[str]) -> list[int]:
        return self.encoder.target_ids(targets)

    # ---- per batch: forward + decode -----------------------------------------------------------

    def _passes(self, sequences: list[Encoded], max_batch_size: int, max_batch_tokens: int):
        """Length-sorted, padded forward passes; `padded_tokens` keeps their total size for the metrics."""
        lengths = [len(item.ids) for item in sequences]
        self.padded_tokens = 0
        for group in plan_batches(lengths, max_batch_size, max_batch_tokens):
            batch = pad_batch(
                [sequences[i].ids for i in group], [sequences[i].type_ids for i in group], self.pad_id
            )
            self.padded_tokens += batch["input_ids"].numel()
            yield group, batch

    def logits(
        self, requests: Sequence[Prepared], max_batch_size: int, max_batch_tokens: int
    ) -> list[torch.Tensor]:
        """Per request: its inputs' raw sequence logits, [inputs, labels] float32 (a cross-encoder: one)."""
        sequences = [item for request in requests for item in request.inputs]
        logits = torch.empty((len(sequences), self.config.num_labels))
        for group, batch in self._passes(sequences, max_batch_size, max_batch_tokens):
            logits[group] = self.backend.sequence_logits(batch)
        return list(logits.split([request.sequences for request in requests]))

    def activate(self, logits: torch.Tensor, function: str | None = None) -> torch.Tensor:
        """Scores from logits: `function` softmax, sigmoid or none (the logits), default the model's own
        (softmax; sigmoid for multi-label models and cross-encoders)."""
        function = function or ("sigmoid" if self.multi_label or self.task == "rerank" else "softmax")
        if function == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits) if function == "sigmoid" else logits

    def classify(
        self, requests: Sequence[Prepared], max_batch_size: int, max_batch_tokens: int
    ) -> list[list[list[dict]]]:
        """Per request, per input: labels with scores, best first (softmax, or sigmoid when multi-label; a
        request's options may ask for another function: raw_scores, function_to_apply)."""
        answers = []
        for request, logits in zip(
            requests, self.logits(requests, max_batch_size, max_batch_tokens), strict=True
        ):
            scores = self.activate(logits, getattr(request.options, "function", None))
            order = torch.argsort(scores, dim=-1, descending=True).tolist()
            values = scores.tolist()
            k = request.top_k or len(self.labels)
            answers.append(
                [
                    [{"label": self.labels[j], "score": values[r][j]} for j in order[r][:k]]
                    for r in range(len(values))
                ]
            )
        return answers

    def fill_mask(
        self, requests: Sequence[Prepared], max_batch_size: int, max_batch_tokens: int
    ) -> list[list[list[list[dict]]]]:
        """Per request, per input, per mask (left to right): the top-k tokens with the filled-in sequence."""
        sequences = [item for request in requests for item in request.inputs]
        per_sequence: list[list[tuple[list[int], list[float]]]] = [[] for _ in sequences]
        owner = [r for r, request in enumerate(requests) for _ in request.inputs]
        for group, batch in self._passes(sequences, max_batch_size, max_batch_tokens):
            positions = (batch["input_ids"] == self.mask_id).nonzero()
            probs = torch.softmax(self.backend.masked_logits(batch, positions), dim=-1)
            for (row, _), mask_probs in zip(positions.tolist(), probs, strict=True):
                request = requests[owner[group[row]]]
                if request.target_ids:
                    candidates = torch.tensor(request.target_ids)
                    chosen = mask_probs[candidates]
                    top = torch.argsort(chosen, descending=True)[: request.top_k]
                    per_sequence[group[row]].append((candidates[top].tolist(), chosen[top].tolist()))
                else:
                    top = torch.topk(mask_probs, k=min(request.top_k or 5, mask_probs.shape[-1]))
                    per_sequence[group[row]].append((top.indices.tolist(), top.values.tolist()))
        answers: list[list[list[list[dict]]]] = [[] for _ in requests]
        for index, sequence in enumerate(sequences):
            answers[owner[index]].append(self._describe_masks(sequence.ids, per_sequence[index]))
        return answers

    def embed(
        self, requests: Sequence[Prepared], max_batch_size: int, max_batch_tokens: int
    ) -> list[torch.Tensor]:
        """Per request: its inputs' pooled vectors, [inputs, dimensions] float32, not normalized yet (the
        request decides: runtime/embed.py)."""
        sequences = [item for request in requests for item in request.inputs]
        vectors = torch.empty((len(sequences), self.dimensions))
        for group, batch in self._passes(sequences, max_batch_size, max_batch_tokens):
            vectors[group] = pool(self.backend.hidden_states(batch), batch["attention_mask"], self.pooling)
        return list(vectors.split([request.sequences for request in requests]))

    def token_vectors(
        self, requests: Sequence[Prepared], max_batch_size: int, max_batch_tokens: int
    ) -> list[list[torch.Tensor]]:
        """Per request, per input: every token's vector, [tokens, dimensions] float32 (TEI's /embed_all)."""
        sequences = [item for request in requests for item in request.inputs]
        vectors: list = [None] * len(sequences)
        for group, batch in self._passes(sequences, max_batch_size, max_batch_tokens):
            hidden = self.backend.hidden_states(batch).float()
            for row, index in enumerate(group):
                vectors[index] = hidden[row, : len(sequences[index].ids)]
        answers, start = [], 0
        for request in requests:
            answers.append(vectors[start : start + request.sequences])
            start += request.sequences
        return answers

    def _describe_masks(self, ids: list[int], masks: list[tuple[list[int], list[float]]]) -> list[list[dict]]:
        mask_columns = [col for col, token in enumerate(ids) if token == self.mask_id]
        described = []
        for col, (tokens, scores) in zip(mask_columns, masks, strict=True):
            candidates = []
            for token, score in zip(tokens, scores, strict=True):
                filled = [
                    token if c == col else t for c, t in enumerate(ids) if t not in self._drop_ids or c == col
                ]
                candidates.append(
                    {
                        "token": token,
                        "token_str": self.tokenizer.decode([token]),
                        "score": score,
                        "sequence": self.tokenizer.decode(filled),
                    }
                )
            described.append(candidates)
        return described

    def warm_up(self) -> None:
        """One forward per task so the first real request does not pay for lazy initialisation."""
        if self.task in ("classification", "rerank"):
            request = Prepared(self, self.encode(["warm up", ("warm", "up")], truncate=True))
            self.classify([request], 8, 4096)
        elif self.task == "embedding":
            self.embed([Prepared(self, self.encode(["warm up", "a longer text to warm up"], True))], 8, 4096)
        else:
            text = f"warm {self.tokenizer.mask_token} up"
            self.fill_mask([Prepared(self, self.encode_masked([text], True), top_k=1)], 8, 4096)
