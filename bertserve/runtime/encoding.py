"""A store version's tokenizer and input limit: request texts -> token ids, and the client mistakes found.

The HTTP processes tokenize (so that an inference worker only pads and runs the model) and the worker checks
what they send: `key` names everything that decides the token ids (the tokenizer's files, by their sha256 in
the manifest, and the length limit), so ids made with one version's encoder are used for another version
only when both keys are equal. Versions of one model may have different tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bertserve.errors import ClientError
from bertserve.store.manifest import Manifest, sha256_file

ClassifyInput = str | tuple[str, str]
# Files that hold weights, never read by a tokenizer; every other file of a version is in its encoder's key
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


@dataclass
class Encoded:
    """One tokenized input, unpadded."""

    ids: list[int]
    type_ids: list[int]


class TextEncoder:
    def __init__(
        self, manifest: Manifest, version_dir: Path, tokenizer=None, max_positions: int | None = None
    ):
        """`tokenizer` and `max_positions` (the model's position embeddings) when the model is loaded already;
        else they are read from the version folder, whose tokenizer files are checked against the manifest."""
        self.ref = f"{manifest.name}@{manifest.version}"
        tokenizer_files = sorted(
            (path, entry.sha256)
            for path, entry in manifest.files.items()
            if not path.endswith(WEIGHT_SUFFIXES)
        )
        self.key = hashlib.sha256(json.dumps([tokenizer_files, manifest.max_length]).encode()).hexdigest()[
            :16
        ]
        if tokenizer is None:
            for path, sha256 in tokenizer_files:
                if sha256_file(version_dir / path) != sha256:
                    raise ValueError(f"{self.ref}: {path} does not match its sha256 in the manifest")
            from transformers import AutoTokenizer  # here: the main process imports this module too

            tokenizer = AutoTokenizer.from_pretrained(version_dir)
        if max_positions is None:
            config = json.loads((version_dir / "config.json").read_text())
            max_positions = config.get("max_position_embeddings")
        self.tokenizer = tokenizer
        self.max_length = min(
            manifest.max_length or 512, max_positions or 512, tokenizer.model_max_length or 512
        )
        self.mask_id = tokenizer.mask_token_id
        # A call sets the tokenizer's truncation before encoding: one call at a time (an HTTP process
        # tokenizes large requests in a thread, small ones in its event loop)
        self._lock = threading.Lock()

    def encode(self, inputs: Sequence[ClassifyInput], truncate: bool) -> list[Encoded]:
        """Tokenize one request's inputs; a 422 names the first input that cannot be answered."""
        with self._lock:
            return self._encode(inputs, truncate)

    def _encode(self, inputs: Sequence[ClassifyInput], truncate: bool) -> list[Encoded]:
        singles = [(i, text) for i, text in enumerate(inputs) if isinstance(text, str)]
        pairs = [(i, pair) for i, pair in enumerate(inputs) if not isinstance(pair, str)]
        encoded: dict[int, Encoded] = {}
        for group, is_pair in ((singles, False), (pairs, True)):
            if not group:
                continue
            first = [item[1][0] if is_pair else item[1] for item in group]
            second = [item[1][1] for item in group] if is_pair else None
            full = self.tokenizer(first, second, add_special_tokens=True, truncation=False)
            too_long = [k for k, ids in enumerate(full["input_ids"]) if len(ids) > self.max_length]
            if too_long and not truncate:
                k = too_long[0]
                raise ClientError(
                    422,
                    f"input {group[k][0]} has {len(full['input_ids'][k])} tokens; model {self.ref} takes "
                    f"at most {self.max_length} (send truncate=true to cut it)",
                    "input_too_long",
                )
            if too_long:
                full = self.tokenizer(first, second, truncation=True, max_length=self.max_length)
            type_ids = full.get("token_type_ids") or [[0] * len(ids) for ids in full["input_ids"]]
            for (index, _), ids, types in zip(group, full["input_ids"], type_ids, strict=True):
                encoded[index] = Encoded(list(ids), list(types))
        return [encoded[i] for i in range(len(inputs))]

    def encode_masked(self, texts: Sequence[str], truncate: bool) -> list[Encoded]:
        """Like encode, and every input must keep at least one mask token."""
        mask = self.tokenizer.mask_token
        for index, text in enumerate(texts):
            if mask not in text:
                raise ClientError(422, f"input {index} holds no {mask} token", "no_mask_token")
        encoded = self.encode(texts, truncate)
        for index, item in enumerate(encoded):
            if self.mask_id not in item.ids:
                raise ClientError(
                    422,
                    f"input {index}: every {mask} lies beyond the {self.max_length}-token limit",
                    "no_mask_token",
                )
        return encoded

    def target_ids(self, targets: Sequence[str]) -> list[int]:
        """Vocabulary ids of target words; each must be exactly one token."""
        ids = []
        for target in targets:
            with self._lock:
                tokens = self.tokenizer.tokenize(target)
            if (
                len(tokens) != 1
                or self.tokenizer.convert_tokens_to_ids(tokens[0]) == self.tokenizer.unk_token_id
            ):
                raise ClientError(
                    422,
                    f"target {target!r} is not a single token of model {self.ref}'s vocabulary",
                    "bad_target",
                )
            ids.append(self.tokenizer.convert_tokens_to_ids(tokens[0]))
        return list(dict.fromkeys(ids))
