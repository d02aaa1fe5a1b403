"""What the store learns from a folder for the protocols: a cross-encoder's task (detected, or --task rerank)
and an embedding model's sentence-transformers prompts."""

from __future__ import annotations

from typer.testing import CliRunner

from bertserve.cli import app
from bertserve.runtime.encoding import TextEncoder
from bertserve.store.layout import ModelStore
from tests.protocols.common import PROMPTS
from tests.tiny_models import build_classifier, build_cross_encoder, build_sentence_encoder


def test_store_import_task_rerank(tmp_path):
    store = tmp_path / "store"
    folder = build_cross_encoder(tmp_path / "ce")
    for name, extra in (("detected", []), ("named", ["--task", "rerank"])):
        result = CliRunner().invoke(
            app, ["store", "import", str(folder), "--name", name, "--store", str(store), *extra]
        )
        assert result.exit_code == 0, result.output
        assert "(rerank," in result.output
        assert ModelStore(store).read_manifest(name, "1").task == "rerank"
    three_labels = build_classifier(tmp_path / "clf")
    args = ["store", "import", str(three_labels), "--name", "bad", "--task", "rerank", "--store", str(store)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "3 outputs" in refused.output


def test_prompts_and_default_prompt_are_kept_and_applied(tmp_path):
    from bertserve.store.publish import import_hf_folder

    store = ModelStore(tmp_path / "store")
    folder = build_sentence_encoder(tmp_path / "st", prompts=PROMPTS, default_prompt_name="query")
    manifest = import_hf_folder(store, folder, "prompted")
    assert "config_sentence_transformers.json" in manifest.files
    encoder = TextEncoder(manifest, store.version_dir("prompted", "1"))
    assert encoder.prompt(None) == "query: "  # default_prompt_name, as sentence-transformers applies it
    assert encoder.prompt("passage") == "passage: "
    plain = import_hf_folder(store, build_sentence_encoder(tmp_path / "plain"), "plain")
    assert TextEncoder(plain, store.version_dir("plain", "1")).prompt(None) == ""
