"""Overload: a bounded queue answers 503 + Retry-After past it, requests that outlive their timeout get 504
and are never computed, and the server serves normally afterwards.

Statuses and metric counts are asserted, never times; the latencies are printed for the closing note."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import httpx
import pytest

from tests.reliability.conftest import (
    HEAVY,
    LIGHT,
    burst,
    classify_store,
    closed_loop,
    metric_sum,
    open_loop,
    scrape,
    statuses,
)
from tests.server_process import running_server

pytestmark = pytest.mark.slow


def measure_capacity(url: str, seconds: float = 2.0) -> float:
    """Requests per second the server completes with a few clients keeping it busy."""

    async def run() -> float:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        outcomes = await closed_loop(url, HEAVY, clients=4, stop=stop)
        assert statuses(outcomes) == {200: len(outcomes)}
        return len(outcomes) / seconds

    return asyncio.run(run())


def wait_idle(base: str, timeout: float = 30) -> dict:
    """Metrics once nothing is in flight any more (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if metric_sum(samples, "bertserve_requests_in_flight") == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_four_times_capacity_gets_fast_503s_no_500s_and_the_server_recovers(tmp_path, classifier_dirs):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    args = ("--workers", "1", "--max-batch-size", "32", "--max-queue", "4", "--request-timeout", "5")
    with running_server(store.root, *args) as base:
        url = f"{base}/v1/classify"
        capacity = measure_capacity(url)
        before = scrape(base)
        outcomes = asyncio.run(open_loop(url, HEAVY, rate=4 * capacity, duration=4, client_timeout=20))
        counts = statuses(outcomes)
        print(f"\ncapacity {capacity:.1f} req/s; {len(outcomes)} sent at 4x that: {dict(counts)}")

        assert set(counts) <= {200, 503, 504}, f"only 200/503/504, no 500 and no hung connection: {counts}"
        assert counts[503] > 0 and counts[200] > 0, counts
        rejected = [o for o in outcomes if o.status == 503]
        assert all(o.headers.get("retry-after") == "1" for o in rejected)
        assert all(o.body["error"]["code"] == "unavailable" for o in rejected)
        for code, group in (("200", 200), ("503", 503)):
            took = sorted(o.received - o.sent for o in outcomes if o.status == group)
            p99 = took[int(0.99 * (len(took) - 1))]
            print(f"{code}: median {statistics.median(took) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")

        after = wait_idle(base)
        for code, count in counts.items():
            sent = metric_sum(after, "bertserve_requests_total", endpoint="classify", code=str(code))
            sent -= metric_sum(before, "bertserve_requests_total", endpoint="classify", code=str(code))
            assert sent == count, f"/metrics counts every {code} exactly"

        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        recovered = [httpx.post(url, json=LIGHT, timeout=10).status_code for _ in range(20)]
        assert recovered == [200] * 20, "after the burst every request is served again"
        assert measure_capacity(url) > 0


def test_requests_past_their_timeout_get_504_and_are_dropped_not_computed(tmp_path, classifier_dirs):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    args = ("--workers", "1", "--max-batch-size", "32", "--max-queue", "1000", "--request-timeout", "0.5")
    sent = 96  # a burst that takes the worker well over the timeout to compute
    with running_server(store.root, *args) as base:
        url = f"{base}/v1/classify"
        outcomes = asyncio.run(burst(url, HEAVY, sent))
        counts = statuses(outcomes)
        assert set(counts) <= {200, 504}, counts
        assert counts[504] > 0 and counts[200] > 0, counts
        assert all(o.body["error"]["code"] == "timeout" for o in outcomes if o.status == 504)

        # A request that timed out is never computed. Its 504 and the worker's expiry count from the same
        # moment (the middleware's arrival time): the HTTP process withdraws it from the queue at its 504
        # (cancelled), or the worker drops it before the forward pass (expired). A forward pass never starts
        # past its requests' deadline; one that started before it may still end after the 504.
        # The queue is first in, first out: once a request sent now is answered, the worker has taken (and
        # dropped or computed) every request queued before it. That one is not part of the burst.
        assert httpx.post(url, json=LIGHT, timeout=30).status_code == 200
        samples = wait_idle(base)
        computed = metric_sum(samples, "bertserve_batch_requests_sum", endpoint="classify") - 1
        dropped = metric_sum(samples, "bertserve_expired_requests_total", endpoint="classify")
        cancelled = metric_sum(samples, "bertserve_cancelled_requests_total", endpoint="classify")
        print(f"\n{dict(counts)}; computed {computed:.0f}, expired {dropped:.0f}, withdrawn {cancelled:.0f}")
        assert computed + dropped + cancelled == sent, "each request is computed or dropped, exactly once"
        # every forward pass started within the timeout of its requests' arrival (0.5 s is a bucket bound)
        waited = metric_sum(samples, "bertserve_queue_duration_seconds_bucket", endpoint="classify", le="0.5")
        assert waited == metric_sum(samples, "bertserve_queue_duration_seconds_count", endpoint="classify")
        assert waited == computed + 1, "the queue time of every computed request is observed"


def test_a_request_whose_client_disconnected_is_withdrawn_before_it_is_computed(tmp_path, classifier_dirs):
    """Sixteen clients keep the inference process busy with sentiment@2 (one request per batch); five more
    requests for the same model, queued behind them, are sent by a client that gives up after 5 ms. Those
    are withdrawn from the queue, counted, and never computed. (Requests for another model would not wait:
    batches alternate between models.)"""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    args = ("--workers", "1", "--max-batch-size", "32", "--request-timeout", "60")
    args += ("--models", "sentiment:production,sentiment@2")
    sent = 5
    flood: list = []
    with running_server(store.root, *args) as base:
        url = f"{base}/v1/classify"

        async def give_up_while_queued() -> None:
            stop = asyncio.Event()
            body = {**HEAVY, "model": "sentiment@2"}
            load = asyncio.create_task(closed_loop(url, body, clients=16, stop=stop, outcomes=flood))
            try:
                while len(flood) < 32:  # the queue holds the other clients' requests from here on
                    await asyncio.sleep(0.05)
                impatient = httpx.Timeout(10, read=0.005)
                async with httpx.AsyncClient(
                    timeout=impatient, limits=httpx.Limits(max_keepalive_connections=0)
                ) as client:
                    for _ in range(sent):
                        with pytest.raises(httpx.ReadTimeout):
                            await client.post(url, json={**LIGHT, "model": "sentiment@2"})
            finally:
                stop.set()
                assert set(statuses(await load)) == {200}

        asyncio.run(give_up_while_queued())
        samples = wait_idle(base)
    sequences = metric_sum(samples, "bertserve_sequences_total", model="sentiment", version="2")
    computed = sequences - len(HEAVY["inputs"]) * len(flood)  # what is left after the flood's
    cancelled = metric_sum(samples, "bertserve_cancelled_requests_total", endpoint="classify")
    gone = metric_sum(samples, "bertserve_requests_total", endpoint="classify", code="499")
    print(f"\n{sent} clients gone: {cancelled:.0f} withdrawn, {computed:.0f} computed anyway")
    assert gone == sent, "each is logged and counted as 499, client closed request"
    assert cancelled >= 1 and computed + cancelled == sent, (computed, cancelled)


def test_a_small_request_beside_a_large_tokenization_never_stalls_the_event_loop(tmp_path, classifier_dirs):
    """A large classify is tokenized in a thread; a small one that comes meanwhile needs the same tokenizer,
    which is busy: it queues behind it in that thread instead of waiting in the event loop. Before, the loop
    waited for the tokenizer's lock: /live (and every other request) stalled for as long as the large
    tokenization went on (2.4 s for this 3.9 MB body). A stall bound, generous: /live within 1 s."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    large = {"inputs": ["the drug worked and my headache went away " * 450] * 200, "truncate": True}
    # one HTTP process: the small requests and /live meet the large one in the same event loop
    args = ("--workers", "1", "--api-servers", "1", "--max-body-bytes", "8000000", "--max-inputs", "256")
    with running_server(store.root, *args) as base:
        url = f"{base}/v1/classify"

        async def run() -> tuple[list[float], int, list[int]]:
            async with httpx.AsyncClient(timeout=120) as client:
                big = asyncio.create_task(client.post(url, json=large))
                smalls, waits = [], []
                while not big.done():  # small ones all along: some come while the large one tokenizes
                    smalls.append(asyncio.create_task(client.post(url, json=LIGHT)))
                    started = time.perf_counter()
                    assert (await client.get(f"{base}/live")).status_code == 200
                    waits.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)
                return waits, (await big).status_code, [(await small).status_code for small in smalls]

        waits, big_status, small_statuses = asyncio.run(run())
    assert big_status == 200 and set(small_statuses) == {200}
    print(f"\n/live during the large tokenization: worst {max(waits) * 1000:.0f} ms of {len(waits)}")
    assert max(waits) < 1.0, f"/live waited {max(waits):.2f} s: the event loop stalled"


def test_a_body_that_never_arrives_gets_408_within_the_request_timeout(tmp_path, classifier_dirs):
    """A client that declares a body and sends only part of it (slowloris) holds its connection and what it
    sent until the request timeout, on every route: the routes that take a model (FastAPI reads the body)
    and those whose body names its task (POST /, KServe's infer: read before the route is known). Before,
    those two waited for ever. A 408: the client's fault, not the server's."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1", "--request-timeout", "2") as base:
        port = int(base.rsplit(":", 1)[1])
        for path in ("/v1/classify", "/", "/v2/models/sentiment/infer"):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
                head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                client.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + b'{"inputs": ["the dr')
                started = time.monotonic()
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = client.recv(65536)
                    assert chunk, f"{path}: the connection closed without an answer"
                    answer += chunk
                waited = time.monotonic() - started
            status = int(answer.split(b" ", 2)[1])
            assert status == 408, f"{path}: {answer[:300]!r}"
            assert waited < 15, f"{path}: answered after {waited:.1f} s"
        assert httpx.post(f"{base}/v1/classify", json=LIGHT, timeout=30).status_code == 200
