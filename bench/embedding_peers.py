"""bertserve's /v1/embeddings side by side with infinity-emb on the same model folder, in one run.

    python -m bench.embedding_peers --store model_store --infinity /path/to/venv/bin/infinity_emb
                                    [--model minilm] [--rounds 1] [--concurrency 1,8,64] [--duration 10]
                                    [--dtype float32] [--backend fp32] [--out bench/results]

infinity-emb is the embedding server users often pick instead. It pins its own dependencies, so it lives in a
virtualenv of its own (docs/performance.md#embeddings-against-infinity-emb says how to make one offline);
`--infinity` names its `infinity_emb` command. Both serve the same store version (the model's `production`
alias, or its latest: a plain Hugging Face folder) on the CPU in the same precision (`--dtype` for infinity,
`--backend` for bertserve), infinity with its own batching (`--batch-size 32`). wrk (-t1) drives the
OpenAI-shaped embeddings route of each in turn, round after round: one drug review per request, either its
first 25 words (short) or the whole review (long). After the last round, each server's processes are
measured: summed RSS and PSS.
Writes <out>/<UTC timestamp>-embedding-peers/results.json and results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from bench.memory import pss_mb
from bench.peers import drive, started
from bench.run import ROOT, describe_process, find_wrk, load_texts, process_tree, save_results

WORKLOADS = ("short", "long")
MEMORY_COLUMNS = " | processes | RSS MB | PSS MB |"


def workload_bodies(scratch: Path, model: str, tokenizer) -> dict[str, Path]:
    """One file of OpenAI-shaped request bodies per workload, one text per request."""
    reviews = [text for text in load_texts("drugscom", tokenizer, [])[0] if len(text.split()) >= 25][:2000]
    texts = {"short": [" ".join(text.split()[:25]) for text in reviews], "long": reviews}
    bodies = {}
    for name in WORKLOADS:
        bodies[name] = scratch / f"{name}.txt"
        lines = (json.dumps({"model": model, "input": [text]}) for text in texts[name])
        bodies[name].write_text("\n".join(lines) + "\n")
    return bodies


def memory(pid: int) -> dict:
    """Summed RSS and PSS of a server's process tree, in MB."""
    processes = [p for p in (describe_process(child, pid) for child in process_tree(pid)) if p]
    return {
        "processes": len(processes),
        "rss_mb": round(sum(p["rss_mb"] for p in processes)),
        "pss_mb": round(sum(pss_mb(p["pid"]) for p in processes)),
    }


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    from transformers import AutoTokenizer

    from bertserve.store.layout import ModelStore

    wrk = find_wrk("wrk")
    if wrk is None:
        raise SystemExit("bench.embedding_peers needs wrk (apt-get install wrk)")
    store = ModelStore(args.store)
    version = store.aliases(args.model).get("production") or store.latest_version(args.model)
    folder = store.version_dir(args.model, version)
    bodies = workload_bodies(scratch, args.model, AutoTokenizer.from_pretrained(folder))
    bertserve = [sys.executable, "-m", "bertserve.cli", "serve", "--store", str(args.store)]
    bertserve += ["--models", f"{args.model}@{version}", "--default-embedding-model", args.model]
    bertserve += ["--backend", args.backend, "--host", "127.0.0.1", "--log-level", "warning"]
    infinity = [str(args.infinity), "v2", "--model-id", str(folder), "--served-model-name", args.model]
    infinity += ["--engine", "torch", "--device", "cpu", "--dtype", args.dtype, "--batch-size", "32"]
    infinity += ["--host", "127.0.0.1", "--no-model-warmup"]
    servers = {"bertserve": (bertserve, "/v1/embeddings"), "infinity": (infinity, "/embeddings")}
    results: dict = {"command": " ".join(["python -m bench.embedding_peers", *sys.argv[1:]]), "rounds": []}
    results.update(model=args.model, folder=str(folder), dtype=args.dtype, backend=args.backend)
    here = Path(__file__).resolve().parent.parent
    with contextlib.ExitStack() as stack:
        running = {
            name: stack.enter_context(started(name, command, here, scratch / f"{name}.log"))
            for name, (command, _) in servers.items()
        }
        for number in range(args.rounds):
            row: dict = {}
            for name, server in running.items():
                path = servers[name][1]
                row[name] = {
                    workload: drive(wrk, server.base, bodies[workload], args.concurrency, args.duration, path)
                    for workload in WORKLOADS
                }
                print(f"[embedding-peers] round {number + 1} {name}: {json.dumps(row[name])}", flush=True)
            results["rounds"].append(row)
        results["memory"] = {name: memory(server.pid) for name, server in running.items()}
    return results


def report(results: dict, concurrency: list[int]) -> str:
    """req/s per workload and concurrency (the range over rounds), memory, and bertserve / infinity."""
    rounds = results["rounds"]
    columns = [(w, c) for w in WORKLOADS for c in concurrency]
    lines = [
        f"`{results['command']}` (model {results['model']}, infinity dtype {results['dtype']}, "
        f"bertserve backend {results['backend']})",
        "| server | " + " | ".join(f"{w} c={c} req/s" for w, c in columns) + MEMORY_COLUMNS,
        "|---|" + "---|" * (len(columns) + 3),
    ]
    for name in rounds[0]:
        cells = []
        for workload, c in columns:
            rates = [r[name][workload][f"c{c}"]["req_per_s"] for r in rounds]
            cells.append(
                f"{min(rates):,.1f}" if min(rates) == max(rates) else f"{min(rates):,.1f}-{max(rates):,.1f}"
            )
        used = results["memory"][name]
        cells += [str(used["processes"]), f"{used['rss_mb']:,}", f"{used['pss_mb']:,}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per round, bertserve / infinity:"]
    for workload, c in columns:
        ratios = [
            r["bertserve"][workload][f"c{c}"]["req_per_s"] / r["infinity"][workload][f"c{c}"]["req_per_s"]
            for r in rounds
        ]
        lines.append(f"- {workload} c={c}: {', '.join(f'{x:.2f}' for x in ratios)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedding_peers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--model", default="minilm", help="an embedding model of the store")
    parser.add_argument("--infinity", type=Path, required=True, help="infinity-emb's `infinity_emb` command")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load point")
    parser.add_argument("--dtype", default="float32", help="infinity's --dtype")
    parser.add_argument("--backend", default="fp32", help="bertserve's --backend (the same precision)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    args = parser.parse_args(argv)
    args.store = args.store.resolve()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="bertserve-embedding-peers-") as scratch:
        results = measure(args, Path(scratch))
    save_results(args.out, "embedding-peers", results, report(results, args.concurrency))


if __name__ == "__main__":
    main()
