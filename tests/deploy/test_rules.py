"""monitoring/: the rules pass `promtool check rules` and their unit tests (`promtool test rules`), the unit
tests catch a broken rule, and every query of the Grafana dashboard is valid PromQL."""

from __future__ import annotations

import json
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
