"""The per-request bounds that no schema states: how many inputs, how long each, and how large the answer.

The input limits are checked where a request is parsed (the HTTP processes). The answer bound is checked
before the answer is made: by the task APIs from what the answer will hold (vectors x dimensions, masks x
candidates), once the request is tokenized and its model known, before the forward pass; by /tokenize and
/decode as they render, stopping at the limit. An answer is held whole in the inference process, on its way
through the socket and in the HTTP process (gzip adds a copy), so a few unbounded ones could exhaust memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from bertserve.config import Settings
from bertserve.errors import ClientError

# What one number of an answer takes: orjson writes a float32 in its shortest form, 11.2 to 12.4 bytes with
# its comma for unit vectors and hidden states (measured on 2,048 x 32 to 768 values); base64 writes 4/3 of
# its 4 bytes.
JSON_FLOAT_BYTES = 12
BASE64_FLOAT_BYTES = 16 / 3


def check_inputs(
    settings: Settings, inputs: Sequence[str | tuple[str, str]], limit: int | None = None
) -> None:
    """At most `limit` inputs (default BERTSERVE_MAX_INPUTS), each of at most BERTSERVE_MAX_INPUT_CHARS."""
    check_input_count(len(inputs), limit or settings.max_inputs)
    for index, item in enumerate(inputs):
        check_input_chars(settings, index, item)


def check_input_count(count: int, limit: int) -> None:
    if count > limit:
        raise ClientError(413, f"{count} inputs in one request; the limit is {limit}", "too_many_inputs")


def check_input_chars(settings: Settings, index: int, item: str | tuple[str, str]) -> None:
    chars = len(item) if isinstance(item, str) else sum(map(len, item))
    if chars > settings.max_input_chars:
        message = f"input {index} has {chars} characters; the limit is {settings.max_input_chars}"
        raise ClientError(413, message, "input_too_large")


def check_answer(size: float, settings: Settings, what: str) -> None:
    """Refuse a request whose answer, `what`, would take `size` bytes, past BERTSERVE_MAX_ANSWER_BYTES."""
    limit = settings.max_answer_bytes
    if size > limit:
        message = (
            f"the answer ({what}) would take {int(size)} bytes; the limit is {limit} "
            "(BERTSERVE_MAX_ANSWER_BYTES): send fewer or shorter inputs"
        )
        raise ClientError(413, message, "answer_too_large")


def render_bounded(items: Iterable[Any], settings: Settings, what: str) -> bytes:
    """A JSON array of `items`, each rendered as it comes (consume a generator: nothing past the limit is
    made); refused as soon as the part rendered passes BERTSERVE_MAX_ANSWER_BYTES."""
    parts, size = [], 2
    for index, item in enumerate(items):
        part = orjson.dumps(item)
        size += len(part) + 1
        check_answer(size, settings, f"{what}, rendered up to input {index}")
        parts.append(part)
    return b"[" + b",".join(parts) + b"]"
