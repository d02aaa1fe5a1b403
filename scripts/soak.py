"""Bounded soak run: a steady open-loop mix of valid and invalid requests, then three checks.

    python scripts/soak.py --store model_store --duration 600 --rate 40          # starts a server on it
    python scripts/soak.py --url http://127.0.0.1:8000 --pid 1234 --duration 600 --rate 40

Checks (exit status 1 if any fails; a JSON summary is printed either way):
- every valid request answered 200 (so zero 5xx, no transport error), every invalid one its expected 4xx;
- /metrics `bertserve_requests_total` grew by exactly what was sent, per endpoint and status code;
- the summed RSS of the server and all its descendant processes grew by at most --max-rss-growth-mb
  between the end of the warm-up and the end of the run (Linux /proc).
Pick --rate below the server's capacity (about 80% of it for a soak); with --rate 0 the script measures
capacity for a few seconds with the same mix and uses 80% of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import process_tree  # noqa: E402  (after the repo root is on sys.path)


@dataclass(frozen=True)
class Kind:
    """One sort of request in the mix; `expect` is None for valid requests (any 2xx)."""

    name: str
    endpoint: str
    body: dict | bytes
    expect: int | None = None


CLASSIFY = [
    Kind("classify-one", "classify", {"inputs": ["the drug worked and my headache went away"]}),
    Kind("classify-pairs", "classify", {"inputs": ["no sleep at all", ["the pill", "worked"]], "top_k": 2}),
    Kind("classify-empty", "classify", {"inputs": []}, 422),
    Kind("classify-malformed", "classify", b'{"inputs": ["unclosed', 400),
    Kind("classify-unknown-model", "classify", {"inputs": ["x"], "model": "no-such-model"}, 404),
]
FILL_MASK = [
    Kind("fill-mask", "fill-mask", {"inputs": ["the [MASK] worked for my headache"], "top_k": 3}),
    Kind("fill-mask-no-mask", "fill-mask", {"inputs": ["there is no mask here"]}, 422),
]


def request_mix(base: str) -> list[Kind]:
    """Valid and invalid requests for the endpoints this server has (about 60% valid)."""
    tasks = {model["task"] for model in httpx.get(f"{base}/v1/models", timeout=10).json()["models"]}
    mix = [*CLASSIFY, CLASSIFY[0], CLASSIFY[1]] if "classification" in tasks else []
    return mix + ([*FILL_MASK, FILL_MASK[0]] if "fill-mask" in tasks else [])


# ---- the server's processes ---------------------------------------------------------------------------


def rss_mb(root: int) -> dict[int, float]:
    """Resident memory per process of the tree, in MiB."""
    sizes = {}
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[pid] = int(line.split()[1]) / 1024
    return sizes


def request_counts(base: str) -> Counter:
    """bertserve_requests_total summed per (endpoint, code)."""
    counts: Counter = Counter()
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bertserve_requests_total":
                counts[(sample.labels["endpoint"], sample.labels["code"])] += sample.value
    return counts


# ---- load --------------------------------------------------------------------------------------------


async def send(client: httpx.AsyncClient, base: str, kind: Kind) -> int | str:
    url = f"{base}/v1/{kind.endpoint}"
    try:
        if isinstance(kind.body, bytes):
            headers = {"content-type": "application/json"}
            response = await client.post(url, content=kind.body, headers=headers)
        else:
            response = await client.post(url, json=kind.body)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return response.status_code


async def open_loop(
    base: str, mix: list[Kind], rate: float, duration: float, on_warm=None, warmup: float = 0
):
    """Send mix[i % len(mix)] at i / rate seconds, whatever the answers (independent clients, as in
    production); call on_warm() once `warmup` seconds have passed."""
    results: list[tuple[Kind, int | str]] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(kind: Kind) -> None:
            results.append((kind, await send(client, base, kind)))

        tasks, start, warmed = [], time.monotonic(), on_warm is None
        for index in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            if not warmed and time.monotonic() - start >= warmup:
                warmed = True
                await asyncio.to_thread(on_warm)
            tasks.append(asyncio.create_task(one(mix[index % len(mix)])))
        await asyncio.gather(*tasks)
    return results


def measure_capacity(base: str, mix: list[Kind], seconds: float = 5) -> float:
    """Completed requests per second with 8 clients sending the mix back to back."""

    async def run() -> int:
        done = 0
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=30) as client:

            async def client_loop(offset: int) -> None:
                nonlocal done
                index = offset
                while time.monotonic() < stop:
                    await send(client, base, mix[index % len(mix)])
                    done, index = done + 1, index + 1

            await asyncio.gather(*(client_loop(i) for i in range(8)))
        return done

    return asyncio.run(run()) / seconds


# ---- the run -----------------------------------------------------------------------------------------


def soak(base: str, pid: int, duration: float, rate: float, max_rss_growth_mb: float) -> dict:
    mix = request_mix(base)
    capacity = measure_capacity(base, mix) if rate <= 0 else None
    rate = rate if capacity is None else 0.8 * capacity
    warmup = min(max(0.1 * duration, 2.0), 60.0)
    before = request_counts(base)
    rss: dict[str, dict[int, float]] = {}
    started = time.monotonic()
    results = asyncio.run(
        open_loop(
            base, mix, rate, duration, on_warm=lambda: rss.setdefault("start", rss_mb(pid)), warmup=warmup
        )
    )
    elapsed = time.monotonic() - started
    rss["end"] = rss_mb(pid)
    after = request_counts(base)

    by_kind = Counter((kind.name, status) for kind, status in results)
    sent = Counter((kind.endpoint, str(status)) for kind, status in results)
    counted = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    expected = {kind.name: kind.expect for kind in mix}
    bad_valid = [f"{n}: {s}" for n, s in by_kind if expected[n] is None and s != 200]
    wrong_invalid = [f"{n}: {s}" for n, s in by_kind if expected[n] is not None and s != expected[n]]
    growth = sum(rss["end"].values()) - sum(rss.get("start", rss["end"]).values())
    checks = {
        "valid_requests_all_200": not bad_valid,
        "invalid_requests_get_their_4xx": not wrong_invalid,
        "metrics_count_what_was_sent": {f"{e} {c}": n for (e, c), n in sent.items()}
        == {f"{e} {c}": n for (e, c), n in counted.items()},
        f"rss_growth_at_most_{max_rss_growth_mb:g}_mb": growth <= max_rss_growth_mb,
    }
    return {
        "duration_s": round(elapsed, 1),
        "rate_per_s": round(rate, 1),
        "measured_capacity_per_s": capacity and round(capacity, 1),
        "sent": len(results),
        "by_kind_and_status": {f"{n} {s}": c for (n, s), c in sorted(by_kind.items(), key=str)},
        "metrics_delta": {f"{e} {c}": n for (e, c), n in sorted(counted.items())},
        "unexpected": bad_valid + wrong_invalid,
        "rss_mb": {
            "processes": len(rss["end"]),
            "after_warmup": round(sum(rss.get("start", rss["end"]).values()), 1),
            "end": round(sum(rss["end"].values()), 1),
            "growth": round(growth, 1),
            "growth_by_pid": {
                pid: round(end - rss.get("start", {}).get(pid, 0), 1) for pid, end in rss["end"].items()
            },
        },
        "checks": checks,
        "ok": all(checks.values()),
    }


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    if args.url:
        yield args.url.rstrip("/"), args.pid
        return
    from tests.server_process import running_server

    with running_server(Path(args.store), *args.server_args) as base:
        yield base, base.process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running server (give its main process id with --pid)")
    where.add_argument("--store", help="start a server on this model store (loopback, a free port)")
    parser.add_argument("--pid", type=int, help="main process id of the server at --url, for RSS")
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (default 600)")
    parser.add_argument("--rate", type=float, default=0, help="requests per second (0: 80%% of capacity)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64, help="allowed RSS growth (default 64)")
    parser.add_argument("server_args", nargs="*", help="extra `bertserve serve` arguments (after --)")
    args = parser.parse_args(argv)
    if args.url and args.pid is None:
        parser.error("--url needs --pid (the server's main process) to measure RSS")
    with target(args) as (base, pid):
        summary = soak(base, pid, args.duration, args.rate, args.max_rss_growth_mb)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
