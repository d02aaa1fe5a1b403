"""bertserve side by side with its peers on one workload, in one run: what the HTTP layer costs.

    python -m bench.peers --store model_store [--rounds 3] [--variant before=/path/to/older/checkout]
                          [--device cuda] [--out bench/results]

Serves the store's classifier four ways at once and drives each with wrk in turn, round after round (the
machine's speed drifts, so ratios within a round are what count):
- bertserve: `bertserve serve` from this checkout (and, with --variant, from other checkouts: a before/after);
- litserve: LitServe's own batched pattern (max_batch_size 32, batch_timeout 5 ms; the worker tokenizes and
  runs the batch);
- fastapi: a naive FastAPI app (one sync endpoint: tokenize + forward per request).
Each round also measures one in-process tokenize + forward of one short text (bench.run's batch-1 ceiling)
with the backend bertserve serves (`auto`: bf16 where the CPU has it), the reference for c=1 latency; the
peers run plain fp32 transformers, as their own patterns do. Short texts (16-32 tokens) of drug reviews,
one per request.
With --device cuda every server runs on the GPU: bertserve with `--device cuda` (its own backend choice), the
peers with fp16 weights, and LitServe's batch raised to 64 (one GPU forward of 64 short texts costs about what
one of 32 does). The results go to <out>/<UTC timestamp>-peers/results.json and results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import litserve as ls

from bench.run import (
    ROOT,
    ceiling,
    cut_to_tokens,
    find_wrk,
    free_port,
    http_get,
    load_texts,
    open_model,
    run_wrk,
    save_results,
)

PEER_BATCH_SIZE, PEER_BATCH_TIMEOUT = 32, 0.005
PEER_GPU_BATCH_SIZE = 64


# ---- the peers -------------------------------------------------------------------------------------------


def _peer_model(store: Path, ref: str, device: str):
    """The classifier's Hugging Face folder, loaded the plain transformers way (fp16 on a GPU)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertserve.config import Settings
    from bertserve.store.layout import ModelStore
    from bertserve.store.resolve import resolve

    torch.set_num_threads(Settings().resolved().torch_threads)
    model_store = ModelStore(store)
    folder = model_store.version_dir(*resolve(model_store, ref))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    if device.startswith("cuda"):
        model = model.half().to(device)
    return AutoTokenizer.from_pretrained(folder), model


def _scores(tokenizer, model, texts: list[str]) -> list[list[float]]:
    import torch

    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        return torch.softmax(model(**batch).logits.float(), dim=-1).tolist()


def _first_text(body: dict) -> str:
    inputs = body["inputs"]
    return inputs if isinstance(inputs, str) else inputs[0]


class PeerClassifier(ls.LitAPI):
    """LitServe's batched pattern: the worker tokenizes and runs each batch."""

    store: Path
    ref: str

    def setup(self, device: str) -> None:
        self.tokenizer, self.model = _peer_model(self.store, self.ref, device)

    def decode_request(self, request: dict) -> str:
        return _first_text(request)

    def predict(self, texts: list[str]) -> list[list[float]]:
        return _scores(self.tokenizer, self.model, texts)

    def encode_response(self, output: list[float]) -> dict:
        return {"predictions": [output]}


def serve_litserve(store: Path, ref: str, port: int, device: str) -> None:
    on_gpu = device.startswith("cuda")
    api = PeerClassifier(
        max_batch_size=PEER_GPU_BATCH_SIZE if on_gpu else PEER_BATCH_SIZE,
        batch_timeout=PEER_BATCH_TIMEOUT,
        api_path="/v1/classify",
    )
    api.store, api.ref = store, ref
    ls.LitServer(api, accelerator="cuda" if on_gpu else "cpu", workers_per_device=1).run(
        port=port, generate_client_file=False, log_level="warning"
    )


def serve_fastapi(store: Path, ref: str, port: int, device: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    tokenizer, model = _peer_model(store, ref, device)
    app = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/v1/classify")
    def classify(body: dict) -> dict:
        return {"predictions": _scores(tokenizer, model, [_first_text(body)])}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- the run ---------------------------------------------------------------------------------------------


class Started(NamedTuple):
    base: str  # http://127.0.0.1:PORT
    pid: int  # the process `command` started (its children are the server's other processes)


@contextlib.contextmanager
def started(name: str, command: list[str], cwd: Path, log: Path) -> Iterator[Started]:
    """A server process (group) from `command`; yields its address once /health answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["BERTSERVE_DRAIN_SECONDS"] = "1"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while http_get(f"{base}/health")[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Started(base, process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def drive(
    wrk: str, base: str, bodies: Path, concurrency: list[int], seconds: float, path: str = "/v1/classify"
) -> dict:
    """`path` under wrk at each concurrency (after a 1 s warm-up): req/s, p50 and errors per point."""
    point = {}
    for clients in concurrency:
        run_wrk(wrk, base, path, bodies, clients, 1)
        load = run_wrk(wrk, base, path, bodies, clients, seconds)
        point[f"c{clients}"] = {
            "req_per_s": round(load["requests"] / load["seconds"], 1),
            "p50_ms": round(load["p50_ms"], 3),
            "errors": load["errors"],
        }
    return point


def commands(args: argparse.Namespace) -> dict[str, tuple[list[str], Path]]:
    """Every server to compare: name -> (command without --port, working directory)."""
    here = Path(__file__).resolve().parent.parent
    store = str(args.store.resolve())
    serve = [sys.executable, "-m", "bertserve.cli", "serve", "--store", store, "--log-level", "warning"]
    serve += ["--host", "127.0.0.1", "--device", args.device, *args.serve_args]
    peer = [sys.executable, "-m", "bench.peers", "--store", store, "--classifier", args.classifier]
    peer += ["--device", args.device]
    servers = {"bertserve": (serve, here)}
    for variant in args.variant:
        name, _, folder = variant.partition("=")
        servers[name] = (serve, Path(folder).resolve())
    servers["litserve"] = ([*peer, "--serve", "litserve"], here)
    servers["fastapi"] = ([*peer, "--serve", "fastapi"], here)
    return servers


def measure(args: argparse.Namespace) -> dict:
    from bertserve.config import Settings
    from bertserve.runtime.backends import resolve_backend_name

    wrk = find_wrk("wrk")
    model, _ = open_model(
        args.store, args.classifier, resolve_backend_name(args.reference_backend, args.device), args.device
    )
    sources = load_texts("drugscom", model.tokenizer, model.labels)[0]
    texts = cut_to_tokens(model.tokenizer, sources, 16, 32)
    settings = Settings()
    limits = (settings.max_batch_size, settings.max_batch_tokens)
    results: dict = {
        "command": " ".join(["python -m bench.peers", *sys.argv[1:]]),
        "reference_backend": model.backend.name,
        "device": args.device,
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="bertserve-peers-") as scratch, contextlib.ExitStack() as stack:
        bodies = Path(scratch) / "bodies.txt"
        bodies.write_text("\n".join(json.dumps({"inputs": [text]}) for text in texts) + "\n")
        bases = {
            name: stack.enter_context(started(name, command, cwd, Path(scratch) / f"{name}.log")).base
            for name, (command, cwd) in commands(args).items()
        }
        for number in range(args.rounds):
            single = ceiling(model, texts, 1, args.ceiling_seconds, limits)["batch_ms_p50"]
            row: dict = {"single_forward_ms": single, "servers": {}}
            for name, base in bases.items():
                point = drive(wrk, base, bodies, args.concurrency, args.duration)
                row["servers"][name] = point
                print(f"[peers] round {number + 1} {name}: {json.dumps(point)}", flush=True)
            results["rounds"].append(row)
    return results


def report(results: dict, concurrency: list[int]) -> str:
    """Per server: req/s and p50 per concurrency as the range over rounds, and the ratios that matter."""
    rounds = results["rounds"]
    single = [r["single_forward_ms"] for r in rounds]
    lines = [
        f"`{results['command']}`",
        "",
        f"one in-process tokenize + forward (batch 1, {results['reference_backend']} on "
        f"{results['device']}) p50: "
        f"{min(single):.2f}-{max(single):.2f} ms",
        "",
        "| server | " + " | ".join(f"c={c} req/s | c={c} p50 ms" for c in concurrency) + " |",
        "|---" * (1 + 2 * len(concurrency)) + "|",
    ]

    def span(values: list[float]) -> str:
        return f"{min(values):.1f}-{max(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

    for name in rounds[0]["servers"]:
        cells = []
        for c in concurrency:
            points = [r["servers"][name][f"c{c}"] for r in rounds]
            cells += [span([p["req_per_s"] for p in points]), span([p["p50_ms"] for p in points])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    top = max(concurrency)
    lines += ["", f"Per round: bertserve c={top} req/s over each peer's, and c=1 p50 over the single forward"]
    for name in rounds[0]["servers"]:
        if name == "bertserve":
            continue
        ratios = [
            r["servers"]["bertserve"][f"c{top}"]["req_per_s"] / r["servers"][name][f"c{top}"]["req_per_s"]
            for r in rounds
        ]
        lines.append(f"- over {name}: {', '.join(f'{x:.2f}x' for x in ratios)}")
    if 1 in concurrency:
        for name in rounds[0]["servers"]:
            ratios = [r["servers"][name]["c1"]["p50_ms"] / r["single_forward_ms"] for r in rounds]
            lines.append(f"- {name} c=1 p50 / single forward: {', '.join(f'{x:.2f}x' for x in ratios)}")
    lines.append(f"- median single forward: {statistics.median(single):.2f} ms")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--classifier", default="sentiment:production")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--reference-backend", default="auto", help="backend of the in-process single forward (as served)"
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per load point")
    parser.add_argument("--ceiling-seconds", type=float, default=1.5)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where every server runs")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=FOLDER: also serve bertserve from that checkout"
    )
    parser.add_argument(
        "--serve-args", default="", help="extra `bertserve serve` flags for every bertserve (one string)"
    )
    parser.add_argument("--serve", choices=("litserve", "fastapi"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve = serve_litserve if args.serve == "litserve" else serve_fastapi
        serve(args.store, args.classifier, args.port, args.device)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.serve_args = args.serve_args.split()
    results = measure(args)
    table = report(results, args.concurrency)
    save_results(args.out, "peers", results, table)


if __name__ == "__main__":
    main()
