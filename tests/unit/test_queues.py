"""The queues between processes: requests reach a worker in bulk and are recorded as held by it until it
answers them; answers travel back over ZeroMQ, none lost however far behind an HTTP process falls."""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import pickle
import time
from types import SimpleNamespace

from fastapi import HTTPException
from starlette.responses import Response

from bertserve.config import Settings
from bertserve.engine import request_queue
from bertserve.engine.litserve_seam import answer
from bertserve.engine.loop import SequenceBatchingLoop
from bertserve.engine.transport import ResponseTransport
from bertserve.server import INSTRUMENTED, InFlight, build_server
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder


def test_server_queues_requests_in_bulk_and_answers_over_zmq(
    store_root, tiny_classifier_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    import_hf_folder(ModelStore(store_root), tiny_classifier_dir, "sentiment")
    assembled = build_server(Settings(store=store_root), tmp_path / "draining", InFlight(tuple(INSTRUMENTED)))
    server = assembled.litserver
    (route,) = [r for r in server.app.routes if getattr(r, "path", "") == "/v1/classify"]
    (auth,) = [dependency.call for dependency in route.dependant.dependencies]
    assert inspect.iscoroutinefunction(auth), "a sync dependency costs every request a thread-pool hop"
    manager = server._init_manager(2)  # LitServer.run starts so: the broker, then the transport
    try:
        requests = server.litapi_request_queues["/v1/classify"]
        requests.put((0, "uid", 0.0, {}))
        assert requests.take(1234, 4) == [(0, "uid", 0.0, {})]
        transport = server._transport
        assert isinstance(transport, ResponseTransport)
        # a worker gets the transport pickled; its answers for HTTP process 1 must reach that process only
        worker_side = pickle.loads(pickle.dumps(transport))
        assert isinstance(worker_side, ResponseTransport)
        ok = Response(
            b'{"label": "pos"}', 200, media_type="application/json", headers={"x-model": "sentiment@1"}
        )
        worker_side.send(answer("uid-0", ok, True, 0), consumer_id=0)  # sent before anyone listens
        refused = HTTPException(422, {"code": "too_long"}, {"x-why": "length"})
        worker_side.send_many(
            [answer("uid-1", ok, True, 3), answer("uid-2", refused, False, 3)], consumer_id=1
        )

        async def receive(consumer: int, count: int) -> list:
            return [await transport.areceive(consumer_id=consumer, timeout=10) for _ in range(count)]

        (first, (response, *_)), (second, (error, *_)) = asyncio.run(receive(1, 2))
        assert (first, second) == ("uid-1", "uid-2"), "answers for HTTP process 1 reach it alone, in order"
        assert (response.status_code, response.body, response.headers["x-model"]) == (
            200,
            b'{"label": "pos"}',
            "sentiment@1",
        )
        assert (error.status_code, error.detail, error.headers) == (
            422,
            {"code": "too_long"},
            {"x-why": "length"},
        )
        worker_side.close()
        pickle.loads(pickle.dumps(transport)).close()  # never connected (the main process at shutdown)
    finally:
        manager.shutdown()


def request(n: int) -> tuple:
    return (n % 2, f"uid-{n}", 0.0, {"inputs": ["text"]})  # (response queue, uid, submitted, payload)


def test_workers_take_in_bulk_and_what_a_dead_worker_held_is_returned_never_lost():
    request_queue.register()
    manager = mp.Manager()
    try:
        queue = manager.RequestQueue()
        assert queue.take(7, 8, 0.05) == []  # waited, nothing came
        for n in range(5):
            queue.put(request(n))
        assert queue.take(7, 3) == [request(0), request(1), request(2)]  # the batch's room, in order
        assert queue.release(7, ["uid-2"]) == (2, [])  # answered 0 and 1, carries 2; two still queued
        assert queue.take(8, 8) == [request(3), request(4)]  # only what is there: no waiting for more
        assert queue.retire(7) == [(0, "uid-2")]  # worker 7 died holding request 2
        assert queue.retire(8) == [(1, "uid-3"), (0, "uid-4")]
        # a take the dead worker had left waiting in the Manager gives what it got back, for the replacement
        queue.put(request(5))
        assert queue.take(7, 8) == [] and queue.qsize() == 1
        assert queue.take(9, 8) == [request(5)]
        assert queue.release(9, []) == (0, []) and queue.retire(9) == []
    finally:
        manager.shutdown()


def test_a_cancelled_request_is_taken_out_of_the_queue_or_reported_to_the_worker_holding_it():
    request_queue.register()
    manager = mp.Manager()
    try:
        queue = manager.RequestQueue()
        for n in range(4):
            queue.put(request(n))
        assert queue.take(7, 2) == [request(0), request(1)]  # worker 7 holds 0 and 1
        assert queue.cancel(["uid-1", "uid-3", "uid-answered-long-ago"]) == 1, "3 was still queued"
        assert queue.qsize() == 1 and queue.take(8, 8) == [request(2)]
        # worker 7 computed 0 and carries 1: the queue tells it 1 was cancelled; it holds nothing after
        assert queue.release(7, ["uid-1"]) == (0, ["uid-1"])
        assert queue.retire(7) == [], "a cancelled request is no longer held"
        assert queue.release(8, []) == (0, [])
    finally:
        manager.shutdown()


class CountingQueue:
    """RequestQueue's take() over a list, counting the calls (each is a round trip to the Manager)."""

    def __init__(self, count: int) -> None:
        self.entries = [(0, f"uid-{n}", time.monotonic(), {"inputs": ["text"]}) for n in range(count)]
        self.timeouts: list[float] = []

    def take(self, holder: int, limit: int, timeout: float = 0.0) -> list:
        self.timeouts.append(timeout)
        taken, self.entries = self.entries[:limit], self.entries[limit:]
        return taken


def batching_api(batch_timeout: float) -> SimpleNamespace:
    return SimpleNamespace(
        max_batch_size=4,
        batch_timeout=batch_timeout,
        request_timeout=30,
        endpoint="classify",
        refresh=lambda: None,
        decode_request=lambda payload: SimpleNamespace(sequences=len(payload["inputs"])),
    )


def collect(api, queue: CountingQueue) -> tuple[list[str], list[str]]:
    batch, carried, stop = SequenceBatchingLoop()._collect(api, queue, 1234, [])
    assert not stop
    return [item.uid for item in batch], [item.uid for item in carried]


def test_a_lone_request_costs_one_take_and_a_full_queue_fills_the_batch_in_one():
    queue = CountingQueue(1)
    assert collect(batching_api(0.0), queue) == (["uid-0"], [])
    assert len(queue.timeouts) == 1, "the queue was emptied: asking it again only adds a round trip"

    queue = CountingQueue(6)
    assert collect(batching_api(0.0), queue) == (["uid-0", "uid-1", "uid-2", "uid-3"], [])
    assert len(queue.timeouts) == 1 and len(queue.entries) == 2


def test_a_batch_timeout_waits_for_more_after_the_queue_is_emptied():
    queue = CountingQueue(1)
    assert collect(batching_api(0.2), queue) == (["uid-0"], [])
    assert len(queue.timeouts) == 2 and 0 < queue.timeouts[1] <= 0.2


def _stalled_http_process(answers: int, ready, done) -> None:
    """An HTTP process that reads nothing until every answer has been sent, then counts what arrives."""
    transport = ResponseTransport("test-stalled-" + str(answers))

    async def read_all() -> list[str]:
        first = asyncio.create_task(transport.areceive(consumer_id=0, timeout=30))  # binds, then waits
        await asyncio.sleep(0.1)
        ready.set()
        while not done.is_set():  # stalled: an event loop busy elsewhere, reading nothing
            time.sleep(0.01)
        uids = [(await first)[0]]
        while len(uids) < answers:
            uids.append((await transport.areceive(consumer_id=0, timeout=5))[0])
        return uids

    uids = asyncio.run(read_all())
    assert uids == [f"uid-{n}" for n in range(answers)], "every answer, once, in order"


def test_no_answer_is_lost_when_an_http_process_stalls_past_any_high_water_mark():
    """ZeroMQ's default high-water mark is 1,000 messages: a PUB socket drops past it. 5,000 answers sent
    one message each to a process that reads none of them until the last is sent all arrive."""
    answers = 5000
    context = mp.get_context("spawn")
    ready, done = context.Event(), context.Event()
    reader = context.Process(target=_stalled_http_process, args=(answers, ready, done))
    reader.start()
    try:
        assert ready.wait(60)
        worker_side = ResponseTransport(f"test-stalled-{answers}")
        ok = Response(b"{}", 200, media_type="application/json")
        for n in range(answers):
            worker_side.send(answer(f"uid-{n}", ok, True, 0), consumer_id=0)
        done.set()
        reader.join(60)
        assert reader.exitcode == 0, "the stalled process received every answer (see its assertion above)"
        worker_side.close()
    finally:
        reader.kill()
