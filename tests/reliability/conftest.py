"""Helpers for the reliability tests: a classification-only tiny store (one endpoint, so one inference
worker per --workers), metric scraping, the server's inference worker processes, and a load generator."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, set_alias
from tests.tiny_models import build_classifier

# 32 inputs of ~60 tokens each: with --max-batch-size 32 every request is one forward pass of its own, heavy
# enough on a tiny model that a few concurrent clients keep the worker busy.
HEAVY = {"inputs": [" ".join(["the drug worked and my headache went away"] * 8)] * 32, "truncate": True}
LIGHT = {"inputs": ["the drug worked"]}


@pytest.fixture(scope="session")
def classifier_dirs(tmp_path_factory) -> list[Path]:
    """Three different tiny checkpoints: versions 1 and 2 of the store, and one to publish as 3."""
    base = tmp_path_factory.mktemp("hf-reliability")
    return [build_classifier(base / f"c{seed}", seed=seed) for seed in (1, 2, 3)]


def classify_store(root: Path, classifier_dirs: list[Path]) -> ModelStore:
    """sentiment@1 and @2, production -> 1. No fill-mask model: the server runs one endpoint."""
    store = ModelStore(root)
    for folder in classifier_dirs[:2]:
        import_hf_folder(store, folder, "sentiment")
    set_alias(store, "sentiment", "production", "1")
    return store


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics keyed by (name, labels)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    """Sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= lbls)


def worker_pids(server_pid: int) -> list[int]:
    """LitServe's inference workers: the server's children started with multiprocessing's spawn."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@dataclass
class Outcome:
    """One request as the client saw it."""

    sent: float
    received: float
    status: int | str  # an exception name when no HTTP answer came
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


async def _send(client: httpx.AsyncClient, url: str, body: dict) -> Outcome:
    sent = time.monotonic()
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        return Outcome(sent, time.monotonic(), type(exc).__name__)
    try:
        parsed = response.json()
    except ValueError:
        parsed = {"unparsed": response.text[:200]}
    return Outcome(sent, time.monotonic(), response.status_code, parsed, dict(response.headers))


async def closed_loop(
    url: str,
    body: dict,
    clients: int,
    stop: asyncio.Event,
    client_timeout: float = 20,
    outcomes: list[Outcome] | None = None,
) -> list[Outcome]:
    """`clients` concurrent clients, each sending its next request when the last is answered, until `stop`.
    The client timeout bounds every request: a hung connection shows as a ReadTimeout outcome. Outcomes are
    appended to `outcomes` as they come, for a caller that watches them during the run."""
    outcomes = [] if outcomes is None else outcomes
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as client:

        async def one_client() -> None:
            while not stop.is_set():
                outcomes.append(await _send(client, url, body))

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return outcomes


async def open_loop(
    url: str, body: dict, rate: float, duration: float, client_timeout: float = 20
) -> list[Outcome]:
    """Requests at a fixed rate for `duration` seconds, whatever the server answers (an open loop: a slow
    server does not slow the senders down, as with real independent clients)."""
    count = max(1, int(rate * duration))
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(_send(client, url, body)))
        return list(await asyncio.gather(*tasks))


async def burst(url: str, body: dict, count: int, client_timeout: float = 20) -> list[Outcome]:
    """`count` requests sent at once."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=client_timeout, limits=limits) as client:
        return list(await asyncio.gather(*(_send(client, url, body) for _ in range(count))))


def statuses(outcomes: list[Outcome]) -> Counter:
    return Counter(o.status for o in outcomes)
