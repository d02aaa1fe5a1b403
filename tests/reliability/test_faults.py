"""Faults: an inference worker SIGKILLed mid-batch is replaced and its in-flight requests get 503 at once (not
a hang); SIGTERM fails readiness first, lets in-flight requests finish with 200, then exits 0; Ctrl-C stops
every process of the server with exit code 0 and no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.http.conftest import build_tiny_store
from tests.reliability.conftest import (
    HEAVY,
    LIGHT,
    burst,
    classify_store,
    closed_loop,
    metric_sum,
    scrape,
    statuses,
    worker_pids,
)
from tests.server_process import log_entries, running_server

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


async def wait_for_async(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


def held_by_worker(base: str) -> bool:
    """Six clients' requests in flight, after at least one batch of theirs was answered."""
    samples = scrape(base)
    answered = metric_sum(samples, "bertserve_requests_total", endpoint="classify", code="200")
    return answered >= 6 and metric_sum(samples, "bertserve_requests_in_flight", endpoint="classify") == 6


def test_worker_killed_mid_batch_is_replaced_and_its_requests_fail_fast(tmp_path, classifier_dirs):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    # request_timeout far above the client's: a request lost with the worker would show as a client timeout.
    # The worker holds what it took for a whole second waiting for more (six clients' requests never fill
    # 1024 sequences), so the kill lands while it holds requests: with the tiny model's fast forward and
    # tokenizing in the HTTP processes, a worker that computes at once is idle most of the time.
    args = ("--workers", "1", "--max-batch-size", "1024", "--batch-timeout", "1", "--request-timeout", "60")
    with running_server(store.root, *args) as base:
        url = f"{base}/v1/classify"
        (worker,) = worker_pids(base.process.pid)
        if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):  # the environment's choice wins
            environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
            assert b"GOMP_SPINCOUNT=10000" in environ, "OpenMP threads spin briefly, then sleep, on the CPU"

        async def load_then_kill() -> list:
            stop = asyncio.Event()
            clients = asyncio.create_task(closed_loop(url, HEAVY, clients=6, stop=stop, client_timeout=30))
            # six clients of 32 inputs each: once a first batch is answered and all six are in flight again,
            # the worker holds their requests (it waits a second for more before computing)
            await wait_for_async(lambda: held_by_worker(base), 60, "six requests in flight after a batch")
            os.kill(worker, signal.SIGKILL)
            # keep the load on until the new worker has answered (bounded by the clients' timeout); the
            # liveness route answers throughout: a probe on it never restarts a pod for a worker replacement
            while not stop.is_set():
                replaced = [p for p in worker_pids(base.process.pid) if p != worker]
                ready = httpx.get(f"{base}/health", timeout=5).status_code == 200
                live.append(httpx.get(f"{base}/live", timeout=5).status_code)
                if replaced and ready:
                    stop.set()
                await asyncio.sleep(0.2)
            return await clients

        live: list[int] = []
        outcomes = asyncio.run(load_then_kill())
        counts = statuses(outcomes)
        print(f"\nworker {worker} killed under load: {dict(counts)}; /live meanwhile: {set(live)}")
        assert live and set(live) == {200}, "liveness stays 200 while the worker is replaced"
        assert set(counts) <= {200, 503}, f"an error or an answer for every request, never a hang: {counts}"
        lost = [o for o in outcomes if o.status == 503]
        assert lost, "the request the worker was computing is answered 503"
        assert all(o.body["error"]["code"] == "worker_lost" for o in lost)
        assert all(o.headers.get("retry-after") == "1" for o in lost), "every 503 says when to retry"

        (new_worker,) = worker_pids(base.process.pid)
        assert new_worker != worker
        assert httpx.post(url, json=LIGHT, timeout=10).status_code == 200
        samples = scrape(base)
        assert metric_sum(samples, "bertserve_worker_restarts_total", slot="0") == 1
        assert metric_sum(samples, "bertserve_requests_total", endpoint="classify", code="503") == len(lost)


def test_requests_sent_right_after_an_idle_worker_dies_are_answered_not_lost(tmp_path, classifier_dirs):
    """A worker killed while it waits for work leaves a wait pending in the queue's Manager; what that wait
    receives goes back to the queue (or is answered 503), so a request sent just then never hangs."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1", "--request-timeout", "60") as base:
        url = f"{base}/v1/classify"
        (worker,) = worker_pids(base.process.pid)
        os.kill(worker, signal.SIGKILL)
        outcomes = asyncio.run(burst(url, LIGHT, 4, client_timeout=30))
        counts = statuses(outcomes)
        assert set(counts) <= {200, 503}, f"an answer or an error, never a hang: {counts}"
        assert all(o.body["error"]["code"] == "worker_lost" for o in outcomes if o.status == 503)
        assert all(o.headers.get("retry-after") == "1" for o in outcomes if o.status == 503)
        wait_for(lambda: httpx.get(f"{base}/health", timeout=5).status_code == 200, 60, "a new worker")
        assert httpx.post(url, json=LIGHT, timeout=10).status_code == 200


def _sigterm_under_load(store, sent: int) -> tuple[list, list, list, int]:
    """Send `sent` requests, SIGTERM once all are in flight, keep checking /health and sending new requests
    until they are answered; the outcomes, both check lists and the exit code. The batch waits up to 1 s to
    fill (batch timeout, room for more than `sent`), so the requests are still in flight at SIGTERM however
    fast the CPU: tiny models answered 64 heavy requests before a single check could see the drain."""
    args = ("--workers", "1", "--max-batch-size", "256", "--batch-timeout", "1", "--request-timeout", "60")
    left_before = leftovers()
    with running_server(store.root, *args, env={"BERTSERVE_DRAIN_SECONDS": "30"}) as base:
        url = f"{base}/v1/classify"

        async def terminate_under_load() -> tuple[list, list, list]:
            in_flight = asyncio.create_task(burst(url, LIGHT, sent, client_timeout=60))
            health, late = [], []
            async with httpx.AsyncClient(timeout=10) as client:
                wait = time.monotonic() + 10
                while time.monotonic() < wait:
                    text = (await client.get(f"{base}/metrics")).text
                    if f'bertserve_requests_in_flight{{endpoint="classify"}} {sent}.0' in text:
                        break
                    await asyncio.sleep(0.02)
                base.process.send_signal(signal.SIGTERM)
                # New requests are sent without awaiting their answers: one admitted while the signal was
                # on its way joins the batch in flight and comes back with it (awaiting it took the drain).
                posts = []
                while not in_flight.done():
                    posts.append(asyncio.create_task(client.post(url, json=LIGHT)))
                    try:
                        health.append((await client.get(f"{base}/health")).status_code)
                    except httpx.TransportError:
                        break  # it finished and stopped listening between two checks
                    await asyncio.sleep(0.05)
                for answer in await asyncio.gather(*posts, return_exceptions=True):
                    if isinstance(answer, httpx.TransportError):
                        break  # sent after it stopped listening
                    late.append(answer.status_code)
                    if answer.status_code == 503:
                        assert answer.headers.get("retry-after") == "1", "a draining server's 503"
            return await in_flight, health, late

        outcomes, health, late = asyncio.run(terminate_under_load())
        code = base.process.wait(timeout=60)
        assert not list(base.tmp.glob("bertserve-metrics-*")), "its metrics folder is removed on exit"
        left = leftovers(base.tmp) - left_before
        assert not left, f"no ZeroMQ broker ran and the engine's socket folder is removed: {left}"
        return outcomes, health, late, code


def leftovers(*folders: Path) -> set[Path]:
    """LitServe's ZeroMQ broker's socket files (always in /tmp) and the engine's socket folders."""
    found = set(Path("/tmp").glob("zmq-*.ipc"))
    for folder in (Path("/tmp"), *folders):
        found |= set(folder.glob("bertserve-engine-*"))
    return found


def test_sigterm_fails_readiness_finishes_in_flight_requests_then_exits_zero(tmp_path, classifier_dirs):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    sent = 64
    for _ in range(3):
        outcomes, health, late, code = _sigterm_under_load(store, sent)
        if len(health) >= 3:
            break  # a drain long enough to observe (tiny models on a fast CPU can finish within one check)
    print(f"\nin flight at SIGTERM: {dict(statuses(outcomes))}; /health meanwhile: {set(health)}")
    assert statuses(outcomes) == {200: sent}, "every request in flight at SIGTERM is answered"
    # The signal reaches the main process a moment after it is sent: a check racing it may still pass.
    for name, seen in (("readiness", health), ("new requests", late)):
        assert 503 in seen, f"{name}: never 503 during the drain: {seen}"
        first = seen.index(503)
        assert first <= 2, f"{name}: 503 only after {first} checks (~{first * 0.05:.2f} s): {seen}"
        assert set(seen[first:]) == {503}, f"{name}: once the drain starts it stays 503: {seen}"
    assert code == 0


def live_group_members(group: int) -> list[str]:
    """Processes of a process group that are still running (a zombie waiting for its reaper is done)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue  # it exited while we looked
        if int(pgrp) == group and state != "Z":
            members.append(stat.parent.name)
    return members


def test_ctrl_c_stops_every_process_quietly(tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole process group: main, HTTP processes, the inference
    process (every task's models), LitServe's Manager. The main process drains and stops; nobody prints a
    KeyboardInterrupt traceback, which would also break the one-JSON-object-per-line log."""
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    with running_server(store.root, "--log-level", "info") as base:
        assert httpx.post(f"{base}/v1/fill-mask", json={"inputs": "a [MASK]"}, timeout=30).status_code == 200
        group = os.getpgid(base.process.pid)
        assert len(live_group_members(group)) >= 4, "main, 2 HTTP processes, the inference process"
        os.killpg(group, signal.SIGINT)
        code = base.process.wait(timeout=60)
        wait_for(lambda: not live_group_members(group), 30, "every process of the server to exit")
    assert code == 0
    messages = [entry["message"] for entry in log_entries(base.log)]
    drained = [message for message in messages if message.startswith("drained")]
    assert len(drained) == 1, f"the main process drains, once (HTTP processes inherit its handler): {drained}"


def spawned_workers(group: int) -> list[str]:
    """Live members of the server's process group started by multiprocessing's spawn (inference workers)."""
    workers = []
    for pid in live_group_members(group):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return workers


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_a_stop_during_start_up_ends_without_opening_the_port(tmp_path, stop):
    """A pod deleted, or a Ctrl-C, while the workers start: the server stops as soon as they are up, starts no
    HTTP process (nothing would be served), and exits 0 with every process gone and every log line JSON.
    Before, an early SIGTERM hung 30 s on an HTTP process that had not yet taken over the signals, and a
    Ctrl-C killed workers during their imports (tracebacks) and left start-up waiting for them for ever."""
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")

    def loading(base) -> bool:  # the inference process is spawned: it is importing torch and loading
        return len(spawned_workers(base.process.pid)) >= 1

    with running_server(store.root, "--log-level", "info", until=loading) as base:
        group = os.getpgid(base.process.pid)
        if stop == "sigterm":
            base.process.send_signal(signal.SIGTERM)  # an orchestrator signals the main process
        else:
            os.killpg(group, signal.SIGINT)  # a terminal signals every process of the group
        code = base.process.wait(timeout=120)
        wait_for(lambda: not live_group_members(group), 30, "every process of the server to exit")
    assert code == 0
    messages = [entry["message"] for entry in log_entries(base.log)]
    assert "stopped during start-up: not starting the HTTP servers" in messages, messages[-10:]
    assert not [message for message in messages if message.startswith("Started server process")]
    assert not [message for message in messages if "Did not terminate gracefully" in message]


def test_a_port_in_use_fails_start_up_before_any_model_loads(tmp_path):
    """The port is taken first: a second server on it says so in one line and exits 2 at once, instead of
    loading every model and failing when the HTTP processes start. The port is held as a running bertserve
    holds it (SO_REUSEPORT): a second server must not share it."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "bertserve.cli", "serve", "--store", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            env={**env, "BERTSERVE_DEVICE": "cpu"},
            timeout=60,
        )
    assert done.returncode == 2, done
    assert f"cannot listen on 127.0.0.1 port {port}" in done.stderr + done.stdout, done
    assert "Traceback" not in done.stderr, done.stderr
    print(f"\nrefused in {time.monotonic() - started:.1f} s")


def test_a_worker_that_cannot_come_back_makes_the_server_exit_non_zero(tmp_path, classifier_dirs):
    """The replacement worker finds every version corrupt: the server stops, for the orchestrator to act."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1") as base:
        for version in store.versions("sentiment"):
            (store.version_dir("sentiment", version) / "model.safetensors").write_bytes(b"corrupt")
        (worker,) = worker_pids(base.process.pid)
        os.kill(worker, signal.SIGKILL)
        code = base.process.wait(timeout=120)
        wait_for(lambda: not live_group_members(base.process.pid), 30, "every process of the server to exit")
    assert code == 1
    log = base.log.read_text()
    assert "refusing sentiment@1" in log and "refusing sentiment@2" in log, "each damaged version is named"
    messages = [entry["message"] for entry in log_entries(base.log) if entry["level"] == "error"]
    assert "inference worker 0 failed its setup: stopping the server" in messages, messages
    assert messages[-1] == "an inference worker failed its setup; exiting for the orchestrator to restart us"


def test_a_worker_that_keeps_dying_as_it_serves_backs_off_then_the_server_gives_up(tmp_path, classifier_dirs):
    """Each replacement dies soon after it is ready (as a request that kills it on every retry, or an OOM
    that recurs, would make it): the first is replaced at once, later ones after growing delays, and after
    a bounded number the server says why, fails /health and exits 1. Before, each death in service reset
    the count and the loop went on for ever, every request answered 503 "retry it"."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1", "--log-level", "info") as base:
        killed: list[int] = []
        verdicts = []
        deadline = time.monotonic() + 150
        while base.process.poll() is None:
            assert time.monotonic() < deadline, f"still restarting after killing {len(killed)} workers"
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{base}/health", timeout=5)
                if health.status_code == 200:  # ready: this one dies as it serves
                    for pid in worker_pids(base.process.pid):
                        if pid not in killed:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
                elif killed:
                    verdicts.append(health.status_code)
            time.sleep(0.1)
        code = base.process.wait(timeout=60)
        wait_for(lambda: not live_group_members(base.process.pid), 30, "every process of the server to exit")
    assert code == 1
    assert len(killed) == 5, f"the first worker and four replacements: {killed}"
    entries = log_entries(base.log)
    delays = [e["message"] for e in entries if "times in a row soon after its start" in e["message"]]
    assert [message.rsplit(" in ", 1)[1] for message in delays] == ["0.5 s", "1 s", "2 s"], delays
    errors = [e["message"] for e in entries if e["level"] == "error"]
    assert any(m.startswith("giving up: inference worker 0 died 5 times in a row") for m in errors), errors
    assert 503 in verdicts, "/health fails while it backs off and once it gives up"


# Loaded by every process of the server (PYTHONPATH): the model fails any forward pass holding the word
# "moon", as a model can fail on one batch (a device error, a kernel bug) with nothing wrong in a request.
FAILING_FORWARD = """
import bertserve.runtime.loaded as loaded

classify = loaded.LoadedModel.classify


def failing_classify(self, requests, *args):
    poison = self.tokenizer.convert_tokens_to_ids("moon")
    if any(poison in item.ids for request in requests for item in request.inputs):
        raise RuntimeError("injected fault: the forward pass failed")
    return classify(self, requests, *args)


loaded.LoadedModel.classify = failing_classify
"""


def test_a_failing_batch_answers_its_requests_500_and_the_worker_serves_the_next(tmp_path, classifier_dirs):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAILING_FORWARD)
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    # the first request of a batch waits a second for more: the eight sent at once share one batch
    args = ("--workers", "1", "--max-batch-size", "1024", "--batch-timeout", "1")
    with running_server(store.root, *args, env=env) as base:
        url = f"{base}/v1/classify"
        (worker,) = worker_pids(base.process.pid)
        before = scrape(base)
        bodies = [{"inputs": [f"the drug worked for {word}"]} for word in ("pain", "sleep", "days", "weeks")]
        bodies += [{"inputs": ["the moon"]}] + [{"inputs": [f"awful {w}"]} for w in ("nausea", "tea", "dog")]

        async def send_together() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return list(await asyncio.gather(*(client.post(url, json=body) for body in bodies)))

        answers = asyncio.run(send_together())
        codes = [answer.status_code for answer in answers]
        assert codes[4] == 500 and set(codes) <= {200, 500}, codes
        failed = [answer for answer in answers if answer.status_code == 500]
        assert len(failed) > 1, f"the batch-mates of the failing request: {codes}"
        for answer in failed:
            assert answer.json()["error"]["code"] == "internal_error", answer.text
        after = scrape(base)
        assert worker_pids(base.process.pid) == [worker], "the worker survived its failed batch"
        following = httpx.post(url, json=bodies[0], timeout=30)
        assert following.status_code == 200 and following.json()["version"] == "1", following.text
        counted = [
            metric_sum(s, "bertserve_requests_total", endpoint="classify", code="500")
            for s in (before, after)
        ]
        assert counted[1] - counted[0] == len(failed), "/metrics counts every 500"
        assert metric_sum(after, "bertserve_worker_restarts_total") == 0
    messages = [entry["message"] for entry in log_entries(base.log)]
    assert [m for m in messages if m.startswith("batch of")] == [f"batch of {len(failed)} requests failed"]


def test_a_worker_killed_in_every_setup_backs_off_then_the_server_gives_up_and_exits_non_zero(
    tmp_path, classifier_dirs
):
    """Something kills each replacement worker while it loads (as an OOM killer would): restarts come after
    growing delays, and after a bounded number of failed setups the server says why and exits 1."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1", "--log-level", "info") as base:
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while base.process.poll() is None:
            assert time.monotonic() < deadline, f"still restarting after killing {len(killed)} workers"
            for pid in worker_pids(base.process.pid):
                if pid not in killed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.05)
        code = base.process.wait(timeout=60)
        wait_for(lambda: not live_group_members(base.process.pid), 30, "every process of the server to exit")
    assert code == 1
    entries = log_entries(base.log)
    delays = [e["message"] for e in entries if "setup(s) in a row: restarting it in" in e["message"]]
    assert [message.rsplit(" in ", 1)[1] for message in delays] == ["0.5 s", "1 s", "2 s"], delays
    errors = [e["message"] for e in entries if e["level"] == "error"]
    assert any(m.startswith("giving up: inference worker 0 died during its setup 4 times") for m in errors)
    assert errors[-1] == "an inference worker failed its setup; exiting for the orchestrator to restart us"
    assert len(killed) == 5, "the worker that served, then four replacements"
