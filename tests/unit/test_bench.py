"""Smoke run of the benchmark on a tiny store: it finishes and writes results of the documented shape.

Only the structure is checked, never a time: benchmarks are not tests."""

from __future__ import annotations

import json

import pytest

from bench import run
from bertserve.runtime.device import cuda_gpus
from bertserve.store.publish import import_hf_folder
from tests.http.conftest import build_tiny_store
from tests.tiny_models import build_sentence_encoder


def test_the_device_picks_the_backends_compared():
    assert run.parse_args([]).backends == list(run.ALL_BACKENDS)
    assert run.parse_args(["--device", "cuda:1"]).backends == ["fp32", "fp16", "bf16"]
    assert run.parse_args(["--backends", "int8", "--server-flags=;--workers 1"]).backends == ["fp32", "int8"]
    assert run.parse_args(["--server-flags=;--workers 1 --api-servers 2"]).server_flags == [
        [],
        ["--workers", "1", "--api-servers", "2"],
    ]


@pytest.mark.skipif(cuda_gpus()[0] > 0, reason="this machine has a CUDA GPU")
def test_bench_on_cuda_without_a_gpu_ends_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^bench: device cuda: no CUDA GPU \("):
        run.main(["--store", str(tmp_path), "--device", "cuda", "--out", str(tmp_path / "results")])
    assert not (tmp_path / "results").exists(), "it stops before measuring anything"


@pytest.mark.slow
def test_bench_quick_run_writes_results(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSERVE_ONNX_CACHE", str(tmp_path / "onnx"))
    monkeypatch.setenv("BERTSERVE_TORCH_THREADS", "1")
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    import_hf_folder(store, build_sentence_encoder(tmp_path / "hf" / "emb"), "emb")
    out = run.main(
        [
            "--store",
            str(store.root),
            "--quick",
            "--data",
            "synthetic",
            "--backends",
            "fp32,bf16",
            "--serve",
            "best",
            "--server-flags=;--workers 1 --api-servers 2",
            "--embedding",
            "emb",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--out",
            str(tmp_path / "results"),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# bertserve benchmark")
    assert (out / "results.png").stat().st_size > 1000
    assert set(results["workloads"]) == {"short", "long"}
    assert (
        16 <= results["workloads"]["short"]["tokens_min"] <= results["workloads"]["short"]["tokens_max"] <= 32
    )
    assert set(results["backends"]) == {"fp32", "bf16"}
    for row in results["backends"].values():
        assert {"ceiling", "classifier", "mlm", "single_forward_ms_p50", "load_s"} <= set(row)
        assert row["ceiling"]["short"]["vs_fp32"] > 0 and row["ceiling"]["long"]["best"]["seq_per_s"] > 0
        assert {"accuracy", "macro_f1", "accuracy_delta"} <= set(row["classifier"])
        assert {"top5", "top5_delta"} <= set(row["mlm"])
    assert results["best_backend"] in results["backends"]
    assert results["device"] == "cpu" and results["settings"]["torch_threads"] == 1
    assert [done["flags"] for done in results["served"]] == ["", "--workers 1 --api-servers 2"]
    served = results["served"][0]
    assert served["startup_s"] > 0 and served["backends_loaded"] == [results["best_backend"]]
    assert {p["role"] for p in served["processes"]} >= {
        "main (supervisor)",
        "inference worker",
    }
    assert all(p["rss_mb"] > 0 for p in served["processes"])
    assert [(p["endpoint"], p["workload"], p["concurrency"]) for p in served["points"]] == [
        (endpoint, workload, concurrency)
        for endpoint in ("classify", "embeddings")
        for workload in ("short", "long")
        for concurrency in (4,)
    ]
    assert results["embedding"] == "emb" and set(results["embeddings"]) == {"fp32", "bf16"}
    for row in results["embeddings"].values():
        ceilings = row["ceiling"]
        assert ceilings["short"]["best"]["seq_per_s"] > 0 and ceilings["long"]["best"]["seq_per_s"] > 0
        assert 0.99 <= row["cosine_to_fp32"]["min"] <= row["cosine_to_fp32"]["mean"] <= 1.0 + 1e-6
    assert "## Embeddings (`emb`" in (out / "results.md").read_text()
    for point in (point for done in results["served"] for point in done["points"]):
        assert point["requests"] > 0 and point["errors"] == 0
        assert {"req_per_s", "seq_per_s", "p50_ms", "p90_ms", "p99_ms", "served_vs_ceiling"} <= set(point)


def test_random_store_has_the_default_models_shapes(tmp_path):
    """bench.random_store stands in for the default store on a machine with no weights (the GPU tables)."""
    from bench import random_store
    from bertserve.store.layout import ModelStore
    from tests.tiny_models import write_tokenizer

    write_tokenizer(tmp_path / "tokenizer")
    random_store.main([str(tmp_path / "store"), "--tokenizer", str(tmp_path / "tokenizer")])
    store = ModelStore(tmp_path / "store")
    sentiment = store.read_manifest("sentiment", "1")
    minilm = store.read_manifest("minilm", "1")
    assert (sentiment.task, sentiment.labels) == ("classification", ["negative", "neutral", "positive"])
    embedding = (minilm.task, minilm.pooling, minilm.normalize, minilm.dimensions)
    assert embedding == ("embedding", "mean", True, 384)
    config = json.loads((store.version_dir("sentiment", "1") / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (6, 384, 12)
    assert store.aliases("sentiment")["production"] == store.aliases("minilm")["production"] == "1"


def test_overhead_bench_puts_bertserve_and_the_http_only_reference_in_one_table(tmp_path):
    """bench.overhead serves a near-zero-cost model and the reference side by side, one short round."""
    from bench import overhead
    from tests.deploy.tools import binary
    from tests.tiny_models import write_tokenizer

    binary("wrk")
    write_tokenizer(tmp_path / "tokenizer")
    args = [
        "--rounds",
        "1",
        "--duration",
        "1",
        "--concurrency",
        "1,4",
        "--tokenizer",
        str(tmp_path / "tokenizer"),
    ]
    overhead.main([*args, "--out", str(tmp_path / "results")])
    (folder,) = (tmp_path / "results").iterdir()
    results = json.loads((folder / "results.json").read_text())
    (row,) = results["rounds"]
    assert set(row) == {"reference", "bertserve"}
    for server in row.values():
        assert all(point["req_per_s"] > 0 and point["errors"] == 0 for point in server.values()), row
    table = (folder / "results.md").read_text()
    assert "| reference |" in table and "| bertserve |" in table and "- c=4: throughput" in table


def test_memory_bench_reports_every_process_of_a_served_store(tmp_path):
    from bench import memory

    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    memory.main(["--store", str(store.root), "--backend", "fp32", "--out", str(tmp_path / "results")])
    (folder,) = (tmp_path / "results").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert results["answered"] == {"/v1/classify": 200, "/v1/fill-mask": 200, "/v1/explain": 200}
    roles = {process["role"] for process in results["processes"]}
    assert {"main (supervisor)", "inference worker", "http server (uvicorn)"} <= roles
    assert "LitServe's mp.Manager" not in roles, "the start-up status needs no Manager process"
    assert all(process["pss_mb"] > 0 for process in results["processes"])
    assert "**all**" in (folder / "results.md").read_text()


def test_embedding_peers_report_puts_both_servers_and_their_ratios_in_one_table():
    """bench.embedding_peers needs infinity-emb in a virtualenv of its own (not in CI): its table is checked
    on results of the shape it writes."""
    from bench import embedding_peers

    def point(rate: float) -> dict:
        return {"c1": {"req_per_s": rate, "p50_ms": 1.0, "errors": 0}}

    rounds = [
        {
            "bertserve": {"short": point(40.0), "long": point(20.0)},
            "infinity": {"short": point(20.0), "long": point(40.0)},
        }
    ]
    results = {"command": "python -m bench.embedding_peers", "rounds": rounds, "model": "minilm"}
    results.update(dtype="float32", backend="fp32")
    results["memory"] = {name: {"processes": 1, "rss_mb": 900, "pss_mb": 800} for name in rounds[0]}
    table = embedding_peers.report(results, [1])
    assert "| bertserve | 40.0 | 20.0 | 1 | 900 | 800 |" in table
    assert "- short c=1: 2.00" in table and "- long c=1: 0.50" in table
