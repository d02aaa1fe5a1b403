"""`bertserve pretrain`: masking, the masked-only projection, fresh tied heads, layer freezing, publishing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertModel

from bertserve.store.layout import ModelStore
from bertserve.training.jobs import pretrain_job
from bertserve.training.mlm import PretrainOptions, load_masked_lm, mask_tokens, masked_logits, pack
from tests.tiny_models import tiny_config, write_tokenizer

SENTENCES = [
    "the capital of france is paris",
    "i took the pill and my headache went away",
    "the doctor said the dose was too big",
    "my dog and my cat sleep in the house",
    "this drug helped my pain after a week",
]


def _passages(count: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" . ".join(rng.sample(SENTENCES, 3)) for _ in range(count)]


def _options(**overrides) -> PretrainOptions:
    params = dict(
        max_steps=6, batch_size=4, max_length=24, eval_every=3, bf16=False, threads=2, heldout_fraction=0.1
    )
    params.update(overrides)
    return PretrainOptions(**params)


@pytest.fixture(scope="module")
def headless_dir(tmp_path_factory) -> Path:
    """A plain BertModel folder (no `cls.*` tensors), like all-MiniLM-L6-v2."""
    folder = tmp_path_factory.mktemp("hf") / "headless"
    tokenizer = write_tokenizer(folder)
    torch.manual_seed(0)
    BertModel(tiny_config(len(tokenizer))).save_pretrained(folder)
    return folder


def _folder(store_root: Path, manifest) -> Path:
    return Path(ModelStore(store_root).version_dir(manifest.name, manifest.version))


def test_masking_follows_bert_80_10_10(tiny_mlm_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    ids = torch.randint(5, len(tokenizer), (400, 64))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    inputs, labels = mask_tokens(ids, tokenizer, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -1].any(), "special tokens must never be chosen"
    masked = (inputs == tokenizer.mask_token_id) & chosen
    unchanged = (inputs == ids) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert abs(unchanged.sum().item() / chosen.sum().item() - 0.1) < 0.03  # (+ random hits on itself)
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])


def test_masked_only_projection_equals_full_logits(tiny_mlm_dir):
    model, fresh = load_masked_lm(tiny_mlm_dir)
    assert not fresh
    model.eval()
    ids = torch.randint(5, model.config.vocab_size, (3, 16))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[2, 7] = ids[0, 3], ids[2, 7]
    with torch.inference_mode():
        full = model(input_ids=ids).logits
        sparse = masked_logits(model, ids, labels)
    assert torch.allclose(sparse, full[labels != -100], atol=1e-5)


def test_pack_fills_rows_without_padding(tiny_mlm_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    rows = pack(tokenizer, _passages(20), 16)
    assert rows.shape[1] == 16 and (rows != tokenizer.pad_token_id).all()
    assert (rows[:, 0] == tokenizer.cls_token_id).all() and (rows[:, -1] == tokenizer.sep_token_id).all()


def test_headless_base_gets_a_fresh_tied_head_and_publishes(store_root, headless_dir):
    manifest = pretrain_job(
        store_root, "mlm", str(headless_dir), _passages(), {"corpus": "test"}, _options(), progress=False
    )
    assert manifest.task == "fill-mask" and manifest.training["fresh_head"] is True
    assert {"top1", "top5", "masked_tokens", "before"} <= set(manifest.metrics)
    assert 0.0 <= manifest.metrics["top1"] <= manifest.metrics["top5"] <= 1.0
    folder = _folder(store_root, manifest)
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "BertForMaskedLM"
    decoder = model.get_output_embeddings().weight
    assert decoder.data_ptr() == model.get_input_embeddings().weight.data_ptr(), "decoder must stay tied"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        logits = model(**tokenizer("the capital of france is [MASK] .", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer)
    assert (folder / "training_curve.png").is_file()


def test_train_layers_freezes_the_rest(store_root, tiny_mlm_dir):
    options = _options(train_layers=1, train_embeddings=False)
    manifest = pretrain_job(store_root, "mlm", str(tiny_mlm_dir), _passages(), {}, options, progress=False)
    base = load_file(tiny_mlm_dir / "model.safetensors")
    trained = load_file(_folder(store_root, manifest) / "model.safetensors")
    frozen = [k for k in base if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert frozen and all(torch.equal(base[k], trained[k]) for k in frozen)
    top = [k for k in base if k.startswith("bert.encoder.layer.1.") and k.endswith("weight")]
    assert any(not torch.equal(base[k], trained[k]) for k in top), "the top layer did not train"


def test_ctrl_c_publishes_nothing(store_root, tiny_mlm_dir):
    def interrupt(step: int, loss: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_job(store_root, "mlm", str(tiny_mlm_dir), _passages(), {}, _options(), False, interrupt)
    assert not [p for p in store_root.rglob("*") if p.is_file()]


def test_pretraining_learns_the_corpus(store_root, tiny_mlm_dir):
    """Five sentences repeated in shuffled passages are learnable: 60 steps lift the held-out top-5 well
    above the `before` numbers the manifest records for the base."""
    options = _options(max_steps=60, eval_every=60, learning_rate=1e-3)
    manifest = pretrain_job(store_root, "mlm", str(tiny_mlm_dir), _passages(300), {}, options, progress=False)
    before, after = manifest.metrics["before"], manifest.metrics
    assert after["masked_tokens"] >= 100, "enough held-out masks for a 0.1 margin to mean something"
    assert after["top5"] >= before["top5"] + 0.1, (before, after)
