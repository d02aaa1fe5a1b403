"""One tiny store and one real server process shared by every HTTP test that does not need its own: tests
that change the store put it back, and counts are compared before and after (never from zero)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, set_alias
from tests.server_process import running_server
from tests.tiny_models import build_classifier, build_masked_lm


def build_tiny_store(root: Path, scratch: Path) -> ModelStore:
    """sentiment v1/v2 (production -> 1), topics (multi-label) and mlm, all tiny random BERTs."""
    store = ModelStore(root)
    import_hf_folder(store, build_classifier(scratch / "s1", seed=1), "sentiment")
    import_hf_folder(store, build_classifier(scratch / "s2", seed=2), "sentiment")
    set_alias(store, "sentiment", "production", "1")
    labels = ("pain", "sleep", "nausea")
    import_hf_folder(store, build_classifier(scratch / "t1", labels=labels, multi_label=True), "topics")
    import_hf_folder(store, build_masked_lm(scratch / "m1"), "mlm")
    return store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> ModelStore:
    base = tmp_path_factory.mktemp("store")
    return build_tiny_store(base / "model_store", base / "hf")


@pytest.fixture(scope="session")
def server(tiny_store) -> str:
    # one worker per endpoint whatever the machine: the queue depth it samples is then exact
    explain = {"BERTSERVE_EXPLAIN_WORKERS": "1"}  # fuzzed and hostile-tested with the rest
    with running_server(tiny_store.root, "--workers", "1", "--batch-timeout", "0.02", env=explain) as base:
        yield base
