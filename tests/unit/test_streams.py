"""The engine's streams on their own: frames, the inference process's loop (with stand-in tasks, over real
unix sockets in a 0700 folder) and the HTTP process's client. What each test guards is in docs/engine.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from bertserve.engine import wire
from bertserve.engine.admission import Ticket
from bertserve.engine.client import WORKER_LOST, EngineClient
from bertserve.engine.wire import slot_socket
from bertserve.engine.worker import EngineLoop, Explainer, bind_listener
from bertserve.runtime.encoding import Encoded
from bertserve.server import socket_folder

# ---- frames ------------------------------------------------------------------------------------------


def test_frames_round_trip_whole_and_split_at_any_byte():
    frames = [
        wire.frame(wire.REQUEST, {"id": 1, "task": "classify", "arrived": 2.5}, b"\x01\x02"),
        wire.frame(wire.CANCEL, {"id": 1}),
        wire.frame(wire.ANSWER, {"id": 2, "status": 200}, b'{"ok":true}'),
    ]
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        buffer = bytearray(stream[:cut])
        got = wire.read_frames(buffer)
        buffer += stream[cut:]
        got += wire.read_frames(buffer)
        assert not buffer
        assert [(k, h, bytes(b)) for k, h, b in got] == [
            (b"R", {"id": 1, "task": "classify", "arrived": 2.5}, b"\x01\x02"),
            (b"C", {"id": 1}, b""),
            (b"A", {"id": 2, "status": 200}, b'{"ok":true}'),
        ]


def test_bytes_that_are_no_frame_are_refused():
    with pytest.raises(wire.FrameError):
        wire.read_frames(bytearray(b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(wire.FrameError):
        wire.read_frames(bytearray(wire.frame(wire.ANSWER, {})[:9] + b"{not json"))
    for header in ([1], {"id": "1", "status": 200}, {"id": 1}, {"id": True, "status": 200}):
        with pytest.raises(wire.FrameError):  # what the loop reads of a header is checked with the frame
            wire.read_frames(bytearray(wire.frame(wire.ANSWER, header)))


def test_token_ids_cross_as_binary_arrays():
    inputs = [Encoded([101, 7592, 102], [0, 0, 0]), Encoded([101, 2, 102, 3, 102], [0, 0, 0, 1, 1])]
    lengths, body = wire.token_arrays(inputs)
    assert lengths == [3, 5] and len(body) == 8 * 5
    assert wire.token_lists(lengths, memoryview(body)) == [(i.ids, i.type_ids) for i in inputs]
    with pytest.raises(wire.FrameError):
        wire.token_lists([3, 6], memoryview(body))


# ---- the inference process's loop, with stand-in tasks --------------------------------------------------


@dataclass
class Prepared:
    model: SimpleNamespace
    sequences: int
    inputs: list


class StandInTask:
    """A task whose 'model' is named in the job and whose forward pass sleeps `seconds` per batch; it
    records every batch it computed (the ids of the requests)."""

    def __init__(self, endpoint: str, seconds: float = 0.0, max_batch_size: int = 4) -> None:
        self.endpoint = endpoint
        self.seconds = seconds
        self.max_batch_size = max_batch_size
        self.batches: list[list[int]] = []

    def admit(self, header, body):
        prepared = Prepared(SimpleNamespace(ref=header["job"].get("model", "m@1")), 1, [])
        prepared.request_id = header["id"]
        return prepared

    def refresh(self) -> None:
        pass

    def observe_queue(self, waiting) -> None:
        pass

    def predict(self, batch: list) -> list:
        time.sleep(self.seconds)
        self.batches.append([p.request_id for p in batch])
        return [p.request_id for p in batch]

    def render(self, output) -> tuple[bytes, str]:
        return orjson.dumps({"computed": output}), "m@1"


@pytest.fixture
def engine():
    """An EngineLoop on a thread with a classify task (instant) and an explain task (two seconds)."""
    folder = socket_folder()
    classify = StandInTask("classify")
    explain = StandInTask("explain", seconds=2.0)
    loop = EngineLoop(
        bind_listener(slot_socket(folder, 0)),
        {"classify": classify},
        request_timeout=30,
        batch_timeout=0,
        explainer=Explainer("explain", lambda: explain, request_timeout=30),
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop.is_set,), daemon=True)
    thread.start()
    yield SimpleNamespace(
        path=slot_socket(folder, 0), folder=folder, classify=classify, explain=explain, loop=loop
    )
    stop.set()
    thread.join(5)
    shutil.rmtree(folder)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def request(
    request_id: int, task: str = "classify", model: str = "m@1", arrived: float | None = None
) -> bytes:
    header = {"id": request_id, "task": task, "arrived": arrived or time.monotonic(), "job": {"model": model}}
    return wire.frame(wire.REQUEST, header)


def read_answers(sock: socket.socket, count: int, timeout: float = 30) -> list[dict]:
    sock.settimeout(timeout)
    buffer, answers = bytearray(), []
    while len(answers) < count:
        data = sock.recv(1 << 16)
        assert data, f"the stream closed after {len(answers)} of {count} answers"
        buffer += data
        answers += [{**header, "body": bytes(body)} for _, header, body in wire.read_frames(buffer)]
    return answers


def test_the_socket_folder_and_the_socket_are_our_users_alone(engine):
    assert stat.S_IMODE(os.stat(engine.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(engine.path).st_mode) == 0o600
    assert len(engine.path) < 100


def test_no_answer_is_lost_when_an_http_process_stalls_and_others_are_served_meanwhile(engine):
    """5,000 answers to a stream whose reader reads nothing until the last request is sent: the kernel's
    socket buffer fills after a few hundred, the rest wait in the inference process's outbox. Meanwhile
    another HTTP process's requests are answered; then the stalled one gets all 5,000, in order."""
    stalled, other = connect(engine.path), connect(engine.path)
    count = 5000
    stalled.sendall(b"".join(request(n) for n in range(count)))
    deadline = time.monotonic() + 30
    while sum(map(len, engine.classify.batches)) < count:
        assert time.monotonic() < deadline, "every request of the stalled stream is computed"
        time.sleep(0.01)
    assert engine.loop.index == {}, "nothing left waiting"
    other.sendall(request(1))
    assert [a["status"] for a in read_answers(other, 1, timeout=5)] == [200], "a stalled reader delays nobody"
    answers = read_answers(stalled, count)
    assert [a["id"] for a in answers] == list(range(count)) and {a["status"] for a in answers} == {200}


def test_a_flood_of_one_models_requests_does_not_starve_another_model(engine):
    """Batches alternate between the queues that have work: b's lone request, sent after 40 of a's
    (ten batches of four), is computed in the second batch, not after all of a's."""
    engine.classify.seconds = 0.02
    sock = connect(engine.path)
    sock.sendall(b"".join(request(n, model="a@1") for n in range(40)) + request(999, model="b@1"))
    read_answers(sock, 41)
    position = next(i for i, batch in enumerate(engine.classify.batches) if 999 in batch)
    assert position <= 2, engine.classify.batches


def test_cancelled_expired_and_abandoned_requests_are_never_computed(engine):
    engine.classify.seconds = 0.3
    sock = connect(engine.path)
    sock.sendall(request(1))  # holds the loop for 0.3 s: the next ones wait in the queue
    time.sleep(0.1)
    sock.sendall(request(2) + request(3) + wire.frame(wire.CANCEL, {"id": 2}))
    sock.sendall(request(4, arrived=time.monotonic() - 60))  # its deadline passed: the client has its 504
    answers = {a["id"]: a for a in read_answers(sock, 3)}
    assert answers[4]["status"] == 504 and answers[4]["detail"]["error"]["code"] == "timeout"
    assert answers[1]["status"] == answers[3]["status"] == 200 and 2 not in answers
    gone = connect(engine.path)
    gone.sendall(request(10))
    time.sleep(0.05)
    gone.sendall(request(11) + request(12))
    gone.close()  # the HTTP process died: what it had queued is dropped
    time.sleep(0.8)
    computed = [i for batch in engine.classify.batches for i in batch]
    assert 2 not in computed and 4 not in computed
    assert 11 not in computed and 12 not in computed, engine.classify.batches


def test_a_long_explanation_never_holds_up_classify_requests(engine):
    """Classify requests sent while a two-second explanation runs are all answered before it ends."""
    sock = connect(engine.path)
    sock.sendall(request(100, task="explain"))
    time.sleep(0.2)
    started = time.monotonic()
    for n in range(10):
        sock.sendall(request(n))
        time.sleep(0.02)
    answers = read_answers(sock, 11, timeout=10)
    order = [a["id"] for a in answers]
    assert order[-1] == 100, f"the explanation is answered last: {order}"
    assert time.monotonic() - started > 1.0, "it was still running when the classify answers came"


# ---- the HTTP process's client -------------------------------------------------------------------------


class FakeInference:
    """A listener standing in for an inference process: answers nothing until told, can die."""

    def __init__(self, folder: Path) -> None:
        self.listener = bind_listener(slot_socket(folder, 0))
        self.conns: list[socket.socket] = []
        self.received = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while data := conn.recv(1 << 16):
            self.received += data

    def die(self) -> None:
        """As the kernel does for a dead process: every connection closed (shutdown wakes our threads)."""
        for sock in (self.listener, *self.conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_requests_in_flight_when_an_inference_process_dies_are_answered_503_at_once(tmp_path):
    folder = tmp_path
    fake = FakeInference(folder)
    client = EngineClient(folder, 1)

    async def run():
        calls = [
            asyncio.create_task(client.call("classify", Ticket(), {"job": {}}, b"", 1)) for _ in range(5)
        ]
        while len(wire.read_frames(bytearray(fake.received))) < 5:
            await asyncio.sleep(0.01)
        died = time.monotonic()
        fake.die()
        answers = await asyncio.wait_for(asyncio.gather(*calls), 10)  # a lost request would hang
        took = time.monotonic() - died
        after = await client.call("classify", Ticket(), {"job": {}}, b"", 1)  # nobody listens any more
        return answers, took, after

    answers, took, after = asyncio.run(run())
    assert answers == [WORKER_LOST] * 5 and after is WORKER_LOST
    assert WORKER_LOST.status == 503 and WORKER_LOST.headers == {"Retry-After": "1"}
    assert took < 1.0, "answered when the stream closed, not at a timeout"


def test_a_cancelled_call_tells_the_inference_process_and_marks_nothing_queued_before_it_is_sent(tmp_path):
    folder = tmp_path
    fake = FakeInference(folder)
    client = EngineClient(folder, 1)
    ticket = Ticket()

    async def run():
        call = asyncio.create_task(client.call("classify", ticket, {"job": {}}, b"", 1))
        while not fake.received:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        while len(wire.read_frames(bytearray(fake.received))) < 2:
            await asyncio.sleep(0.01)

    asyncio.run(run())
    kinds = [(kind, header["id"]) for kind, header, _ in wire.read_frames(bytearray(fake.received))]
    assert kinds == [(wire.REQUEST, 1), (wire.CANCEL, 1)] and ticket.queued
    (stream,) = client.streams
    assert stream.waiting == {} and stream.load == 0, "a cancelled call leaves nothing behind"
    fake.die()
