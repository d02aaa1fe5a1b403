"""What each step of a /v1/classify request costs, timed alone in this process: where the time goes.

    python -m bench.steps --store model_store

Short drug-review texts (16-32 tokens), one per request, as bench.run and bench.peers send them. Each step is
run many times and the best of five repeats is kept (the least disturbed by other work on the machine), in
microseconds per request. The stream step is a real round trip between two processes over a unix socket,
with the request and answer frames the server sends (an echo process answers each request frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import socket
import tempfile
import time
import timeit
from collections.abc import Callable
from itertools import cycle
from pathlib import Path

from bench.run import cut_to_tokens, load_texts, open_model


def best_us(step: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6


def _echo(path: str, answer: bytes) -> None:
    """Stands in for the inference process: answers every request frame on the stream with `answer`."""
    from bertserve.engine import wire

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    buffer = bytearray()
    while data := conn.recv(1 << 16):
        buffer += data
        for _ in wire.read_frames(buffer):
            conn.sendall(answer)


def measure(store: Path, ref: str) -> list[tuple[str, float]]:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bertserve-steps-"))
    import orjson
    import torch

    from bertserve import logs, metrics
    from bertserve.api.classify import ClassifyAPI
    from bertserve.config import Settings
    from bertserve.engine import wire
    from bertserve.engine.process import ThreadSizing
    from bertserve.runtime.backends import resolve_backend_name
    from bertserve.runtime.loaded import Prepared
    from bertserve.schemas import ClassifyRequest

    settings = Settings().resolved()
    torch.set_num_threads(settings.torch_threads)
    model, _ = open_model(store, ref, resolve_backend_name("auto"))  # as served
    texts = cut_to_tokens(model.tokenizer, load_texts("drugscom", model.tokenizer, model.labels)[0], 16, 32)
    bodies = cycle([json.dumps({"inputs": [text]}) for text in texts[:256]])
    requests = [ClassifyRequest.model_validate_json(json.dumps({"inputs": [text]})) for text in texts[:256]]
    each = cycle(requests)
    prepared = [Prepared(model, model.encode(r.as_list(), True)) for r in requests[:32]]
    ThreadSizing(settings).apply(prepared[:1])  # the threads the server runs one short text on
    answer = model.classify(prepared[:1], 32, 16384)[0]
    api = ClassifyAPI(Settings(store=store))
    encoded = model.encode(requests[0].as_list(), True)

    def request_frame() -> bytes:
        job = requests[0].job().model_dump(mode="json")
        lengths, body = wire.token_arrays(encoded)
        header = {"route": "/v1/classify", "job": job, "key": model.encoder.key, "lengths": lengths}
        header["targets"] = None
        return wire.frame(wire.REQUEST, {"id": 1, "task": "classify", "arrived": 0.0, **header}, body)

    frame = request_frame()

    def frame_to_job() -> None:
        ((_, header, body),) = wire.read_frames(bytearray(frame))
        job = api.job_type.model_construct(**header["job"])
        wire.token_lists(header["lengths"], body)
        return job

    def answer_to_frame() -> bytes:
        rendered = orjson.dumps({"model": model.name, "version": model.version, "predictions": answer})
        return wire.frame(wire.ANSWER, {"id": 1, "status": 200, "ref": model.ref}, rendered)

    answer_frame = answer_to_frame()
    path = os.path.join(tempfile.mkdtemp(prefix="bertserve-steps-"), "echo.sock")
    echo = mp.get_context("spawn").Process(target=_echo, args=(path, answer_frame), daemon=True)
    echo.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(200):
        try:
            client.connect(path)
            break
        except OSError:
            time.sleep(0.05)
    inbox = bytearray()

    def stream_round_trip() -> None:
        client.sendall(frame)
        while not wire.read_frames(inbox):
            inbox.extend(client.recv(1 << 16))

    def http_metrics() -> None:
        labels = ("classify", model.name, model.version, "200")
        metrics.IN_FLIGHT.labels("classify").inc()
        metrics.IN_FLIGHT.labels("classify").dec()
        metrics.REQUESTS.labels(*labels).inc()
        metrics.REQUEST_DURATION.labels(*labels).observe(0.01)

    logs.configure_logging(Settings())
    for handler in logging.getLogger().handlers:
        handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    try:
        return [
            (
                "HTTP: JSON + pydantic validation",
                best_us(lambda: ClassifyRequest.model_validate_json(next(bodies)), 500),
            ),
            ("HTTP: tokenize", best_us(lambda: model.encode(next(each).as_list(), True), 500)),
            ("HTTP: the request frame (job JSON + binary ids)", best_us(request_frame, 500)),
            ("HTTP <-> inference: unix-socket round trip, both frames", best_us(stream_round_trip, 500)),
            ("inference: the frame back to a job and ids (no validation)", best_us(frame_to_job, 500)),
            (
                "inference: pad + forward + decode, batch 1",
                best_us(lambda: model.classify(prepared[:1], 32, 16384), 10),
            ),
            (
                "inference: pad + forward + decode, batch 32, per request",
                best_us(lambda: model.classify(prepared, 32, 16384), 3) / 32,
            ),
            ("inference: answer body (orjson) + answer frame", best_us(answer_to_frame, 500)),
            ("HTTP: metrics (4 multiprocess updates)", best_us(http_metrics, 500)),
            (
                "HTTP: access log line",
                best_us(
                    lambda: logs.log_request(
                        "POST", "/v1/classify", 200, 0.01, model.name, model.version, "id"
                    ),
                    500,
                ),
            ),
        ]
    finally:
        client.close()
        echo.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--classifier", default="sentiment:production")
    args = parser.parse_args(argv)
    print("| step | us per request |\n|---|---|")
    for name, us in measure(args.store, args.classifier):
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
