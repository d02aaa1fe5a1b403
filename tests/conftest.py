"""Shared fixtures: tiny random BERT folders (session-scoped, built once) and a temporary store."""

from __future__ import annotations

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
