"""What each step of a /v1/classify request costs, timed alone in this process: where the time goes.

    python -m bench.steps --store model_store

Short drug-review texts (16-32 tokens), one per request, as bench.run and bench.peers send them. Each step is
run many times and the best of five repeats is kept (the least disturbed by other work on the machine), in
microseconds per request. The queue step is a real round trip to a Manager process, as the server makes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import tempfile
import timeit
from collections.abc import Callable
from itertools import cycle
from multiprocessing.managers import SyncManager
from pathlib import Path

from bench.run import cut_to_tokens, load_texts, open_model


def best_us(step: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6


def measure(store: Path, ref: str) -> list[tuple[str, float]]:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bertserve-steps-"))
    import orjson
    import torch
    from starlette.responses import Response

    from bertserve import logs, metrics
    from bertserve.api.encoders import Submitted, Tokens
    from bertserve.config import Settings
    from bertserve.engine import request_queue
    from bertserve.runtime.backends import resolve_backend_name
    from bertserve.runtime.loaded import Prepared
    from bertserve.schemas import ClassifyRequest

    torch.set_num_threads(Settings().resolved().torch_threads)
    model, _ = open_model(store, ref, resolve_backend_name("auto"))  # as served
    texts = cut_to_tokens(model.tokenizer, load_texts("drugscom", model.tokenizer, model.labels)[0], 16, 32)
    bodies = cycle([json.dumps({"inputs": [text]}) for text in texts[:256]])
    requests = [ClassifyRequest.model_validate_json(json.dumps({"inputs": [text]})) for text in texts[:256]]
    each = cycle(requests)
    submitted = Submitted(requests[0], Tokens(model.encoder.key, model.encode(requests[0].as_list(), True)))
    prepared = [Prepared(model, model.encode(r.as_list(), True)) for r in requests[:32]]
    answer = model.classify(prepared[:1], 32, 16384)[0]

    request_queue.register()
    manager = SyncManager()
    manager.start()
    queue = manager.RequestQueue()
    payload = submitted.encode()

    def queue_round_trips() -> None:
        queue.put_many([(0, "uid", 0.0, payload)])
        queue.take(1, 1)

    def answer_to_http() -> None:
        body = orjson.dumps({"model": model.name, "version": model.version, "predictions": answer})
        response = Response(body, media_type="application/json", headers={"X-Model-Version": model.ref})
        pickle.loads(pickle.dumps(response))

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
            (
                "HTTP -> worker: the submission to JSON and back",
                best_us(lambda: Submitted.decode(submitted.encode(), ClassifyRequest), 500),
            ),
            ("HTTP -> worker: Manager queue put + take (round trips)", best_us(queue_round_trips, 100)),
            (
                "worker: pad + forward + decode, batch 1",
                best_us(lambda: model.classify(prepared[:1], 32, 16384), 10),
            ),
            (
                "worker: pad + forward + decode, batch 32, per request",
                best_us(lambda: model.classify(prepared, 32, 16384), 3) / 32,
            ),
            ("worker -> HTTP: orjson body + Response + pickle", best_us(answer_to_http, 500)),
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
        manager.shutdown()


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
