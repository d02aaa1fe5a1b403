"""Every inference backend answers what plain transformers answers for each text alone: fp32 and onnx within
fixed tolerances (the service pads a batch, transformers is given each text unpadded), the reduced-precision
backends within a stated share of the logits' spread."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from bertserve.runtime import backend_names, backends
from bertserve.runtime.backends import TOLERANCE, BackendUnavailable, make_backend, probe_batch
from bertserve.runtime.batching import pad_batch

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
NO_ORT = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed (pip install -e '.[onnx]')")
# every backend; the onnx ones are recorded as skipped, not left out, where onnxruntime is missing
ALL = ["fp32", "fp16", "bf16", "int8"] + [pytest.param(n, marks=NO_ORT) for n in ("onnx", "onnx-int8")]
# Largest |backend - transformers| over the logits, as a share of the logits' spread (std), and whether the
# top-1 must be the same on every row. fp32 and onnx are exact computations: assert_close at fixed tolerances.
EXACT = {"fp32": 1e-5, "onnx": 1e-4}
APPROXIMATE = {"fp16": 0.05, "bf16": 0.2, "int8": 0.5, "onnx-int8": 0.5}
TEXTS = [
    "the drug worked and my headache went away",
    "terrible side effects",
    "i took one pill a day for two weeks and the pain was much less after the first week",
    "okay",
    "great",
]


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSERVE_ONNX_CACHE", str(tmp_path / "onnx"))


def encode(folder, texts, masked=False):
    """The texts as one padded batch (what the service runs) and each alone (what transformers is given)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if masked:
        texts = [" ".join([*t.split()[:-1], tokenizer.mask_token]) for t in texts]
    encoded = tokenizer(texts)
    types = encoded.get("token_type_ids") or [[0] * len(ids) for ids in encoded["input_ids"]]
    batch = pad_batch(encoded["input_ids"], types, tokenizer.pad_token_id)
    alone = [tokenizer(text, return_tensors="pt") for text in texts]
    return batch, alone, tuple(tokenizer.model_input_names)


def assert_matches_transformers(reference: torch.Tensor, got: torch.Tensor, name: str) -> None:
    assert got.dtype == torch.float32 and got.shape == reference.shape
    if name in EXACT:
        torch.testing.assert_close(got, reference, atol=EXACT[name], rtol=EXACT[name])
        return
    worst = (got - reference).abs().max().item() / reference.std().item()
    assert worst <= APPROXIMATE[name], f"{name}: off by {worst:.3g} of the logits' spread"
    if name in ("fp16", "bf16"):
        assert torch.equal(reference.argmax(-1), got.argmax(-1)), name


@pytest.mark.parametrize("name", ALL)
def test_classifier_backend_matches_transformers(name, tiny_classifier_dir):
    batch, alone, input_names = encode(tiny_classifier_dir, TEXTS)
    load = AutoModelForSequenceClassification.from_pretrained
    model = load(tiny_classifier_dir).eval()
    with torch.inference_mode():
        reference = torch.cat([model(**inputs).logits for inputs in alone])
    backend = make_backend(name, load(tiny_classifier_dir).eval(), input_names, tiny_classifier_dir)
    assert backend.name == name
    assert_matches_transformers(reference, backend.sequence_logits(batch), name)


@pytest.mark.parametrize("name", ALL)
def test_masked_lm_backend_matches_transformers(name, tiny_mlm_dir):
    batch, alone, input_names = encode(tiny_mlm_dir, TEXTS, masked=True)
    mask_id = AutoTokenizer.from_pretrained(tiny_mlm_dir).mask_token_id
    positions = (batch["input_ids"] == mask_id).nonzero()
    load = AutoModelForMaskedLM.from_pretrained
    model = load(tiny_mlm_dir).eval()
    with torch.inference_mode():
        reference = torch.cat([model(**inputs).logits[inputs["input_ids"] == mask_id] for inputs in alone])
    backend = make_backend(name, load(tiny_mlm_dir).eval(), input_names, tiny_mlm_dir)
    got = backend.masked_logits(batch, positions)
    assert reference.shape == (len(TEXTS), model.config.vocab_size)
    assert_matches_transformers(reference, got, name)


@NO_ORT
def test_onnx_graph_is_cached_by_weights_digest(tiny_classifier_dir, tmp_path):
    *_, input_names = encode(tiny_classifier_dir, TEXTS)
    load = AutoModelForSequenceClassification.from_pretrained
    first = make_backend("onnx", load(tiny_classifier_dir), input_names, tiny_classifier_dir)
    digest = backends.weights_digest(tiny_classifier_dir)
    assert first.graph_path.parent == tmp_path / "onnx" and first.graph_path.name.startswith(digest[:24])
    stamp = first.graph_path.stat().st_mtime_ns
    second = make_backend("onnx", load(tiny_classifier_dir), input_names, tiny_classifier_dir)
    assert second.graph_path == first.graph_path and second.graph_path.stat().st_mtime_ns == stamp


def test_auto_picks_a_verified_backend_and_falls_back(tiny_classifier_dir, monkeypatch):
    *_, input_names = encode(tiny_classifier_dir, TEXTS)
    load = AutoModelForSequenceClassification.from_pretrained
    backend = make_backend("auto", load(tiny_classifier_dir), input_names, tiny_classifier_dir)
    assert backend.name == backend_names.auto_candidates()[0] == backends.resolve_backend_name("auto")
    # a backend that fails verification is skipped by auto and refused when asked for by name
    monkeypatch.setitem(backends.TOLERANCE, "int8", 0.0)
    monkeypatch.setattr(backend_names, "auto_candidates", lambda accelerator: ["int8", "fp32"])
    assert make_backend("auto", load(tiny_classifier_dir), input_names).name == "fp32"
    with pytest.raises(BackendUnavailable, match="int8 differs from fp32"):
        make_backend("int8", load(tiny_classifier_dir), input_names)


def test_gpu_backends_are_verified_on_the_device_they_run_on(tiny_mlm_dir, monkeypatch):
    """auto's CUDA order, run on the CPU (the device is a parameter): fp16 is built there and verified
    against fp32 computed there; a failing fp16 falls back to bf16."""
    assert backend_names.auto_candidates("cuda") == ["fp16", "bf16", "fp32"]
    monkeypatch.setattr(backend_names, "auto_candidates", lambda accelerator: ["fp16", "bf16", "fp32"])
    *_, input_names = encode(tiny_mlm_dir, TEXTS)
    load = AutoModelForMaskedLM.from_pretrained
    backend = make_backend("auto", load(tiny_mlm_dir), input_names, device="cpu")
    assert backend.name == "fp16" and next(backend.model.parameters()).dtype == torch.float16
    assert 0 < backend.verification.relative <= TOLERANCE["fp16"]
    monkeypatch.setitem(backends.TOLERANCE, "fp16", 0.0)
    assert make_backend("auto", load(tiny_mlm_dir), input_names, device="cpu").name == "bf16"


@pytest.mark.parametrize("name", ["int8", "onnx", "onnx-int8"])
def test_cpu_only_backends_are_refused_on_a_gpu(name, tiny_classifier_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    with pytest.raises(BackendUnavailable, match=f"{name} runs on the CPU only; on cuda:0 use fp16"):
        make_backend(name, model, ("input_ids",), tiny_classifier_dir, device="cuda:0")
    assert next(model.parameters()).device.type == "cpu", "refused before any weight moved"


def test_probe_batch_respects_position_limit():
    config = type("C", (), {"vocab_size": 50, "max_position_embeddings": 16})()
    batch, positions = probe_batch(config, ("input_ids", "attention_mask"))
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[1] <= 16
    assert (positions[:, 1] < batch["attention_mask"].sum(1)).all()


def test_unknown_backend_is_rejected(tiny_classifier_dir):
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("tpu", AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir), ())
