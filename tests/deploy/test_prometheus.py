"""A real Prometheus (Debian's `prometheus`) on 127.0.0.1 scrapes a real `bertserve serve` on a tiny store.

Checked through Prometheus' HTTP API, against what the test itself sent and what the server exposed:
the request counter equals the number of requests sent, per endpoint and status code; histogram_quantile
over the latency histogram equals the quantile computed here from the exposed buckets (exactly for the
increase between two known instants; in the observed range for the rate-based query the dashboard uses);
the recording and alerting rules of monitoring/rules.yml evaluate without error on the real series;
every Grafana dashboard query runs; and the query KEDA scales the gpu overlay on returns the one number
KEDA needs. Bounded: ~30 s, every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import yaml

from tests.deploy.test_rules import concrete, dashboard_queries
from tests.deploy.tools import REPO, binary

pytestmark = pytest.mark.integration

CLASSIFY = {"endpoint": "classify", "code": "200"}
MAX_QUEUE = 77  # not a default anywhere: the exported bound is the one the server was given
LATENCY = "bertserve_request_duration_seconds_bucket"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from make_tiny_store import make_tiny_store
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from tests.server_process import running_server

    store = make_tiny_store(tmp_path_factory.mktemp("prometheus") / "store")
    with running_server(store, "--workers", "1", "--max-queue", str(MAX_QUEUE)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory) -> Iterator[str]:
    executable = binary("prometheus")
    folder = tmp_path_factory.mktemp("prometheus-server")
    # The shipped rules with a 1 s evaluation interval instead of 30 s, so recording rules exist quickly.
    rules = yaml.safe_load((REPO / "monitoring" / "rules.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (folder / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = yaml.safe_load((REPO / "monitoring" / "prometheus-test.yml").read_text())
    config["rule_files"] = [str(folder / "rules.yml")]
    target = config["scrape_configs"][0]["static_configs"][0]
    target["targets"] = [server.removeprefix("http://")]
    target["labels"] = {"namespace": "bertserve"}  # as the ServiceMonitor's scrape labels the prod pods
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = folder / "prometheus.log"
    command = [
        executable,
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=folder)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus ready", lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode not in (0, -15):
            print(log.read_text()[-3000:])
        shutil.rmtree(folder / "data", ignore_errors=True)


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    response = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def scrapes(prometheus: str) -> float:
    """How many times Prometheus has scraped the server so far."""
    return scalar(prometheus, 'count_over_time(up{job="bertserve"}[1h])') or 0.0


def scalar(prometheus: str, expr: str, at: float | None = None) -> float | None:
    result = query(prometheus, expr, at)
    assert len(result) <= 1, (expr, result)
    return float(result[0]["value"][1]) if result else None


def selector(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def exposed_buckets(server: str, metric: str, labels: dict[str, str]) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of one histogram series, summed as Prometheus' sum by (le)."""
    buckets: dict[float, float] = {}
    for line in httpx.get(f"{server}/metrics", timeout=10).text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        label_text, value = line[len(metric) + 1 :].rsplit("} ", 1)
        pairs = dict(part.split("=", 1) for part in label_text.split(","))
        pairs = {k: v.strip('"') for k, v in pairs.items()}
        if all(pairs.get(k) == v for k, v in labels.items()):
            le = float(pairs["le"])
            buckets[le] = buckets.get(le, 0.0) + float(value)
    return buckets


def quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q * count."""
    bounds = sorted(buckets)
    total = buckets[math.inf]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return bounds[-2]
            fraction = (rank - previous_count) / (count - previous_count)
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    raise AssertionError("unreachable")


def observed_range(buckets: dict[float, float]) -> tuple[float, float]:
    """From the lower edge of the first non-empty bucket to the upper edge of the last one."""
    bounds = sorted(buckets)
    total = buckets[math.inf]
    first = next(i for i, b in enumerate(bounds) if buckets[b] > 0)
    last = next(i for i, b in enumerate(bounds) if buckets[b] == total)
    return (bounds[first - 1] if first else 0.0), bounds[last]


def test_prometheus_scrapes_exact_counts_and_quantiles(server, prometheus):
    classify_total = f"sum(bertserve_requests_total{selector(CLASSIFY)})"
    # One request first, so every series exists before the measured burst (a counter's first sample is
    # otherwise its whole value, which rate() cannot see as an increase).
    httpx.post(f"{server}/v1/classify", json={"inputs": ["warm up"]}, timeout=30).raise_for_status()
    wait_for("the target up", lambda: scalar(prometheus, 'up{job="bertserve"}') == 1)
    wait_for("the warm-up request scraped", lambda: scalar(prometheus, classify_total) == 1)
    quiet = (
        scrapes(prometheus) + 3
    )  # quiet scrapes after the warm-up: the rate window below starts among them
    wait_for("three quiet scrapes", lambda: scrapes(prometheus) >= quiet)
    before = time.time()
    buckets_before = exposed_buckets(server, LATENCY, CLASSIFY)

    sent = {"classify": 0, "fill-mask": 0, "not found": 0}
    with httpx.Client(base_url=server, timeout=30) as client:
        for i in range(20):
            texts = ["this drug worked great and i slept well " * (1 + i % 5)] * (1 + i % 4)
            client.post("/v1/classify", json={"inputs": texts, "model": "sentiment"}).raise_for_status()
            sent["classify"] += 1
        for _ in range(4):
            body = {"inputs": ["the capital of france is [MASK]."], "top_k": 3}
            client.post("/v1/fill-mask", json=body).raise_for_status()
            sent["fill-mask"] += 1
        for _ in range(3):
            assert client.post("/v1/classify", json={"inputs": ["x"], "model": "nope"}).status_code == 404
            sent["not found"] += 1

    expected_total = 1 + sent["classify"]
    wait_for("the burst scraped", lambda: scalar(prometheus, classify_total) == expected_total)
    settled = scrapes(prometheus) + 1  # one scrape past the burst: the window below ends after it
    wait_for("one more scrape", lambda: scrapes(prometheus) >= settled)
    after = time.time()
    buckets_after = exposed_buckets(server, LATENCY, CLASSIFY)

    # Counters: exactly what was sent, per endpoint and code.
    assert scalar(prometheus, classify_total) == expected_total
    fill = 'sum(bertserve_requests_total{endpoint="fill-mask",code="200"})'
    assert scalar(prometheus, fill) == sent["fill-mask"]
    missing = 'sum(bertserve_requests_total{endpoint="classify",code="404"})'
    assert scalar(prometheus, missing) == sent["not found"]
    window = f"{int((after - before) * 1000)}ms"
    series = f"bertserve_requests_total{selector(CLASSIFY)}"
    assert scalar(prometheus, f"sum({series} - {series} offset {window})", at=after) == sent["classify"]
    assert scalar(prometheus, f"sum(bertserve_request_duration_seconds_count{selector(CLASSIFY)})") == (
        expected_total
    )

    # histogram_quantile over the burst's increase equals the quantile of the exposed buckets' increase.
    increase = {le: buckets_after[le] - buckets_before.get(le, 0.0) for le in buckets_after}
    assert increase[math.inf] == sent["classify"]
    buckets = f"{LATENCY}{selector(CLASSIFY)}"
    for q in (0.5, 0.9, 0.99):
        expected = quantile(q, increase)
        got = scalar(
            prometheus,
            f"histogram_quantile({q}, sum by (le) ({buckets} - {buckets} offset {window}))",
            at=after,
        )
        assert got == pytest.approx(expected, rel=1e-9), (q, got, expected, increase)
        # The rate-based form the dashboard and rules use runs on the same series. It is an estimate:
        # rate() extrapolates each bucket series to the window's edges, and with a few dozen requests that
        # can move a quantile a bucket up or down, so it is only held to the observed range.
        window_s = math.ceil(after - before) + 1
        by_rate = scalar(
            prometheus, f"histogram_quantile({q}, sum by (le) (rate({buckets}[{window_s}s])))", at=after
        )
        assert observed_range(buckets_after)[0] <= by_rate <= observed_range(buckets_after)[1], (q, by_rate)


def test_rules_evaluate_on_real_series(server, prometheus):
    # classify traffic exists (the other test or this one); make sure of it, then wait for the rules.
    httpx.post(f"{server}/v1/classify", json={"inputs": ["fine"]}, timeout=30).raise_for_status()

    def recorded():
        rate = query(prometheus, 'endpoint:bertserve_requests:rate5m{endpoint="classify"}')
        ratio = query(prometheus, 'endpoint:bertserve_request_errors:ratio_rate5m{endpoint="classify"}')
        p99 = query(prometheus, 'endpoint:bertserve_request_duration_seconds:p99_5m{endpoint="classify"}')
        drift = query(
            prometheus, 'model_version:bertserve_prediction_low_confidence:ratio_rate1h{model="sentiment"}'
        )
        return (rate and ratio and p99 and drift) and (rate, ratio, p99, drift)

    rate, ratio, p99, drift = wait_for("recording rules on real series", recorded, timeout=30)
    assert float(rate[0]["value"][1]) > 0
    assert float(ratio[0]["value"][1]) == 0.0  # only 200s and 404s: no server errors
    assert 0 < float(p99[0]["value"][1]) <= 30
    assert 0 <= float(drift[0]["value"][1]) <= 1
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 21
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert unhealthy == []
    firing = [r["name"] for r in rules if r["type"] == "alerting" and r["state"] != "inactive"]
    assert firing == []  # a healthy server under light load raises no alert


def test_the_alerts_series_exist_before_anything_goes_wrong(server, prometheus):
    """The queue alert's bound is the server's own, and the restart, expiry and cancel counters exist at 0
    from the start: increase() and rate() see the first event, not only the second."""
    wait_for("the bound scraped", lambda: scalar(prometheus, 'max(bertserve_max_queue{job="bertserve"})'))
    assert scalar(prometheus, 'max(bertserve_max_queue{job="bertserve"})') == MAX_QUEUE
    restarts = query(prometheus, 'bertserve_worker_restarts_total{job="bertserve"}')
    assert [r["metric"]["slot"] for r in restarts] == ["0"]
    assert [float(r["value"][1]) for r in restarts] == [0.0]
    for counter in ("bertserve_expired_requests_total", "bertserve_cancelled_requests_total"):
        endpoints = {r["metric"]["endpoint"] for r in query(prometheus, f'{counter}{{job="bertserve"}}')}
        assert {"classify", "fill-mask"} <= endpoints, (counter, endpoints)


def test_every_dashboard_query_runs_on_real_data(server, prometheus):
    wait_for(
        "classify traffic", lambda: scalar(prometheus, f"sum(bertserve_requests_total{selector(CLASSIFY)})")
    )
    empty = []
    for title, expr in dashboard_queries():
        if not query(prometheus, concrete(expr, rate_interval="1m")):
            empty.append(title)
    assert empty == []  # every panel shows data from this run


def test_the_gpu_autoscaler_query_returns_one_number(server, prometheus):
    """KEDA's Prometheus scaler needs a query that returns a single sample (else it errors and falls back)."""
    scaled = yaml.safe_load((REPO / "k8s" / "overlays" / "gpu" / "scaledobject.yaml").read_text())
    [trigger] = scaled["spec"]["triggers"]
    response = httpx.post(f"{server}/v1/classify", json={"inputs": ["fine"]}, timeout=30)
    assert response.status_code == 200  # the in-flight series exists once a request has come
    expr = trigger["metadata"]["query"]
    [sample] = wait_for(f"a sample of {expr}", lambda: query(prometheus, expr))
    assert sample["metric"] == {}
    assert 0 <= float(sample["value"][1]) < float(trigger["metadata"]["threshold"])  # idle, below target
