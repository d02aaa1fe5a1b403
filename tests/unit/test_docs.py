"""docs/ documents every setting and every metric the code defines (the docs cannot drift)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from bertserve import metrics
from bertserve.config import Settings

DOCS = Path(__file__).parents[2] / "docs"
API = (DOCS / "api.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [
        f"BERTSERVE_{name.upper()}"
        for name in Settings.model_fields
        if f"BERTSERVE_{name.upper()}" not in API
    ]
    assert not missing, f"docs/api.md configuration table lacks {missing}"


def test_every_metric_is_in_the_metrics_table():
    defined = [m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)]
    assert len(defined) >= 10
    names = [m._name + ("_total" if isinstance(m, Counter) else "") for m in defined]
    missing = [name for name in names if name not in OPERATIONS]
    assert not missing, f"docs/operations.md metrics table lacks {missing}"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BERTSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("BERTSERVE_WORKERS", "2")
    settings = Settings()
    assert (settings.max_batch_size, settings.workers) == (7, 2)
    assert Settings(max_batch_size=3).max_batch_size == 3, (
        "explicit values (CLI flags) win over the environment"
    )
