"""monitoring/: the rules pass `promtool check rules` and their unit tests (`promtool test rules`), the unit
tests catch a broken rule, and every query of the Grafana dashboard is valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.tools import REPO, binary

MONITORING = REPO / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 21 rules found" in result.stdout


def test_rules_unit_tests_pass():
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing():
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {
        "BertserveHighErrorRate",
        "BertserveHighLatencyP99",
        "BertserveQueueSaturated",
        "BertserveLowConfidenceDrift",
        "BertserveWorkerRestarted",
        "BertserveRequestsExpired",
        "BertserveRequestsCancelled",
        "BertserveTargetDown",
    }
    tests = yaml.safe_load((MONITORING / "rules.test.yml").read_text())["tests"]
    fired = {t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if t["exp_alerts"]}
    silent = {
        t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if not t["exp_alerts"]
    }
    assert fired == alerts
    assert silent >= alerts - {"BertserveQueueSaturated"}  # its silent case is a neighbour series


@pytest.mark.parametrize(
    ("rule", "original", "broken"),
    [
        ("BertserveHighErrorRate", "> 0.05\n", "> 0.5\n"),  # error threshold
        ("endpoint:bertserve_request_errors:ratio_rate5m", 'code=~"5.."', 'code=~"4.."'),  # client errors
        ("endpoint:bertserve_request_duration_seconds:p99_5m", "(0.99,", "(0.9,"),  # wrong quantile
        ("model_version:bertserve_prediction_low_confidence:ratio_rate1h", 'le="0.5"', 'le="0.9"'),  # drift
        ("BertserveQueueSaturated", "0.8 * max", "200 + 0 * max"),  # a fixed depth, not the exported bound
        ("BertserveWorkerRestarted", "[15m])) > 0", "[15m])) > 1"),  # one restart must be enough
        ("BertserveRequestsExpired", "> 0.05", "> 0.5"),
        ("BertserveRequestsCancelled", "cancelled_requests_total", "expired_requests_total"),
        ("BertserveTargetDown", "== 0", "== 1"),
    ],
)
def test_unit_tests_catch_a_broken_rule(tmp_path, rule, original, broken):
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    [target] = [r for g in rules["groups"] for r in g["rules"] if rule in (r.get("record"), r.get("alert"))]
    assert original in target["expr"], f"{original!r} not in {rule}: {target['expr']}"
    target["expr"] = target["expr"].replace(original, broken)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(MONITORING / "rules.test.yml", tmp_path)
    assert promtool("check", "rules", "rules.yml", cwd=tmp_path).returncode == 0
    result = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests did not notice {broken!r} in {rule}:\n{result.stdout}"


def test_test_scrape_config_is_valid():
    result = promtool("check", "config", "prometheus-test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ dashboard


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def concrete(expr: str, rate_interval: str = "5m") -> str:
    """A dashboard query as Grafana would send it, with the variables at 'All'."""
    return expr.replace("$__rate_interval", rate_interval).replace("$namespace", ".*").replace("$job", ".*")


def test_dashboard_covers_the_operating_questions():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "request rate",
        "error rate",
        "p50 / p99",
        "queue time vs model time",
        "batch size",
        "tokens per batch",
        "label rate",
        "confidence",
        "worker restarts",
        "expired and cancelled",
        "targets down",
    ):
        assert topic in titles, f"no panel about {topic!r}: {titles}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "job"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query as a recording rule: a typo in any panel fails here."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": concrete(expr)}
                    for i, (_, expr) in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in result.stdout


def test_the_model_versions_panel_counts_served_versions_only(tmp_path):
    """After a swap the unloaded version's bertserve_model_info series stays, at 0: it is not served."""
    [expr] = [e for title, e in dashboard_queries() if title == "Model versions loaded"]
    rules = {"groups": [{"name": "panel", "rules": [{"record": "panel:versions", "expr": concrete(expr)}]}]}
    (tmp_path / "panel.yml").write_text(yaml.safe_dump(rules))
    info = (
        'bertserve_model_info{{namespace="prod",job="bertserve",pod="{pod}",endpoint="{endpoint}",'
        'model="{model}",version="{version}",task="classify",backend="onnx",device="cpu"}}'
    )
    series = [
        (info.format(pod="a", endpoint="classify", model="sentiment", version="1"), "1x5 0x5"),  # swapped out
        (info.format(pod="a", endpoint="classify", model="sentiment", version="2"), "_x5 1x5"),  # swapped in
        (info.format(pod="b", endpoint="classify", model="sentiment", version="2"), "1x10"),  # another pod
        (info.format(pod="a", endpoint="explain", model="sentiment", version="2"), "_x5 1x5"),  # its copy
    ]
    test = {
        "rule_files": ["panel.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series],
                "promql_expr_test": [
                    {
                        "expr": "panel:versions",
                        "eval_time": "2m",
                        "exp_samples": [{"labels": "panel:versions", "value": 2}],
                    },
                    {
                        "expr": "panel:versions",
                        "eval_time": "8m",
                        "exp_samples": [{"labels": "panel:versions", "value": 1}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "panel.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", "panel.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------- label sets vs metrics.py

TARGET_LABELS = {"namespace", "job", "pod", "instance"}  # what the scrape adds to every series


def declared_labels() -> dict[str, set[str]]:
    """Each exposed series name -> the labels bertserve/metrics.py (the one place they are) declares."""
    from prometheus_client import Counter, Gauge, Histogram

    from bertserve import metrics

    labels: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, Counter):
            labels[metric._name + "_total"] = set(metric._labelnames)
        elif isinstance(metric, Histogram):
            for suffix in ("_sum", "_count"):
                labels[metric._name + suffix] = set(metric._labelnames)
            labels[metric._name + "_bucket"] = {*metric._labelnames, "le"}
        elif isinstance(metric, Gauge):
            labels[metric._name] = set(metric._labelnames)
    return labels


def queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    found = [(r.get("alert") or r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    return found + dashboard_queries()


def named_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for each label a query names on a bertserve metric: in its selector, or in the
    `by (...)` of the aggregation directly around it (`sum by (a, b) (rate(metric[5m]))`)."""
    named = []
    for metric, matchers in re.findall(r"\b(bertserve_\w+)\{([^}]*)\}", expr):
        named += [(metric, label) for label in re.findall(r"(\w+)\s*[=!]~?", matchers)]
    aggregation = r"by \(([^)]*)\)\s*\((?:\s*\w+\()?\s*(bertserve_\w+)"
    for labels, metric in re.findall(aggregation, expr):
        named += [(metric, label.strip()) for label in labels.split(",") if label.strip()]
    return named


def test_every_label_a_rule_or_panel_names_is_declared_in_metrics_py():
    declared = declared_labels()
    unknown = []
    for name, expr in queries():
        for metric, label in named_labels(expr):
            if metric not in declared:
                unknown.append((name, metric, "no such metric"))
            elif label not in declared[metric] | TARGET_LABELS:
                unknown.append((name, metric, label))
    assert unknown == []
    checked = sum(len(named_labels(expr)) for _, expr in queries())
    assert checked > 60  # the queries are read, not skipped


def test_a_label_not_in_metrics_py_is_caught():
    assert named_labels(
        'sum by (namespace, queue) (rate(bertserve_expired_requests_total{code="5"}[5m]))'
    ) == [
        ("bertserve_expired_requests_total", "code"),
        ("bertserve_expired_requests_total", "namespace"),
        ("bertserve_expired_requests_total", "queue"),
    ]
    declared = declared_labels()["bertserve_expired_requests_total"]
    assert declared == {"endpoint"}
