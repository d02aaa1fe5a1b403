"""The route table (bertserve/routes.py) is the one place a route is declared: the app answers exactly its
routes, each task API answers the routes of its queue, and the pages that list routes and labels agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from bertserve import routes
from bertserve.config import Settings
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder
from tests.tiny_models import build_classifier, build_masked_lm, build_sentence_encoder

DOCS = Path(__file__).resolve().parents[2] / "docs"
FASTAPI_OWN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def assembled(tmp_path_factory, monkeypatch_module):
    """The server built (not started) on a store with a model of every task, /v1/explain on."""
    from bertserve.server import build_server

    base = tmp_path_factory.mktemp("routes")
    monkeypatch_module.setenv("PROMETHEUS_MULTIPROC_DIR", str(base))
    store = ModelStore(base / "model_store")
    import_hf_folder(store, build_classifier(base / "clf", seed=1), "sentiment")
    import_hf_folder(store, build_masked_lm(base / "mlm"), "mlm")
    import_hf_folder(store, build_sentence_encoder(base / "emb", seed=2), "minilm")
    settings = Settings(store=store.root, explain_workers=1)
    return build_server(settings, base / "draining", base)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_app_answers_exactly_the_routes_of_the_table(assembled):
    app = assembled.litserver.app
    answered = {
        (route.path, method)
        for route in app.routes
        if route.path not in FASTAPI_OWN
        for method in (route.methods or ()) - {"HEAD"}
    }
    declared = {(route.path, route.method) for route in routes.ROUTES}
    assert answered == declared, f"app only: {answered - declared}; table only: {declared - answered}"
    hidden = {r.path for r in app.routes if isinstance(r, APIRoute) and not r.include_in_schema}
    internal = {route.path for route in routes.ROUTES if route.internal}
    assert internal <= hidden, "internal routes stay out of /docs"


def test_each_task_api_answers_the_routes_of_its_queue(assembled):
    from bertserve.api.classify import ClassifyAPI
    from bertserve.api.embeddings import EmbeddingsAPI
    from bertserve.api.explain import ExplainAPI
    from bertserve.api.fill_mask import FillMaskAPI

    settings = Settings()
    for api in (ClassifyAPI(settings), FillMaskAPI(settings), EmbeddingsAPI(settings), ExplainAPI(settings)):
        queued = {path for path, queue in routes.queues().items() if queue == api.endpoint}
        assert set(api.routes()) == queued, api.endpoint


def test_every_route_has_a_known_protocol_and_every_label_is_one_routes():
    assert {route.protocol for route in routes.ROUTES} <= set(routes.PROTOCOLS)
    labels = [route.label for route in routes.ROUTES if route.label is not None]
    assert len(labels) == len(set(labels)), "a label counts one route"
    assert Settings().auth_open_paths.split(",") == list(routes.open_paths())


def test_docs_list_the_routes_and_labels_of_the_table():
    api = (DOCS / "api.md").read_text()
    assert routes.markdown_table() in api, "docs/api.md's route table differs from bertserve/routes.py"
    operations = (DOCS / "operations.md").read_text()
    listing = operations.split("[route table](api.md#every-route) lists: ", 1)[1].split(")", 1)[0]
    listed = set(re.findall(r"`([^`]+)`", listing))
    assert listed == set(routes.metric_labels().values()), "docs/operations.md's endpoint labels"


def test_serve_help_lists_every_public_route_of_the_table():
    from typer.testing import CliRunner

    from bertserve.cli import app

    printed = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "2000"}).output
    for route in routes.ROUTES:
        if not route.internal:
            assert f"{route.method} {route.path}" in printed, f"serve --help leaves out {route.path}"


def test_each_queued_route_has_one_handler_in_the_adapter_of_its_protocol():
    from bertserve.protocols.adapters import ADAPTERS

    assert set(ADAPTERS) == set(routes.PROTOCOLS), "one adapter per protocol"
    queued = {route.path: route.protocol for route in routes.ROUTES if route.queue is not None}
    handled = {path: name for name, adapter in ADAPTERS.items() for path in adapter.handlers}
    assert handled == queued, "a handler answers a queued route of its own protocol, and only that"


def test_the_task_layer_names_no_protocol():
    """api/ computes scores, vectors, rankings, mask fills and explanations; the adapters write them."""
    names = [rf"\b{p}\b" for p in routes.PROTOCOLS if p != "bertserve"] + [r"\bshape\b", r"\.(native|tei)\b"]
    for module in (Path(__file__).resolve().parents[2] / "bertserve" / "api").glob("*.py"):
        code = module.read_text().lower()
        found = [name for name in names if re.search(name, code)]
        assert not found, f"{module.name} names {found}"
        assert "from bertserve.protocols import" not in code, f"{module.name} imports an adapter"
