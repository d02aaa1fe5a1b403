"""What the HTTP middleware costs per request: http_layers against a bare app and GZip alone.

    python -m bench.middleware_cost [--rounds 3] [--seconds 0.3] [--concurrency 16] [--access-log json]
                                    [--out bench/results]

Drives three ASGI apps directly in one event loop (no sockets, no uvicorn, so only the app's own work is
timed): a bare Starlette app, the app + GZip, and the app + install_layers (GZip innermost). (The one-class
ServiceMiddleware these layers replaced measured 138.8 µs sequentially against 110.1 µs for the layers on a
2-core AMD EPYC with AVX-512, in the run that compared them before it was removed.) Each serves one POST route
answering a small JSON with x-model-version, the way a task route does. Each round times every app in turn,
sequentially (one request at a time) and `--concurrency` at a time; the table gives the median µs per request
and the cost added over the bare app. Metrics are written in prometheus-client's multiprocess mode and the
access log goes through the JSON formatter to /dev/null, as in `bertserve serve`. Writes
<out>/<UTC timestamp>-middleware-cost/results.json and results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import ROOT, save_results

BODY = b'{"inputs": ["a short review of a drug that worked well"]}'
PATH = "/v1/classify"
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"python-httpx/0.28.1"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


class Exchange:
    """One request's receive and send, as uvicorn gives them: the body in one message, then "disconnect"
    once the answer is sent."""

    __slots__ = ("answered", "body_sent")

    def __init__(self) -> None:
        self.body_sent = False
        self.answered = asyncio.get_running_loop().create_future()

    async def receive(self) -> dict:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await self.answered
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered.set_result(None)


async def request(app: Callable) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": HEADERS,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    exchange = Exchange()
    await app(scope, exchange.receive, exchange.send)
    assert exchange.answered.done(), "every app answers"


def build_apps(scratch: Path) -> dict[str, Callable]:
    from starlette.applications import Starlette
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bertserve import http_layers
    from bertserve.auth import Authenticator
    from bertserve.config import Settings
    from bertserve.engine.admission import InFlight
    from bertserve.server import INSTRUMENTED

    async def classify(request: Request) -> JSONResponse:
        await request.body()
        await asyncio.sleep(0)  # the engine's answer comes back through the event loop
        answer = {"model": "sentiment", "version": "3", "results": [{"label": "positive", "score": 0.97}]}
        return JSONResponse(answer, headers={"x-model-version": "sentiment@3"})

    def starlette() -> Starlette:
        return Starlette(routes=[Route(PATH, classify, methods=["POST"])])

    settings = Settings()
    drain_flag = scratch / "draining"
    queue_labels = {PATH: "classify"}
    bare, gzip, new = starlette(), starlette(), starlette()
    gzip.add_middleware(GZipMiddleware, minimum_size=1000, compresslevel=5)
    http_layers.install_layers(
        new,
        settings=settings,
        auth=Authenticator(settings),
        in_flight=InFlight(http_layers.in_flight_slots(INSTRUMENTED, queue_labels)),
        drain_flag=drain_flag,
        endpoints=INSTRUMENTED,
        queue_labels=queue_labels,
    )
    return {"bare": bare, "gzip": gzip, "new": new}


async def per_request_us(app: Callable, seconds: float, concurrency: int) -> float:
    """µs per request over `seconds`: one request at a time (concurrency 1), or `concurrency` gathered."""
    done, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        if concurrency == 1:
            for _ in range(50):
                await request(app)
            done += 50
        else:
            await asyncio.gather(*(request(app) for _ in range(concurrency)))
            done += concurrency
    return (time.perf_counter() - started) / done * 1e6


async def measure(apps: dict[str, Callable], rounds: int, seconds: float, concurrency: int) -> dict:
    for app in apps.values():  # builds each middleware stack, fills the metric children
        await per_request_us(app, 0.05, 1)
    modes = {"sequential": 1, f"concurrent_{concurrency}": concurrency}
    samples: dict[str, dict[str, list[float]]] = {mode: {name: [] for name in apps} for mode in modes}
    for _ in range(rounds):
        for mode, c in modes.items():
            for name, app in apps.items():
                samples[mode][name].append(await per_request_us(app, seconds, c))
    return {
        mode: {name: {"us_per_request": statistics.median(s), "rounds": s} for name, s in by_app.items()}
        for mode, by_app in samples.items()
    }


LABELS = {
    "bare": "bare Starlette",
    "gzip": "+ GZip",
    "new": "+ http_layers + GZip",
}


def report(results: dict) -> str:
    modes = list(results["modes"])
    header = "| app | " + " | ".join(f"{m} µs/req | {m} added µs" for m in modes) + " |"
    lines = [
        f"Middleware cost per request ({results['cpu']}, avx512: {results['avx512']}, Python "
        f"{results['python']}; access log: {results['access_log']}; median of {results['rounds']} rounds)",
        "",
        header,
        "|" + "---|" * (1 + 2 * len(modes)),
    ]
    for name, label in LABELS.items():
        cells = []
        for mode in modes:
            row = results["modes"][mode]
            us = row[name]["us_per_request"]
            cells += [f"{us:.1f}", f"{us - row['bare']['us_per_request']:+.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for mode in modes:
        row = {name: r["us_per_request"] for name, r in results["modes"][mode].items()}
        lines.append(
            f"- {mode}: the layers over GZip {row['new'] - row['gzip']:.1f} µs; "
            f"the whole stack / bare app {row['new'] / row['bare']:.2f}"
        )
    return "\n".join(lines) + "\n"


def cpu() -> tuple[str, bool]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line), "")
    return model or platform.processor() or "unknown", "avx512" in info


def configure_access_log(kind: str) -> None:
    """As `bertserve serve` does (logs.configure_logging), with the handler writing to /dev/null."""
    from bertserve import logs
    from bertserve.config import Settings

    logs.configure_logging(Settings(log_format="text" if kind == "text" else "json", log_level="warning"))
    for handler in logging.getLogger().handlers:
        handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the run)
    if kind == "off":
        logs.access_logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.middleware_cost",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each times every app in turn")
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per app, mode and round")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight in the concurrent mode"
    )
    parser.add_argument("--access-log", choices=("json", "text", "off"), default="json", help="its formatter")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bertserve-middleware-cost-") as scratch:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = scratch  # before prometheus-client is imported
        configure_access_log(args.access_log)
        apps = build_apps(Path(scratch))
        modes = asyncio.run(measure(apps, args.rounds, args.seconds, args.concurrency))
    model, avx512 = cpu()
    results: dict[str, Any] = {
        "command": "python -m bench.middleware_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": model,
        "avx512": avx512,
        "python": platform.python_version(),
        "access_log": args.access_log,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "modes": modes,
    }
    save_results(args.out, "middleware-cost", results, report(results))


if __name__ == "__main__":
    main()
