"""Start a real `bertserve serve` process on 127.0.0.1 and wait until /health says it is ready."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


class ServerURL(str):
    """The base URL; `.process` is the server's Popen, for tests that signal it or read its exit code;
    `.log` the file holding its stdout and stderr; `.tmp` its TMPDIR (what it leaves there stays with the
    test, not in /tmp)."""

    process: subprocess.Popen
    log: Path
    tmp: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(base: ServerURL) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def running_server(
    store: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    until: Callable[[ServerURL], bool] = healthy,
) -> Iterator[ServerURL]:
    """Yield the base URL of a server on `store` once `until` holds (by default: /health says ready);
    stop it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    log = Path(store).parent / f"server-{port}.log"
    scratch = Path(store).parent / f"tmp-{port}"
    scratch.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # fp32 on the CPU unless a test asks otherwise: answers are compared with transformers' own CPU float32
    defaults = {
        "BERTSERVE_DRAIN_SECONDS": "2",
        "BERTSERVE_TORCH_THREADS": "1",
        "BERTSERVE_BACKEND": "fp32",
        "BERTSERVE_DEVICE": "cpu",
        # no /v1/explain worker (one process less per server on a 2-core CI) unless a test asks for one
        "BERTSERVE_EXPLAIN_WORKERS": "0",
    }
    environment.update({**defaults, "TMPDIR": str(scratch), **(env or {})})
    command = [
        sys.executable,
        "-m",
        "bertserve.cli",
        "serve",
        "--store",
        str(store),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    base = ServerURL(f"http://127.0.0.1:{port}")
    base.process = process
    base.log = log
    base.tmp = scratch
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if until(base):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5 if until is healthy else 0.02)
        yield base
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers too
    process.wait()


def log_entries(log: Path) -> list[dict]:
    """Every line of a JSON-format server log, parsed. A line that is not one JSON log object fails the test:
    log shippers drop such lines, and with them whatever they said. A last line still without its newline
    is being written and waits for the next read."""
    text = log.read_text()
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines.pop()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys(), (
            f"{log.name} line {number} is not a JSON log object: {line[:300]!r}"
        )
        entries.append(entry)
    return entries
