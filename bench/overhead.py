"""The serving engine's own cost: bertserve on a near-zero-cost model against an HTTP-only reference.

    python -m bench.overhead [--rounds 3] [--concurrency 1,64,256] [--duration 10] [--out bench/results]
                             [--variant before=/path/to/older/checkout]

Builds a store holding one classifier of 1 layer and hidden size 32 with the real MiniLM tokenizer
(bench.random_store --shape tiny), so a forward costs next to nothing, and serves it two ways at once:
- bertserve: `bertserve serve` with its default flags (its own process layout for this machine);
- reference: FastAPI + pydantic + the same tokenizer, no model, uvicorn with as many workers as bertserve
  has HTTP processes on this machine (bench/http_reference.py);
- with --variant, bertserve from another checkout too (a before/after in one run).
wrk (-t1) drives each in turn at every concurrency, round after round, so both rows come from one run and the
ratios within a round are what count. Short drug-review texts, one per request. Prints the table, bertserve /
reference per round, and writes <out>/<UTC timestamp>-overhead/results.json and results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.peers import drive, started
from bench.random_store import build, default_tokenizer_folder
from bench.run import ROOT, cut_to_tokens, load_texts, require_wrk, save_results


def http_processes() -> int:
    """As many HTTP processes as bertserve starts for a one-model store on this machine."""
    from bertserve.config import Settings

    settings = Settings().resolved()
    return settings.api_servers or settings.workers


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    from transformers import AutoTokenizer

    wrk = require_wrk("bench.overhead")
    store = scratch / "model_store"
    build(store, args.tokenizer, "tiny")
    tokenizer_folder = scratch / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer.save_pretrained(tokenizer_folder)
    sources = load_texts(args.data, tokenizer, ["negative", "neutral", "positive"])[0]
    texts = cut_to_tokens(tokenizer, sources, 16, 32)
    bodies = scratch / "bodies.txt"
    bodies.write_text("\n".join(json.dumps({"inputs": [text]}) for text in texts) + "\n")
    workers = http_processes()
    here = Path(__file__).resolve().parent.parent
    serve = [sys.executable, "-m", "bertserve.cli", "serve", "--store", str(store), "--log-level", "warning"]
    serve += ["--host", "127.0.0.1", "--backend", "fp32"]
    reference = [sys.executable, "-m", "uvicorn", "bench.http_reference:app", "--host", "127.0.0.1"]
    reference += ["--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    os.environ["BENCH_TOKENIZER"] = str(tokenizer_folder)
    results: dict = {"command": " ".join(["python -m bench.overhead", *sys.argv[1:]]), "rounds": []}
    results["http_processes"] = workers
    with contextlib.ExitStack() as stack:
        servers = {"reference": (reference, here), "bertserve": (serve, here)}
        for variant in args.variant:
            name, _, folder = variant.partition("=")
            servers[name] = (serve, Path(folder).resolve())
        bases = {
            name: stack.enter_context(started(name, command, cwd, scratch / f"{name}.log")).base
            for name, (command, cwd) in servers.items()
        }
        for number in range(args.rounds):
            row: dict = {}
            for name, base in bases.items():
                point = drive(wrk, base, bodies, args.concurrency, args.duration)
                row[name] = point
                print(f"[overhead] round {number + 1} {name}: {json.dumps(point)}", flush=True)
            results["rounds"].append(row)
    return results


def report(results: dict, concurrency: list[int]) -> str:
    rounds = results["rounds"]
    lines = [
        f"`{results['command']}` ({results['http_processes']} HTTP processes each)",
        "",
        "| server | " + " | ".join(f"c={c} req/s (p50 ms)" for c in concurrency) + " |",
        "|---" * (1 + len(concurrency)) + "|",
    ]
    for name in rounds[0]:
        cells = []
        for c in concurrency:
            points = [r[name][f"c{c}"] for r in rounds]
            rates = [p["req_per_s"] for p in points]
            latencies = [p["p50_ms"] for p in points]
            cells.append(f"{min(rates):,.0f}-{max(rates):,.0f} ({min(latencies):.2f}-{max(latencies):.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in [n for n in rounds[0] if n != "reference"]:
        lines += ["", f"Per round, {name} / reference:"]
        for c in concurrency:
            ratios = [r[name][f"c{c}"]["req_per_s"] / r["reference"][f"c{c}"]["req_per_s"] for r in rounds]
            added = [r[name][f"c{c}"]["p50_ms"] - r["reference"][f"c{c}"]["p50_ms"] for r in rounds]
            lines.append(
                f"- c={c}: throughput {', '.join(f'{x:.2f}' for x in ratios)}; "
                f"p50 added {', '.join(f'{x:+.2f} ms' for x in added)}"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64,256")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="a BERT tokenizer's folder (default: MiniLM's)"
    )
    parser.add_argument("--data", choices=("drugscom", "synthetic"), default="drugscom", help="request texts")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=FOLDER: also serve bertserve from that checkout"
    )
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.tokenizer = args.tokenizer or default_tokenizer_folder()
    with tempfile.TemporaryDirectory(prefix="bertserve-overhead-") as scratch:
        results = measure(args, Path(scratch))
    table = report(results, args.concurrency)
    save_results(args.out, "overhead", results, table)


if __name__ == "__main__":
    main()
