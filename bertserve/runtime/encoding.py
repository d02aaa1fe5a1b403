"""A store version's tokenizer and input limit: request texts -> token ids, and the client mistakes found.

The HTTP processes tokenize (so that an inference worker only pads and runs the model) and the worker checks
what they send: `key` names everything that decides the token ids (the tokenizer's files, by their sha256 in
the manifest, and the length limit), so ids made with one version's encoder are used for another version
only when both keys are equal. Versions of one model may have different tokenizers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bertserve.errors import ClientError
from bertserve.store.manifest import Manifest, sha256_file

ClassifyInput = str | tuple[str, str]
# sentence-transformers' settings file: `prompts` and `default_prompt_name` (store/embedding.py copies it)
PROMPTS_FILE = "config_sentence_transformers.json"
# Files that hold weights, never read by a tokenizer; every other file of a version is in its encoder's key
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


@dataclass
class Encoded:
    """One tokenized input, unpadded."""

    ids: list[int]
    type_ids: list[int]


class EncoderBusy(Exception):
    """The tokenizer is busy in another thread (a large request): the event loop does not wait for it, it
    hands its request to that thread's queue instead."""


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Turn:
    """The tokenizer, one call at a time. A thread waits for its turn; the event loop never does (it would
    stall every request and /live for as long as a large tokenization lasts): EncoderBusy. One per encoder,
    made once: the request path takes it without a new object or a loop lookup when it is free."""

    __slots__ = ("lock", "ref")

    def __init__(self, ref: str) -> None:
        self.lock = threading.Lock()
        self.ref = ref

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            if _in_event_loop():
                raise EncoderBusy(self.ref)
            self.lock.acquire()

    def __exit__(self, *_: object) -> None:
        self.lock.release()


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
        self.task = manifest.task
        self.vocab_size = len(tokenizer)
        self.prompts, self.default_prompt_name = read_prompts(version_dir)
        # the special tokens the tokenizer puts around one text ([CLS] / [SEP] for BERT), for token-id inputs
        around = tokenizer("", add_special_tokens=True)["input_ids"]
        self._prefix, self._suffix = list(around[:1]), list(around[1:])
        # A call sets the tokenizer's truncation before encoding: one call at a time (an HTTP process
        # tokenizes large requests in a thread, small ones in its event loop; see _Turn)
        self._turn = _Turn(self.ref)

    def encode(
        self, inputs: Sequence[ClassifyInput], truncate: bool, direction: str = "right"
    ) -> list[Encoded]:
        """Tokenize one request's inputs; a 422 names the first input that cannot be answered. `direction`:
        the side a too-long input loses tokens from (TEI's truncation_direction)."""
        with self._turn:
            self.tokenizer.truncation_side = direction
            try:
                return self._encode(inputs, truncate)
            finally:
                self.tokenizer.truncation_side = "right"

    def prompt(self, name: str | None) -> str:
        """The text sentence-transformers puts before every input for prompt `name` (None: the folder's
        default prompt, if it names one); an unknown name is the client's mistake."""
        name = name if name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise ClientError(
                422,
                f"prompt_name {name!r} is not a prompt of model {self.ref} (prompts: {known})",
                "bad_prompt",
            )
        return self.prompts[name]

    def encode_ids(
        self, inputs: Sequence[Sequence[int]], truncate: bool, direction: str = "right"
    ) -> list[Encoded]:
        """Token-id inputs (OpenAI's and TEI's pre-tokenized form), checked against the vocabulary. The
        model's special tokens ([CLS] ... [SEP]) are added unless the ids already start with them, so that
        ids from a client-side tokenizer (which leaves them out) embed as the text would."""
        encoded = []
        for index, ids in enumerate(inputs):
            bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
            if bad is not None:
                raise ClientError(
                    422,
                    f"input {index}: token id {bad} is not in model {self.ref}'s vocabulary "
                    f"(0..{self.vocab_size - 1})",
                    "bad_token_id",
                )
            ids = list(ids)
            if ids[: len(self._prefix)] != self._prefix or not self._prefix:
                ids = [*self._prefix, *ids, *self._suffix]
            if len(ids) > self.max_length:
                if not truncate:
                    raise ClientError(
                        422,
                        f"input {index} has {len(ids)} tokens; model {self.ref} takes at most "
                        f"{self.max_length} (send truncate=true to cut it)",
                        "input_too_long",
                    )
                keep = self.max_length - 1
                ids = [*ids[:1], *ids[len(ids) - keep :]] if direction == "left" else [*ids[:keep], ids[-1]]
            encoded.append(Encoded(ids, [0] * len(ids)))
        return encoded

    def tokens(self, text: str, add_special_tokens: bool) -> list[dict]:
        """TEI's /tokenize: every token with its id, text, whether it is special, and its character span."""
        with self._turn:
            encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
            pieces = self.tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        special = set(self.tokenizer.all_special_ids)
        return [
            {
                "id": token,
                "text": piece,
                "special": token in special,
                "start": None if token in special else start,
                "stop": None if token in special else stop,
            }
            for token, piece, (start, stop) in zip(
                encoded["input_ids"], pieces, encoded["offset_mapping"], strict=True
            )
        ]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        """TEI's /decode; ids outside the vocabulary are the client's mistake."""
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ClientError(422, f"token id {bad} is not in model {self.ref}'s vocabulary", "bad_token_id")
        with self._turn:
            return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

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
            with self._turn:
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


def read_prompts(version_dir: Path) -> tuple[dict[str, str], str | None]:
    """`prompts` and `default_prompt_name` of a sentence-transformers folder ({} and None without them)."""
    path = Path(version_dir) / PROMPTS_FILE
    if not path.is_file():
        return {}, None
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return {}, None
    prompts = {str(k): str(v) for k, v in (config.get("prompts") or {}).items()}
    default = config.get("default_prompt_name")
    return prompts, default if default in prompts else None
