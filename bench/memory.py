"""What a running server holds in memory, per process, after one request to each of its endpoints.

    python -m bench.memory --store model_store [--backend auto] [--flags "--workers 1"] [--out bench/results]
                           [--variant before=/path/to/older/checkout]

Starts `bertserve serve` on the store, sends one request to every task endpoint it serves (classify,
fill-mask, embeddings, explain), then reads each process's RSS and PSS (proportional set size: shared pages
split between the processes sharing them, so the PSS column adds up to what the server costs the machine).
With --variant, bertserve from that checkout is measured the same way in the same run, after this one.
Prints a table by process role per server and writes <out>/<UTC timestamp>-memory/results.json and
results.md.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from bench.run import ROOT, http_get, save_results, served, snapshot

PROBES = {
    "/v1/classify": {"inputs": ["the pills helped with my headaches"]},
    "/v1/fill-mask": {"inputs": ["the pills helped with my [MASK]"]},
    "/v1/embeddings": {"input": ["the pills helped with my headaches"]},
    "/v1/explain": {"inputs": "the pills helped with my headaches", "steps": 16},
}


def pss_mb(pid: int) -> float:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
    return round(int(found.group(1)) / 1024, 1) if found else 0.0


def post(url: str, body: dict) -> int:
    import httpx

    return httpx.post(url, json=body, timeout=120).status_code


def measure(args: argparse.Namespace, cwd: Path | None = None) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="bertserve-memory-") as scratch,
        served(args.store, args.backend, Path(scratch), flags=args.flags.split(), cwd=cwd) as server,
    ):
        base = server["base"]
        answered = {}
        for path, body in PROBES.items():
            status = post(f"{base}{path}", body)
            if status != 404:  # an endpoint this store does not serve
                answered[path] = status
        time.sleep(1)  # let freed memory settle
        processes = snapshot(server["pid"])
        for process in processes:
            process["pss_mb"] = pss_mb(process["pid"])
        _, body = http_get(f"{base}/v1/models")
    return {
        "store": str(args.store),
        "flags": args.flags,
        "startup_s": server["startup_s"],
        "answered": answered,
        "processes": processes,
        "models": [m["name"] for m in json.loads(body)["models"]],
    }


def report(results: dict) -> str:
    roles: dict[str, list[dict]] = {}
    for process in results["processes"]:
        roles.setdefault(process["role"], []).append(process)
    lines = [
        f"store {results['store']} ({', '.join(results['models'])}), flags `{results['flags'] or 'none'}`; "
        f"after one request to {', '.join(f'{p} ({s})' for p, s in results['answered'].items())}",
        "",
        "| process | count | RSS MB each | PSS MB in all |",
        "| --- | --- | --- | --- |",
    ]
    for role, group in roles.items():
        rss = "-".join(
            f"{x:.0f}" for x in sorted({min(p["rss_mb"] for p in group), max(p["rss_mb"] for p in group)})
        )
        lines.append(f"| {role} | {len(group)} | {rss} | {sum(p['pss_mb'] for p in group):,.0f} |")
    total_pss = sum(p["pss_mb"] for p in results["processes"])
    total_rss = sum(p["rss_mb"] for p in results["processes"])
    lines.append(
        f"| **all** | {len(results['processes'])} | {total_rss:,.0f} summed | **{total_pss:,.0f}** |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--flags", default="", help="extra `bertserve serve` flags (one string)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=FOLDER: measure that checkout too"
    )
    args = parser.parse_args(argv)
    args.store = args.store.resolve()  # a variant runs from its own checkout
    results = measure(args)
    table = report(results)
    if args.variant:
        results["variants"] = {}
        for variant in args.variant:
            name, _, folder = variant.partition("=")
            results["variants"][name] = measure(args, Path(folder).resolve())
            table += f"\n{name} ({folder}):\n\n" + report(results["variants"][name])
    save_results(args.out, "memory", results, table)


if __name__ == "__main__":
    main()
