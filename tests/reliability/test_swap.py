"""Model swaps without downtime: `store alias`, `store rollback` and a newly published version are picked up
by a running server under continuous load, with zero failed requests; every response names the version that
produced it (its scores are that checkpoint's), the old version before the switch and the new one after."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from transformers import BertTokenizerFast

from bertserve.runtime.loaded import LoadedModel, Prepared
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, set_alias
from tests.reliability.conftest import (
    LIGHT,
    Outcome,
    classify_store,
    closed_loop,
    metric_sum,
    scrape,
    statuses,
)
from tests.server_process import log_entries, running_server

pytestmark = pytest.mark.slow


@dataclass
class Switch:
    """One store command and the moment the first response from the version it names came back."""

    command: float
    switched: float
    version: str


def store_cli(store: ModelStore, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "bertserve.cli", "store", *args, "--store", str(store.root)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def expected_scores(store: ModelStore) -> dict[str, list[dict]]:
    """What each version answers for LIGHT, computed here in the test process."""
    scores = {}
    for version in store.versions("sentiment"):
        model = LoadedModel(
            store.read_manifest("sentiment", version), store.version_dir("sentiment", version)
        )
        request = Prepared(model, model.encode(LIGHT["inputs"], truncate=True))
        scores[version] = model.classify([request], 32, 4096)[0]
    return scores


async def swaps_under_load(base: str, steps: list[tuple[Callable[[], object], str]]):
    """Run each store change while 4 clients keep sending; wait for its version to answer before the next."""
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    load = asyncio.create_task(
        closed_loop(f"{base}/v1/classify", LIGHT, clients=4, stop=stop, outcomes=outcomes)
    )
    switches = []

    async def answered(more: int) -> None:
        """Until `more` further requests of the load are answered: traffic on each side of every swap."""
        target, deadline = len(outcomes) + more, time.monotonic() + 60
        while len(outcomes) < target:
            assert time.monotonic() < deadline and not load.done(), f"{more} answers not within 60 s"
            await asyncio.sleep(0.02)

    try:
        await answered(20)
        async with httpx.AsyncClient(timeout=10) as client:
            for change, version in steps:
                command = time.monotonic()
                await asyncio.to_thread(change)
                deadline = time.monotonic() + 60
                while (await client.post(f"{base}/v1/classify", json=LIGHT)).json().get("version") != version:
                    assert time.monotonic() < deadline, f"version {version} not served within 60 s"
                    await asyncio.sleep(0.05)
                switches.append(Switch(command, time.monotonic(), version))
                await answered(20)
    finally:
        stop.set()
        outcomes = await load
    return outcomes, switches


def flat(predictions: list[list[dict]]) -> dict[str, float]:
    return {
        f"{i}:{item['label']}": item["score"] for i, ranking in enumerate(predictions) for item in ranking
    }


def check_versions(outcomes: list[Outcome], first: str, switches: list[Switch], scores: dict) -> None:
    """Old version before each command, new version for every request sent after the switch was seen,
    either of the two in between; and each response's scores are those of the version it names."""
    assert statuses(outcomes) == {200: len(outcomes)}, "zero failed requests during the swaps"
    bounds = [Switch(0.0, 0.0, first), *switches, Switch(float("inf"), float("inf"), "")]
    for outcome in outcomes:
        version = outcome.body["version"]
        assert outcome.headers["x-model-version"] == f"sentiment@{version}"
        assert flat(outcome.body["predictions"]) == pytest.approx(flat(scores[version]), abs=1e-5)
        for index in range(len(bounds) - 1):
            current, following = bounds[index], bounds[index + 1]
            if outcome.sent >= current.switched and outcome.received < following.command:
                assert version == current.version, f"sent after {current.version} took over, got {version}"
            if index and current.command <= outcome.received and outcome.sent < current.switched:
                assert version in (bounds[index - 1].version, current.version)


def model_loaded(base: str, version: str) -> float:
    return metric_sum(scrape(base), "bertserve_model_info", model="sentiment", version=version)


def test_alias_rollback_and_new_version_swap_a_configured_ref_without_downtime(tmp_path, classifier_dirs):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    env = {"BERTSERVE_RELOAD_INTERVAL": "0.2"}
    with running_server(store.root, "--workers", "1", "--models", "sentiment:production", env=env) as base:
        assert (model_loaded(base, "1"), model_loaded(base, "2")) == (1, 0), "only what the ref names loads"
        steps = [
            (lambda: store_cli(store, "alias", "sentiment", "production", "2"), "2"),
            (lambda: store_cli(store, "rollback", "sentiment"), "1"),
            (
                lambda: store_cli(
                    store, "import", str(classifier_dirs[2]), "--name", "sentiment", "--alias", "production"
                ),
                "3",
            ),
        ]
        outcomes, switches = asyncio.run(swaps_under_load(base, steps))
        print(f"\n{len(outcomes)} requests during 3 swaps: {dict(statuses(outcomes))}")
        check_versions(outcomes, "1", switches, expected_scores(store))
        assert [model_loaded(base, v) for v in ("1", "2", "3")] == [0, 0, 1], "the old versions are unloaded"


def test_every_version_server_loads_a_newly_published_version_before_moving_traffic(
    tmp_path, classifier_dirs
):
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    with running_server(store.root, "--workers", "1") as base:  # --models '*', checks before every batch

        def publish_and_promote() -> None:  # what `store import --alias production` does, in-process (faster)
            manifest = import_hf_folder(store, classifier_dirs[2], "sentiment")
            set_alias(store, "sentiment", "production", manifest.version)

        outcomes, switches = asyncio.run(swaps_under_load(base, [(publish_and_promote, "3")]))
        print(f"\n{len(outcomes)} requests during the publish: {dict(statuses(outcomes))}")
        check_versions(outcomes, "1", switches, expected_scores(store))
        assert [model_loaded(base, v) for v in ("1", "2", "3")] == [1, 1, 1], "'*' keeps every version"
        pinned = httpx.post(f"{base}/v1/classify", json={**LIGHT, "model": "sentiment@1"}, timeout=10)
        assert pinned.json()["version"] == "1"


def with_reordered_vocabulary(folder: Path, copy: Path) -> Path:
    """The checkpoint with another tokenizer: the same words under other ids (the specials keep theirs)."""
    shutil.copytree(folder, copy)
    words = (copy / "vocab.txt").read_text().split()
    specials = 5  # [PAD] [UNK] [CLS] [SEP] [MASK]
    (copy / "vocab.txt").write_text("\n".join(words[:specials] + words[specials:][::-1]) + "\n")
    for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy / stale).unlink(missing_ok=True)
    BertTokenizerFast(vocab=str(copy / "vocab.txt"), do_lower_case=True, model_max_length=64).save_pretrained(
        copy
    )
    return copy


def test_a_swap_to_a_version_with_another_tokenizer_never_runs_ids_of_the_other_vocabulary(
    tmp_path, classifier_dirs
):
    """An HTTP process tokenizes with the version it resolves, and its view of the store may lag the
    worker's by a moment: the worker must then tokenize again with its own version's tokenizer."""
    store = ModelStore(tmp_path / "model_store")
    import_hf_folder(store, classifier_dirs[0], "sentiment")
    import_hf_folder(
        store, with_reordered_vocabulary(classifier_dirs[1], tmp_path / "reordered"), "sentiment"
    )
    set_alias(store, "sentiment", "production", "1")
    expected = expected_scores(store)
    with running_server(
        store.root, "--workers", "1"
    ) as base:  # '*': both loaded, a move takes effect at once
        steps = [
            (lambda: set_alias(store, "sentiment", "production", "2"), "2"),
            (lambda: set_alias(store, "sentiment", "production", "1"), "1"),
        ]
        outcomes, switches = asyncio.run(swaps_under_load(base, steps))
        print(f"\n{len(outcomes)} requests during 2 swaps: {dict(statuses(outcomes))}")
        check_versions(outcomes, "1", switches, expected)


def classify_as(base: str, ref: str | None) -> httpx.Response:
    return httpx.post(f"{base}/v1/classify", json={**LIGHT, "model": ref} if ref else LIGHT, timeout=30)


def test_a_pinned_version_keeps_serving_and_a_broken_new_version_is_refused(tmp_path, classifier_dirs):
    """`--models sentiment@1,sentiment:production`: @1 answers as version 1 whatever the alias does; a version
    in the store that no ref names is 404 version_not_loaded; a new version that cannot be loaded is refused
    (logged) and the one the alias named before keeps serving."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    env = {"BERTSERVE_RELOAD_INTERVAL": "0.2"}
    models = "sentiment@1,sentiment:production"
    with running_server(store.root, "--workers", "1", "--models", models, env=env) as base:

        def served_by(ref: str | None, version: str) -> None:
            deadline = time.monotonic() + 60
            while (answer := classify_as(base, ref)).json().get("version") != version:
                assert time.monotonic() < deadline, f"{ref} not answered by version {version} within 60 s"
                time.sleep(0.05)
            assert answer.status_code == 200
            assert flat(answer.json()["predictions"]) == pytest.approx(flat(expected[version]), abs=1e-5)

        def not_loaded(version: str) -> None:
            refused = classify_as(base, f"sentiment@{version}")
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "version_not_loaded"

        not_loaded("2")
        import_hf_folder(store, classifier_dirs[2], "sentiment")  # 3
        set_alias(store, "sentiment", "production", "3")
        import_hf_folder(store, classifier_dirs[1], "sentiment")  # 4, published but named by no ref
        expected = expected_scores(store)
        assert flat(expected["1"]) != pytest.approx(flat(expected["3"]), abs=1e-3), (
            "the two versions answer differently"
        )
        served_by(None, "3")
        served_by("sentiment@1", "1")
        not_loaded("2")
        not_loaded("4")

        broken = import_hf_folder(store, classifier_dirs[0], "sentiment")  # 5: its weights are then damaged
        weights = store.version_dir("sentiment", broken.version) / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        set_alias(store, "sentiment", "production", broken.version)

        def refused() -> list[str]:
            return [e["message"] for e in log_entries(base.log) if "refusing sentiment@" in e["message"]]

        deadline = time.monotonic() + 60
        while not refused():
            assert time.monotonic() < deadline, "the refused version is never logged"
            time.sleep(0.05)
        served_by(None, "3")
        served_by("sentiment:production", "3")
        served_by("sentiment@1", "1")
        assert refused()[0].startswith(f"classify: refusing sentiment@{broken.version}"), refused()
        # the damaged version blocks no later change of the same model
        set_alias(store, "sentiment", "production", "1")
        served_by(None, "1")
    assert "does not match its sha256" in base.log.read_text()


def damage(store: ModelStore, version: str) -> None:
    weights = store.version_dir("sentiment", version) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def test_a_version_refused_at_start_up_never_blocks_a_later_swap(tmp_path, classifier_dirs):
    """`--models sentiment@2,sentiment:production` with version 2 damaged before start: it is refused and
    stays named by a ref. Publishing 3 and moving production to it still lands, and so does a rollback."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    damage(store, "2")
    env = {"BERTSERVE_RELOAD_INTERVAL": "0.2"}
    with running_server(
        store.root, "--workers", "1", "--models", "sentiment@2,sentiment:production", env=env
    ) as base:

        def served_by(version: str) -> None:
            deadline = time.monotonic() + 60
            while classify_as(base, None).json().get("version") != version:
                assert time.monotonic() < deadline, (
                    f"production not answered by version {version} within 60 s"
                )
                time.sleep(0.05)

        served_by("1")
        assert classify_as(base, "sentiment@2").json()["error"]["code"] == "version_not_loaded"
        import_hf_folder(store, classifier_dirs[2], "sentiment")  # 3
        set_alias(store, "sentiment", "production", "3")
        served_by("3")
        store_cli(store, "rollback", "sentiment")
        served_by("1")
    refusals = [e["message"] for e in log_entries(base.log) if "refusing sentiment@2" in e["message"]]
    assert len(refusals) == 1, f"the damaged version is verified once, not on every change: {refusals}"


def test_a_swap_lands_while_multi_input_requests_keep_the_worker_saturated(tmp_path, classifier_dirs):
    """Sixteen clients of 8-input requests against a 16-sequence batch: every batch carries requests to the
    next. The alias move must land while that load goes on (it is kept on for at most 30 s), not after."""
    store = classify_store(tmp_path / "model_store", classifier_dirs)
    env = {"BERTSERVE_RELOAD_INTERVAL": "0.2"}
    eight = {"inputs": ["the drug worked and my headache went away"] * 8}
    args = ("--workers", "1", "--max-batch-size", "16", "--request-timeout", "60")
    with running_server(store.root, *args, env=env) as base:

        async def move_alias_under_load() -> tuple[list[Outcome], float | None]:
            stop, outcomes = asyncio.Event(), []
            load = asyncio.create_task(
                closed_loop(f"{base}/v1/classify", eight, clients=16, stop=stop, outcomes=outcomes)
            )
            try:
                while len(outcomes) < 50:  # saturated: the queue never empties from here on
                    assert not load.done()
                    await asyncio.sleep(0.05)
                moved = time.monotonic()
                await asyncio.to_thread(set_alias, store, "sentiment", "production", "2")
                while time.monotonic() < moved + 30:
                    landed = [o.received for o in outcomes if o.status == 200 and o.body["version"] == "2"]
                    if landed:
                        return outcomes, min(landed) - moved
                    await asyncio.sleep(0.05)
                return outcomes, None
            finally:
                stop.set()
                await load

        outcomes, took = asyncio.run(move_alias_under_load())
    assert statuses(outcomes) == {200: len(outcomes)}
    assert took is not None, "the swap did not land while the worker was saturated"
    print(f"\nswap landed {took:.2f} s after the alias moved, under saturation ({len(outcomes)} requests)")
