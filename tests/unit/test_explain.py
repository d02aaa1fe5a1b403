"""runtime/explain.py against the definitions: completeness, an independent integrated-gradients computation,
transformers' own attention probabilities; and the /ui page's promise of no outside requests."""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from bertserve.api.explain import ExplainAPI
from bertserve.config import Settings
from bertserve.errors import ClientError
from bertserve.runtime.explain import ExplainJob, explain, gauss_legendre
from bertserve.runtime.loaded import LoadedModel
from bertserve.schemas import ExplainRequest
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder
from tests.tiny_models import build_classifier

TEXTS = [
    "the drug worked and my headache was less",
    ("i took the pill", "it helped, no sleeping"),
    "terrible side effects, i could not sleep",
    "good",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    root = tmp_path_factory.mktemp("explain")
    store = ModelStore(root / "model_store")
    import_hf_folder(store, build_classifier(root / "hf", seed=1), "sentiment")
    return store


@pytest.fixture(scope="module")
def model(store) -> LoadedModel:
    return LoadedModel(store.read_manifest("sentiment", "1"), store.version_dir("sentiment", "1"), "fp32")


def job(model, text, **options) -> ExplainJob:
    settings = {"target": None, "steps": 64, "attention": False, "truncate": False, **options}
    return ExplainJob(model, text, **settings)


def test_gauss_legendre_integrates_polynomials_exactly():
    nodes, weights = gauss_legendre(4)  # exact up to degree 7
    assert weights.sum().item() == pytest.approx(1)
    assert (weights * nodes**7).sum().item() == pytest.approx(1 / 8, rel=1e-5)
    assert nodes.min() > 0 and nodes.max() < 1


@pytest.mark.parametrize("text", TEXTS)
def test_completeness_within_5_percent_at_64_steps(model, text):
    answer, _ = explain(job(model, text))
    difference = answer["logit"] - answer["baseline_logit"]
    assert abs(difference) > 0.05, "decisive logits, so the bound below can fail"
    assert abs(sum(answer["attributions"]) - difference) <= 0.05 * abs(difference)
    assert answer["convergence_delta"] == pytest.approx(sum(answer["attributions"]) - difference, abs=1e-5)


def trapezoid(steps: int) -> list[tuple[float, float]]:
    return [(k / steps, (0.5 if k in (0, steps) else 1.0) / steps) for k in range(steps + 1)]


def gauss_legendre_points(steps: int) -> list[tuple[float, float]]:
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return [((node + 1) / 2, weight / 2) for node, weight in zip(nodes, weights, strict=True)]


def independent_integrated_gradients(folder, ids, types, target: int, points=None) -> torch.Tensor:
    """Textbook IG, one path point at a time, on transformers' own model: by default the trapezoid rule on
    1000 intervals; `points` gives another rule as (position on the path, weight) pairs."""
    module = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    embed = module.get_input_embeddings()
    special = {2, 3}  # [CLS], [SEP] in tests/tiny_models.py's vocabulary; [PAD] is 0
    baseline = torch.tensor([[t if t in special else 0 for t in ids]])
    x, x0 = embed(torch.tensor([ids])).detach(), embed(baseline).detach()
    gradient_sum = torch.zeros_like(x)
    for alpha, weight in points or trapezoid(1000):
        point = (x0 + alpha * (x - x0)).requires_grad_(True)
        logit = module(inputs_embeds=point, token_type_ids=torch.tensor([types])).logits[0, target]
        (grad,) = torch.autograd.grad(logit, point)
        gradient_sum += grad * weight
    return ((x - x0) * gradient_sum).sum(-1)[0]


@pytest.mark.parametrize("steps", [3, 8])
def test_every_quadrature_point_counts_once(model, store, steps):
    """At a few steps the answer is exactly that many points of Gauss-Legendre, computed here point by point:
    a rule that drops a point, or uses steps-1 points, is off by far more than float32 rounding."""
    text = ("i took the pill", "it helped, no sleeping")
    answer, _ = explain(job(model, text, target="positive", steps=steps))
    encoding = model.tokenizer(*text)
    expected = independent_integrated_gradients(
        store.version_dir("sentiment", "1"),
        encoding["input_ids"],
        encoding["token_type_ids"],
        2,
        gauss_legendre_points(steps),
    )
    ours = torch.tensor(answer["attributions"])
    assert torch.allclose(ours, expected, atol=1e-4 * expected.abs().max().item(), rtol=0), (ours, expected)


def test_attributions_match_an_independent_computation(model, store):
    text = ("i took the pill", "it helped, no sleeping")
    answer, _ = explain(job(model, text, target="positive"))
    encoding = model.tokenizer(*text)
    expected = independent_integrated_gradients(
        store.version_dir("sentiment", "1"), encoding["input_ids"], encoding["token_type_ids"], 2
    )
    ours = torch.tensor(answer["attributions"])
    assert answer["label"] == "positive"
    assert torch.allclose(ours, expected, atol=0.01 * expected.abs().max().item())


def test_attention_is_transformers_own_and_the_model_stays_on_sdpa(model, store):
    text = "the pill worked"
    answer, _ = explain(job(model, text, attention=True, steps=2))
    module = AutoModelForSequenceClassification.from_pretrained(
        store.version_dir("sentiment", "1"), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        expected = module(**model.tokenizer(text, return_tensors="pt"), output_attentions=True).attentions
    assert torch.allclose(torch.tensor(answer["attention"]), torch.stack(expected)[:, 0], atol=1e-4)
    assert model.backend.model.config._attn_implementation == "sdpa"


def test_passes_are_split_by_the_token_budget_without_changing_the_answer(model, monkeypatch):
    whole, tokens = explain(job(model, TEXTS[0], steps=16))
    monkeypatch.setattr("bertserve.runtime.explain.TOKENS_PER_PASS", 25)  # 2 path points per pass
    split, _ = explain(job(model, TEXTS[0], steps=16))
    assert split["attributions"] == pytest.approx(whole["attributions"], abs=1e-5)
    assert tokens == 10 * (16 + 2)


def test_attention_for_too_many_tokens_is_422(model, monkeypatch):
    monkeypatch.setattr("bertserve.api.explain.ATTENTION_MAX_TOKENS", 5)
    api = ExplainAPI(Settings())
    request = ExplainRequest(inputs=TEXTS[0], attention=True)
    with pytest.raises(ClientError) as raised:
        api.tokenize(model.encoder, request)
    assert (raised.value.status, raised.value.code) == (422, "attention_too_large")
    assert len(api.tokenize(model.encoder, ExplainRequest(inputs="good", attention=True)).inputs[0].ids) == 3


def test_the_page_makes_no_outside_requests():
    page = resources.files("bertserve.ui").joinpath("index.html").read_text()
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"@import|url\(|<link\b", page, re.I), "no stylesheets, fonts or images from files"
    assert not re.search(r"""fetch\(\s*["'`]https?:""", page)
    assert re.findall(r"""call\(\s*["'](/[^"']*)""", page) == [
        "/v1/models",
        "/v1/classify",
        "/v1/fill-mask",
        "/v1/explain",
    ]
    assert "localStorage" not in page and "sessionStorage" not in page and "document.cookie" not in page


def test_explain_runs_beside_the_other_tasks_or_not_at_all(
    store_root, tiny_classifier_dir, tmp_path, monkeypatch
):
    from bertserve.server import build_server

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    import_hf_folder(ModelStore(store_root), tiny_classifier_dir, "sentiment")
    settings = Settings(store=store_root, device="cpu", workers=3, explain_workers=1)
    server = build_server(settings, tmp_path / "draining", tmp_path).litserver
    (engine,) = server.litapi_connector
    assert server._inference_workers_config_for_api(engine.api_path) == ["cpu"] * 3
    assert [api.endpoint for api in engine.tasks] == ["classify"] and engine.explain.endpoint == "explain"
    off = build_server(
        settings.model_copy(update={"explain_workers": 0}), tmp_path / "draining", tmp_path
    ).litserver
    (engine,) = off.litapi_connector
    assert [api.endpoint for api in engine.tasks] == ["classify"] and engine.explain is None
    assert "/v1/explain" not in {getattr(route, "path", None) for route in off.app.routes}
