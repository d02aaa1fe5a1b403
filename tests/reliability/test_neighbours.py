"""Hostile neighbours: another process on the machine reaches for the engine's sockets (the streams between
the HTTP processes and the inference processes). Another user cannot connect at all (the sockets live in a
0700 folder); a process of our own user that sends junk loses its connection, and the server keeps serving
on every other one, with the same inference process."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import httpx
import orjson
import pytest

from tests.reliability.conftest import LIGHT, classify_store, worker_pids
from tests.server_process import running_server

NOBODY = 65534  # Debian's `nobody`: a user other than the server's, with no rights of its own


def listening_sockets(pid: int) -> list[str]:
    """The paths of the unix sockets process `pid` holds that are bound to a path: its listeners (the
    connections it accepted on one show the listener's path too)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("/"):
            paths.append(fields[7])
    return sorted(set(paths))


def _frame(kind: bytes, header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<cII", kind, len(header), len(body)) + header + body


JUNK = {
    "random bytes": os.urandom(64),
    "a header that is not JSON": _frame(b"R", b"{not json"),
    "a header that is a list": _frame(b"R", b"[1]"),
    "a request without its task": _frame(b"R", orjson.dumps({"id": 1, "arrived": 0.0})),
    "a cancel with an id that is a string": _frame(b"C", orjson.dumps({"id": "1"})),
    "a request with a header of nulls": _frame(
        b"R", orjson.dumps({"id": None, "task": None, "arrived": None})
    ),
    "a frame that claims 2 GiB": struct.pack("<cII", b"R", 1 << 31, 0),
}


def connect_as(uid: int, path: str) -> str:
    """Try to connect to `path` (and send junk) from a forked child that has become user `uid`."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        outcome = b"refused"
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
                sock.sendall(b"junk" * 16)
                outcome = b"connected"
        except PermissionError:
            pass
        except BaseException as exc:  # reported to the parent, which fails the test
            outcome = repr(exc).encode()
        os.write(write, outcome)
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read, "rb") as answer:
        return answer.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, classifier_dirs):
    """One server for every neighbour: each junk is sent after the others, to the same process."""
    store = classify_store(tmp_path_factory.mktemp("neighbours") / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1") as base:
        assert httpx.post(f"{base}/v1/classify", json=LIGHT, timeout=30).status_code == 200
        yield base


def test_another_local_user_cannot_connect_to_the_engine(server):
    if os.geteuid() != 0:
        message = "needs root, to act as another local user"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI runs as root)")
        pytest.skip(message)
    (worker,) = worker_pids(server.process.pid)
    (path,) = listening_sockets(worker)
    assert connect_as(NOBODY, path) == "refused"
    assert oct(Path(path).parent.stat().st_mode & 0o777) == "0o700"
    assert httpx.post(f"{server}/v1/classify", json=LIGHT, timeout=30).status_code == 200


@pytest.mark.parametrize("junk", list(JUNK), ids=list(JUNK))
def test_junk_on_an_engine_socket_costs_only_its_own_connection(server, junk):
    (worker,) = worker_pids(server.process.pid)
    (path,) = listening_sockets(worker)
    with socket.socket(socket.AF_UNIX) as neighbour:
        neighbour.settimeout(10)
        neighbour.connect(path)
        neighbour.sendall(JUNK[junk])
        assert neighbour.recv(1) == b"", "the inference process closes a stream that sent junk"
    answer = httpx.post(f"{server}/v1/classify", json=LIGHT, timeout=30)
    assert answer.status_code == 200, answer.text
    assert worker_pids(server.process.pid) == [worker], "the same inference process serves on"
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
