"""The README's example calls, sent to a server on the default store (what `make serve` builds): the answers
must carry the model, version and labels the README prints.

Classification is checked label by label: the examples are reviews whose sentiment is unmistakable, so the top
label does not depend on the CPU or the backend. Fill-mask is checked for model, version and shape (inputs x
masks x `top_k` candidates) only: the masked LM trains 300 steps on CPUs with native bf16 and 120 without, so
its word ranking is not the same on every machine. Embeddings come from the published MiniLM weights, with no
training: the numbers the README prints (each vector's first few) must come back.

The own-model quickstart runs as printed, on a small classifier folder in place of `./my-classifier`: its
import, then its serve command (no bootstrap, no default store), then its call must answer with the model
and version printed and one of the folder's labels. The tiny-store quick try runs likewise: its script, what
it prints, its serve command, its call."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.readme_examples import (
    README,
    fill_mask_shape,
    import_as_printed,
    own_model_steps,
    readme_examples,
    tiny_store_steps,
    top_labels,
)
from tests.server_process import running_server
from tests.tiny_models import build_classifier

pytestmark = pytest.mark.integration
REPO = README.parent

EXAMPLES = readme_examples(README.read_text())
CLASSIFY = [e for e in EXAMPLES if e.path == "/v1/classify"]
FILL_MASK = [e for e in EXAMPLES if e.path == "/v1/fill-mask"]
EMBEDDINGS = [e for e in EXAMPLES if e.path == "/v1/embeddings"]


@pytest.fixture(scope="module")
def server(default_store):
    with running_server(default_store) as base:
        yield base


def answer_to(server: str, path: str, body: dict) -> dict:
    response = httpx.post(f"{server}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("example", CLASSIFY, ids=lambda e: str(e.body["inputs"])[:40])
def test_classify_examples_give_the_printed_labels(server, example):
    answer = answer_to(server, example.path, example.body)
    assert (answer["model"], answer["version"]) == (example.answer["model"], example.answer["version"])
    assert top_labels(answer) == top_labels(example.answer)


@pytest.mark.parametrize("example", FILL_MASK, ids=lambda e: str(e.body["inputs"])[:40])
def test_fill_mask_examples_answer_the_printed_model_and_shape(server, example):
    answer = answer_to(server, example.path, example.body)
    assert (answer["model"], answer["version"]) == (example.answer["model"], example.answer["version"])
    assert fill_mask_shape(answer) == fill_mask_shape(example.answer)


def test_the_readme_shows_an_embeddings_example():
    assert EMBEDDINGS, "the README's examples include /v1/embeddings"


@pytest.mark.parametrize("example", EMBEDDINGS, ids=lambda e: str(e.body["input"])[:40])
def test_embeddings_examples_give_the_printed_numbers(server, example):
    answer = answer_to(server, example.path, example.body)
    assert (answer["model"], answer["version"]) == (example.answer["model"], example.answer["version"])
    assert answer["usage"] == example.answer["usage"]
    assert len(answer["data"]) == len(example.answer["data"])
    for got, printed in zip(answer["data"], example.answer["data"], strict=True):
        assert len(got["embedding"]) == 384
        shown = printed["embedding"]
        assert got["embedding"][: len(shown)] == pytest.approx(shown, abs=1e-4)


def serve_and_call_as_printed(tmp_path, serve_args: list[str], call) -> tuple[dict, dict]:
    """Run the printed `bertserve serve --store STORE ...` (STORE under tmp_path), send the printed call;
    (the answer, the printed answer), which name the same model and version."""
    serve_args = serve_args[1:]
    store = tmp_path / serve_args.pop(serve_args.index("--store") + 1)
    serve_args.remove("--store")
    with running_server(store, *serve_args) as base:
        answer = answer_to(base, call.path, call.body)
    assert (answer["model"], answer["version"]) == (call.answer["model"], call.answer["version"])
    return answer, call.answer


def test_your_own_model_in_the_three_readme_commands(tmp_path):
    steps = own_model_steps(README.read_text())
    labels = ("negative", "neutral", "positive")
    import_as_printed(steps.import_args, build_classifier(tmp_path / "hf", labels=labels), tmp_path)
    answer, printed = serve_and_call_as_printed(tmp_path, steps.serve_args, steps.call)
    assert len(answer["predictions"]) == len(printed["predictions"])
    assert set(top_labels(answer)) <= set(labels) and set(top_labels(printed)) <= set(labels)


def test_the_tiny_store_quick_try_as_printed(tmp_path):
    steps = tiny_store_steps(README.read_text())
    made = subprocess.run(
        [sys.executable, str(REPO / steps.script_args[0]), *steps.script_args[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == steps.printed
    answer, printed = serve_and_call_as_printed(tmp_path, steps.serve_args, steps.call)
    assert sorted(c["label"] for c in answer["predictions"][0]) == sorted(
        c["label"] for c in printed["predictions"][0]
    )
