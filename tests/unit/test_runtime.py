"""The runtime answers what transformers itself computes for the same checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bertserve.errors import ClientError
from bertserve.runtime.batching import pad_batch, plan_batches
from bertserve.runtime.loaded import LoadedModel, Prepared
from bertserve.store.manifest import Manifest

TEXTS = [
    "the drug worked and my headache went away",
    "terrible side effects",
    "i took one pill a day for two weeks and the pain was much less after the first week",
    "okay",
]


def manifest_for(task: str, **fields) -> Manifest:
    return Manifest(
        name="tiny", version="1", task=task, created_at="2026-01-01T00:00:00Z", created_by="test", **fields
    )


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir) -> LoadedModel:
    manifest = manifest_for(
        "classification", problem_type="single_label", labels=["negative", "neutral", "positive"]
    )
    return LoadedModel(manifest, tiny_classifier_dir)


@pytest.fixture(scope="module")
def masked_lm(tiny_mlm_dir) -> LoadedModel:
    return LoadedModel(manifest_for("fill-mask"), tiny_mlm_dir)


def reference_probs(folder, texts, pairs=None, sigmoid=False):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rows = []
    with torch.no_grad():
        for i, text in enumerate(texts):  # one at a time: no padding in the reference
            encoded = tokenizer(text, pairs[i] if pairs else None, return_tensors="pt")
            logits = model(**encoded).logits[0]
            rows.append(torch.sigmoid(logits) if sigmoid else torch.softmax(logits, -1))
    return torch.stack(rows), model.config.id2label


def as_matrix(answer, labels):
    return torch.tensor(
        [[{d["label"]: d["score"] for d in ranking}[label] for label in labels] for ranking in answer]
    )


def test_classification_matches_transformers_in_one_padded_batch(classifier, tiny_classifier_dir):
    expected, id2label = reference_probs(tiny_classifier_dir, TEXTS)
    (answer,) = classifier.classify([Prepared(classifier, classifier.encode(TEXTS, True))], 32, 4096)
    got = as_matrix(answer, [id2label[i] for i in range(3)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert expected.max() > 0.6, "the tiny model must be far from uniform for this test to mean anything"
    for ranking in answer:
        scores = [d["score"] for d in ranking]
        assert scores == sorted(scores, reverse=True)


def test_sentence_pairs_use_segment_ids(classifier, tiny_classifier_dir):
    firsts, seconds = TEXTS[:2], TEXTS[2:]
    expected, id2label = reference_probs(tiny_classifier_dir, firsts, seconds)
    encoded = classifier.encode(list(zip(firsts, seconds, strict=True)), True)
    assert 1 in encoded[0].type_ids, "second segment must carry token_type_id 1"
    (answer,) = classifier.classify([Prepared(classifier, encoded)], 32, 4096)
    torch.testing.assert_close(
        as_matrix(answer, [id2label[i] for i in range(3)]), expected, atol=1e-5, rtol=1e-4
    )


def test_multi_label_answers_sigmoid(tiny_multilabel_dir):
    manifest = manifest_for("classification", problem_type="multi_label", labels=["pain", "sleep", "nausea"])
    model = LoadedModel(manifest, tiny_multilabel_dir)
    expected, _ = reference_probs(tiny_multilabel_dir, TEXTS, sigmoid=True)
    (answer,) = model.classify([Prepared(model, model.encode(TEXTS, True))], 32, 4096)
    torch.testing.assert_close(as_matrix(answer, ["pain", "sleep", "nausea"]), expected, atol=1e-5, rtol=1e-4)
    assert any(abs(sum(d["score"] for d in ranking) - 1) > 0.05 for ranking in answer), "sigmoid, not softmax"


def test_a_half_precision_model_on_its_device_answers_like_fp32(classifier, tiny_classifier_dir):
    """fp16 is the GPU backend; the device is a parameter, so the same code path runs here on the CPU."""
    half = LoadedModel(classifier.manifest, tiny_classifier_dir, "fp16", device="cpu")
    assert (half.device, half.backend.name, half.config._attn_implementation) == ("cpu", "fp16", "sdpa")
    (reference,) = classifier.classify([Prepared(classifier, classifier.encode(TEXTS, True))], 32, 4096)
    (answer,) = half.classify([Prepared(half, half.encode(TEXTS, True))], 32, 4096)
    labels = classifier.labels
    torch.testing.assert_close(as_matrix(answer, labels), as_matrix(reference, labels), atol=0.02, rtol=0)
    assert [r[0]["label"] for r in answer] == [r[0]["label"] for r in reference]


def test_top_k_and_requests_batched_together_keep_their_own_answers(classifier):
    alone = [
        classifier.classify([Prepared(classifier, classifier.encode([t], True))], 32, 4096)[0][0]
        for t in TEXTS
    ]
    requests = [
        Prepared(classifier, classifier.encode([t], True), top_k=1 + i % 3) for i, t in enumerate(TEXTS)
    ]
    together = classifier.classify(requests, 2, 4096)  # batch size 2: several passes, length-sorted
    for i, (single, batched) in enumerate(zip(alone, together, strict=True)):
        assert len(batched[0]) == 1 + i % 3
        assert batched[0][0]["label"] == single[0]["label"]
        assert batched[0][0]["score"] == pytest.approx(single[0]["score"], abs=1e-5)


def test_truncation_matches_transformers_and_refusal_names_the_input(classifier, tiny_classifier_dir):
    long_text = " ".join(["pain"] * 200)
    with pytest.raises(ClientError) as refused:
        classifier.encode(["fine", long_text], truncate=False)
    assert refused.value.status == 422 and "input 1 has 202 tokens" in refused.value.message
    (encoded,) = classifier.encode([long_text], truncate=True)
    assert len(encoded.ids) == classifier.max_length == 64
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    assert encoded.ids == tokenizer(long_text, truncation=True, max_length=64)["input_ids"]


def test_fill_mask_matches_the_transformers_pipeline(masked_lm, tiny_mlm_dir):
    reference = pipeline(
        "fill-mask",
        model=AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir),
        tokenizer=AutoTokenizer.from_pretrained(tiny_mlm_dir),
        top_k=5,
    )
    texts = ["the capital of france is [MASK] .", "i took the [MASK] and my [MASK] went away"]
    (answer,) = masked_lm.fill_mask(
        [Prepared(masked_lm, masked_lm.encode_masked(texts, True), top_k=5)], 32, 4096
    )
    single = reference(texts[0])
    assert [c["token"] for c in answer[0][0]] == [c["token"] for c in single]
    assert [c["score"] for c in answer[0][0]] == pytest.approx([c["score"] for c in single], abs=1e-5)
    assert answer[0][0][0]["sequence"] == single[0]["sequence"]
    assert single[0]["score"] > 0.05, "tiny model must be peaked enough for the comparison to mean anything"
    double = reference(texts[1])  # two masks: a list per mask, left to right
    assert len(answer[1]) == 2
    for ours, theirs in zip(answer[1], double, strict=True):
        assert [c["token"] for c in ours] == [c["token"] for c in theirs]
        assert [c["score"] for c in ours] == pytest.approx([c["score"] for c in theirs], abs=1e-5)
    assert "[MASK]" in answer[1][0][0]["sequence"], "the other mask stays visible in the filled sequence"


def test_fill_mask_targets_restrict_and_rescore_like_transformers(masked_lm, tiny_mlm_dir):
    reference = pipeline(
        "fill-mask",
        model=AutoModelForMaskedLM.from_pretrained(tiny_mlm_dir),
        tokenizer=AutoTokenizer.from_pretrained(tiny_mlm_dir),
    )
    text, targets = "the [MASK] is good", ["coffee", "tea", "dog"]
    ids = masked_lm.target_ids(targets)
    (answer,) = masked_lm.fill_mask(
        [Prepared(masked_lm, masked_lm.encode_masked([text], True), 3, ids)], 32, 4096
    )
    theirs = reference(text, targets=targets, top_k=3)
    assert [c["token_str"] for c in answer[0][0]] == [c["token_str"] for c in theirs]
    assert [c["score"] for c in answer[0][0]] == pytest.approx([c["score"] for c in theirs], abs=1e-6)


def test_fill_mask_refuses_inputs_it_cannot_answer(masked_lm):
    with pytest.raises(ClientError, match="input 1 holds no \\[MASK\\]"):
        masked_lm.encode_masked(["a [MASK]", "no mask here"], True)
    with pytest.raises(ClientError, match="'zzqx'"):
        masked_lm.target_ids(["tea", "zzqx"])
    with pytest.raises(ClientError, match="beyond"):
        masked_lm.encode_masked([" ".join(["tea"] * 100) + " [MASK]"], True)


def test_plan_batches_caps_sequences_and_padded_tokens():
    lengths = [5, 100, 7, 6, 90, 8]
    groups = plan_batches(lengths, max_batch_size=2, max_batch_tokens=10_000)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) <= 2 for g in groups)
    assert groups[0] == [0, 3], "shortest first, so similar lengths share a pass"
    budget = plan_batches(lengths, max_batch_size=64, max_batch_tokens=120)
    assert all(len(g) * max(lengths[i] for i in g) <= 120 or len(g) == 1 for g in budget)
    assert [1] in budget or [4] in budget


def test_pad_batch_pads_to_the_longest_of_the_batch():
    batch = pad_batch([[2, 7, 3], [2, 3]], [[0, 0, 0], [0, 0]], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
