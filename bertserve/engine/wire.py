"""The frames that cross the stream between an HTTP process and an inference process.

One unix-socket connection per (HTTP process, inference process) carries both directions: requests and
cancellations one way, answers the other. Each frame is `kind` (1 byte), the header's and the body's
lengths (4 bytes each, little-endian), a JSON header, then raw body bytes:

- request (`R`): header {id, task, arrived, job, key, lengths, targets}; body: every input's token ids as
  int32 (the machine's byte order: both ends run on it), then every input's token type ids as uint8, the
  inputs one after the other (`lengths` splits them). The job is the route's request as plain JSON; no
  pickle, so a frame can at worst be malformed.
- cancel (`C`): header {id}; the client is gone (disconnected or answered 504): never compute it.
- answer (`A`): header {id, status, ref?, headers?, detail?}; body: the answer's JSON body, as the HTTP
  process sends it to the client (it never decodes it again).

Ids are per connection: the HTTP end keeps the record of what it sent and is not answered yet, so when the
inference process dies, that end answers each of them 503 at once (client.py).
"""

from __future__ import annotations

import struct
from array import array
from pathlib import Path
from typing import Any

import orjson

REQUEST, CANCEL, ANSWER = b"R", b"C", b"A"
_PREFIX = struct.Struct("<cII")
PREFIX_BYTES = _PREFIX.size
# A frame past this is a broken or hostile peer, not a request: the connection is closed.
MAX_FRAME_BYTES = 1 << 30
ID_BYTES = array("i").itemsize  # 4: both ends run on one machine, in its byte order


class FrameError(ValueError):
    """A peer sent bytes that are no frame of ours."""


class Unencodable(ValueError):
    """A header that JSON on the stream cannot carry as it is (an integer past 64 bits would come back a
    float): the request is refused with a 422 instead."""


def slot_socket(socket_dir: Path, slot: int) -> str:
    """Where inference process `slot` listens: the server's 0700 folder (only our user can reach it)."""
    return str(socket_dir / f"slot-{slot}.sock")


def frame(kind: bytes, header: dict[str, Any], body: bytes = b"") -> bytes:
    try:
        encoded = orjson.dumps(header)
    except orjson.JSONEncodeError as exc:
        raise Unencodable(str(exc)) from None
    return b"".join((_PREFIX.pack(kind, len(encoded), len(body)), encoded, body))


def read_frames(buffer: bytearray) -> list[tuple[bytes, dict[str, Any], memoryview]]:
    """Every whole frame at the front of `buffer`, removed from it as they are read; a partial frame stays
    for the next read. The body is a view of a copy that outlives the buffer."""
    offset = 0
    size = len(buffer)
    frames = []
    while size - offset >= PREFIX_BYTES:
        kind, header_len, body_len = _PREFIX.unpack_from(buffer, offset)
        end = offset + PREFIX_BYTES + header_len + body_len
        if kind not in (REQUEST, CANCEL, ANSWER) or header_len + body_len > MAX_FRAME_BYTES:
            raise FrameError(f"not a frame: kind {kind!r}, {header_len + body_len} bytes")
        if end > size:
            break
        start = offset + PREFIX_BYTES
        try:
            header = orjson.loads(memoryview(buffer)[start : start + header_len])
        except orjson.JSONDecodeError as exc:
            raise FrameError(f"a frame's header is not JSON: {exc}") from None
        _check_header(kind, header)
        body = bytes(buffer[start + header_len : end])
        frames.append((kind, header, memoryview(body)))
        offset = end
    if offset:
        del buffer[:offset]
    return frames


# What each kind's header must hold for the loop that reads it (the rest is the task's to check, and a
# task answers what it cannot read with an error frame): a frame without them could not even be answered.
_REQUIRED: dict[bytes, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    REQUEST: (("id", int), ("task", str), ("arrived", (int, float))),
    CANCEL: (("id", int),),
    ANSWER: (("id", int), ("status", int)),
}


def _check_header(kind: bytes, header: Any) -> None:
    if not isinstance(header, dict):
        raise FrameError(f"a frame's header is a {type(header).__name__}, not an object")
    for name, kinds in _REQUIRED[kind]:
        value = header.get(name)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise FrameError(f"a {kind.decode()} frame's header lacks {name!r} of the right type")


def token_arrays(inputs: list) -> tuple[list[int], bytes]:
    """(lengths, body) of tokenized inputs (runtime.encoding.Encoded): ids as int32, then type ids, uint8."""
    lengths = [len(item.ids) for item in inputs]
    ids, types = array("i"), array("B")
    for item in inputs:
        ids.extend(item.ids)
        types.extend(item.type_ids)
    return lengths, ids.tobytes() + types.tobytes()


def token_lists(lengths: list[int], body: memoryview) -> list[tuple[list[int], list[int]]]:
    """(ids, type ids) per input, from token_arrays' body."""
    total = sum(lengths)
    if len(body) != total * (ID_BYTES + 1):
        raise FrameError(f"token body of {len(body)} bytes for {total} tokens")
    ids, types = array("i"), array("B")
    ids.frombytes(body[: total * ID_BYTES])
    types.frombytes(body[total * ID_BYTES :])
    out, start = [], 0
    for length in lengths:
        out.append((ids[start : start + length].tolist(), types[start : start + length].tolist()))
        start += length
    return out
