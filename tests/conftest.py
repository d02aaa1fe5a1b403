"""Shared fixtures: tiny random BERT folders (session-scoped, built once) and a temporary store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.tiny_models import build_classifier, build_masked_lm


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("hf") / "tiny-classifier")


@pytest.fixture(scope="session")
def tiny_multilabel_dir(tmp_path_factory) -> Path:
    return build_classifier(
        tmp_path_factory.mktemp("hf") / "tiny-multilabel",
        labels=("pain", "sleep", "nausea"),
        multi_label=True,
    )


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory) -> Path:
    return build_masked_lm(tmp_path_factory.mktemp("hf") / "tiny-mlm")


@pytest.fixture()
def store_root(tmp_path) -> Path:
    root = tmp_path / "model_store"
    root.mkdir()
    return root


def pytest_collection_modifyitems(session, config, items) -> None:
    """A run that collects nothing is a broken run, not a green one."""
    if not items and not config.getoption("collectonly"):
        raise pytest.UsageError("no tests collected: check the paths and -k/-m filters")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """A skipped test checked nothing: say so in one banner at the end of every run, with each reason, so a
    green run with skips is never read as a run where everything was checked."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(
        str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else "" for report in skipped
    )
    terminalreporter.section(
        f"{len(skipped)} TESTS SKIPPED: they checked nothing", sep="!", yellow=True, bold=True
    )
    for reason, count in reasons.most_common():
        terminalreporter.line(f"{count:4d} x {reason}", yellow=True)
