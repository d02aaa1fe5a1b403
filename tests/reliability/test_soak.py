"""The CI-sized soak: scripts/soak.py for 25 s on a tiny store, both endpoints, valid and invalid requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http.conftest import build_tiny_store

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_soak_script_short_run_passes_its_checks(tmp_path):
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    duration, rate = 15, 30
    command = [sys.executable, str(REPO / "scripts" / "soak.py"), "--store", str(store.root)]
    run = subprocess.run(
        [*command, "--duration", str(duration), "--rate", str(rate), "--max-rss-growth-mb", "64"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    print(run.stdout)
    summary = json.loads(run.stdout)
    assert summary["checks"] == {
        "valid_requests_all_200": True,
        "invalid_requests_get_their_4xx": True,
        "metrics_count_what_was_sent": True,
        "rss_growth_at_most_64_mb": True,
    }, run.stderr[-3000:]
    assert summary["sent"] == duration * rate and run.returncode == 0
    assert sum(summary["metrics_delta"].values()) == summary["sent"]
