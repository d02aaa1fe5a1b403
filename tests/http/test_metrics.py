"""/metrics is real Prometheus text, and its counts are exact: N requests sent -> N counted."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from tests.server_process import ServerURL, running_server


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a real parse of the exposition text."""
    text = httpx.get(f"{base}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= set(lbl))


def fire(base: str, count: int, inputs: list[str], concurrency: int = 16) -> list[int]:
    def one(_):
        return httpx.post(f"{base}/v1/classify", json={"inputs": inputs}, timeout=60).status_code

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(count)))


def test_counts_are_exact_and_batches_form_under_concurrency(server, tiny_store):
    before = scrape(server)
    codes = fire(server, 60, ["the drug worked", "awful nausea"])
    assert codes == [200] * 60
    httpx.post(f"{server}/v1/classify", json={"inputs": "x", "model": "nope"})
    after = scrape(server)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    ok = {"endpoint": "classify", "model": "sentiment", "version": "1", "code": "200"}
    assert delta("bertserve_requests_total", **ok) == 60
    assert delta("bertserve_request_duration_seconds_count", **ok) == 60
    assert delta("bertserve_requests_total", endpoint="classify", code="404") == 1
    model = {"endpoint": "classify", "model": "sentiment", "version": "1"}
    assert delta("bertserve_queue_duration_seconds_count", **model) == 60
    assert delta("bertserve_sequences_total", **model) == 120
    assert delta("bertserve_batch_sequences_sum", **model) == 120
    assert delta("bertserve_predictions_total", model="sentiment", version="1") == 120
    assert delta("bertserve_prediction_score_count", model="sentiment", version="1") == 120
    batches = delta("bertserve_batch_sequences_count", **model)
    single_input_batches = delta("bertserve_batch_requests_bucket", le="1.0", **model)
    assert batches < 60, "concurrent requests were merged into shared forward passes"
    assert single_input_batches < batches, "some batch held more than one request"
    tokenizer = AutoTokenizer.from_pretrained(tiny_store.version_dir("sentiment", "1"))
    longest = max(len(tokenizer(text).input_ids) for text in ["the drug worked", "awful nausea"])
    assert delta("bertserve_batch_tokens_sum", **model) == 120 * longest, "every pass pads to its longest"
    assert delta("bertserve_model_duration_seconds_count", **model) == batches
    assert total(after, "bertserve_requests_in_flight", endpoint="classify") == 0
    depth = [
        v for (n, lbl), v in after.items() if n == "bertserve_queue_depth" and ("endpoint", "classify") in lbl
    ]
    assert depth == [0], "the worker samples what is still queued after every batch: nothing, after the last"


def test_two_workers_share_the_load_and_keep_exact_counts(tiny_store):
    with running_server(
        tiny_store.root, "--workers", "2", "--api-servers", "2", "--batch-timeout", "0.01"
    ) as base:
        before = scrape(base)
        codes = fire(base, 80, ["good drug"], concurrency=24)
        assert codes == [200] * 80
        after = scrape(base)
        ok = {"endpoint": "classify", "model": "sentiment", "version": "1", "code": "200"}
        assert (
            total(after, "bertserve_requests_total", **ok) - total(before, "bertserve_requests_total", **ok)
            == 80
        )
        pids = {
            dict(lbl)["pid"]
            for (n, lbl), v in after.items()
            if n == "bertserve_model_info"
            and v == 1
            and dict(lbl)["endpoint"] == "classify"
            and dict(lbl)["version"] == "1"
        }
        assert len(pids) == 2, "each of the two classify workers loaded the model"
        seq = total(after, "bertserve_sequences_total", endpoint="classify", model="sentiment", version="1")
        assert seq - total(before, "bertserve_sequences_total", endpoint="classify", model="sentiment") == 80
        computed = requests_computed_by_process(base)
        assert set(computed) == {int(pid) for pid in pids}, computed
        assert sum(computed.values()) == 80 and all(computed.values()), f"both workers computed: {computed}"


def requests_computed_by_process(base: ServerURL) -> dict[int, float]:
    """{worker pid: classify requests it computed}, from each process's own multiprocess-metrics file (the
    exposition sums the processes)."""
    (folder,) = base.tmp.glob("bertserve-metrics-*")
    computed = {}
    for path in folder.glob("histogram_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "bertserve_batch_requests_sum" and labels["endpoint"] == "classify":
                pid = int(path.stem.rsplit("_", 1)[1])
                computed[pid] = computed.get(pid, 0) + value
    return computed
