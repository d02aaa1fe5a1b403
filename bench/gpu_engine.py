"""The engine on a GPU: served rates against the in-process ceiling, one slot and several slots per GPU.

    python -m bench.gpu_engine [--tokenizer FOLDER] [--slots 1,2,4] [--duration 5] [--out bench/results]
                               [--device cuda]

Builds a MiniLM-shaped store with random weights (bench.random_store: throughput depends on the shape and
the token counts, not the weights) and measures, in one run, on cuda with the fp16 backend (--device cpu:
fp32, a smoke run of the same steps):
- the ceiling in this process: tokenize + pad + forward + decode of short texts (16-32 tokens) at batch 1
  (its median time: what one lone request cannot beat) and at batch 128 (sequences/s);
- `bertserve serve --device cuda --workers N` for each N of --slots: /v1/classify with one text per request
  at c=1 (p50) and c=256 (req/s), and with 32 texts per request at c=64 (texts/s), driven by wrk.
Prints the table with the ratios to the ceiling and between slot counts, and writes
<out>/<UTC timestamp>-gpu-engine/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.peers import drive, started
from bench.random_store import build, default_tokenizer_folder
from bench.run import ROOT, ceiling, cut_to_tokens, load_texts, machine, open_model, require_wrk, save_results

BATCH = 128


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    wrk = require_wrk("bench.gpu_engine")
    store = scratch / "model_store"
    build(store, args.tokenizer, "minilm")
    cuda = args.device == "cuda"
    backend = "fp16" if cuda else "fp32"
    model, _ = open_model(store, "sentiment:production", backend, "cuda:0" if cuda else "cpu")
    texts = cut_to_tokens(model.tokenizer, load_texts("synthetic", model.tokenizer, model.labels)[0], 16, 32)
    limits = (BATCH, 65536)
    results: dict = {
        "command": " ".join(["python -m bench.gpu_engine", *sys.argv[1:]]),
        "machine": machine((0,) if cuda else ()),
        "backend": backend,
        "ceiling": {
            "batch_1": ceiling(model, texts, 1, args.duration, limits),
            f"batch_{BATCH}": ceiling(model, texts, BATCH, args.duration, limits),
        },
        "served": {},
    }
    del model
    one = scratch / "one.txt"
    one.write_text("\n".join(json.dumps({"inputs": [text]}) for text in texts) + "\n")
    many = scratch / "many.txt"
    many.write_text(
        "\n".join(json.dumps({"inputs": texts[i : i + 32]}) for i in range(0, len(texts) - 32, 7)) + "\n"
    )
    serve = [sys.executable, "-m", "bertserve.cli", "serve", "--store", str(store), "--host", "127.0.0.1"]
    serve += ["--device", args.device, "--backend", backend, "--log-level", "warning", *args.flags.split()]
    here = Path(__file__).resolve().parent.parent
    for slots in args.slots:
        log = scratch / f"serve-{slots}.log"
        with started(f"{slots} slot(s)", [*serve, "--workers", str(slots)], here, log) as server:
            point = drive(wrk, server.base, one, [1, 256], args.duration)
            point |= {f"many_{k}": v for k, v in drive(wrk, server.base, many, [64], args.duration).items()}
        results["served"][str(slots)] = point
        print(f"[gpu-engine] {slots} slot(s): {json.dumps(point)}", flush=True)
    return results


def report(results: dict) -> str:
    one = results["ceiling"]["batch_1"]
    best = results["ceiling"][f"batch_{BATCH}"]
    lines = [
        f"`{results['command']}`; {', '.join(results['machine']['gpus']) or results['machine']['cpu']} "
        f"({results['machine']['cores']} CPU cores); {results['backend']}, short texts (16-32 tokens)",
        "",
        f"Ceiling in process: batch 1 {one['batch_ms_p50']:.2f} ms (median), batch {BATCH} "
        f"{best['seq_per_s']:,.0f} sequences/s.",
        "",
        "| slots | c=1 p50 ms (/ batch-1 time) | c=256 req/s (/ ceiling) | 32 texts/request, c=64: texts/s |",
        "| --- | --- | --- | --- |",
    ]
    first = None
    for slots, point in results["served"].items():
        c1, c256, many = point["c1"], point["c256"], point["many_c64"]
        first = first or max(c256["req_per_s"], 1e-9)
        lines.append(
            f"| {slots} | {c1['p50_ms']:.2f} ({c1['p50_ms'] / one['batch_ms_p50']:.2f}x) | "
            f"{c256['req_per_s']:,.0f} ({c256['req_per_s'] / best['seq_per_s']:.2f}; "
            f"{c256['req_per_s'] / first:.2f}x one slot) | {many['req_per_s'] * 32:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=None, help="a BERT tokenizer (default: MiniLM's)")
    parser.add_argument("--slots", default="1,2,4", help="inference processes per GPU to serve in turn")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load point")
    parser.add_argument("--flags", default="", help="extra `bertserve serve` flags (one string)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    args.slots = [int(s) for s in args.slots.split(",") if s]
    args.tokenizer = args.tokenizer or default_tokenizer_folder()
    with tempfile.TemporaryDirectory(prefix="bertserve-gpu-engine-") as scratch:
        results = measure(args, Path(scratch))
    save_results(args.out, "gpu-engine", results, report(results))


if __name__ == "__main__":
    main()
