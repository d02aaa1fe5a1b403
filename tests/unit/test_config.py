"""Settings logic: per-model backends, and the device and sizing resolved for the machine (the table itself is
tested in test_device.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bertserve.config import Settings
from bertserve.runtime.device import CPU_BATCH, CUDA_BATCH, DeviceUnavailable


def no_gpu() -> tuple[int, str]:
    return 0, "none in this test"


def two_gpus() -> tuple[int, str]:
    return 2, ""


def test_sizing_fills_only_what_is_left_to_it():
    on_16 = Settings().resolved(cpus=16, probe=no_gpu)
    assert (on_16.device, on_16.workers, on_16.torch_threads, on_16.api_servers) == ("cpu", 4, 4, 8)
    assert (on_16.max_batch_size, on_16.max_batch_tokens) == CPU_BATCH
    explicit = Settings(workers=2, torch_threads=3, api_servers=5, max_batch_size=8).resolved(16, no_gpu)
    assert (explicit.workers, explicit.torch_threads, explicit.api_servers) == (2, 3, 5)
    assert (explicit.max_batch_size, explicit.max_batch_tokens) == (8, CPU_BATCH[1])
    # explicit workers still share the CPUs: 16 / 2 threads each
    assert Settings(workers=2).resolved(16, no_gpu).torch_threads == 8


def test_on_cuda_the_batches_grow_unless_set(monkeypatch):
    gpu = Settings(device="cuda").resolved(cpus=16, probe=two_gpus)
    assert (gpu.device, gpu.workers, gpu.max_batch_size, gpu.max_batch_tokens) == ("cuda:0,1", 1, *CUDA_BATCH)
    monkeypatch.setenv("BERTSERVE_MAX_BATCH_TOKENS", "4096")  # set in the environment counts as set
    assert Settings(device="auto").resolved(16, two_gpus).max_batch_tokens == 4096
    assert Settings(device="cpu").resolved(16, two_gpus).device == "cpu"


def test_resolving_twice_changes_nothing():
    once = Settings(device="cuda:1").resolved(cpus=16, probe=two_gpus)
    assert once.resolved(cpus=16, probe=two_gpus) == once


def test_a_missing_gpu_is_refused_and_a_bad_device_is_invalid():
    with pytest.raises(DeviceUnavailable, match="none in this test"):
        Settings(device="cuda").resolved(cpus=4, probe=no_gpu)
    with pytest.raises(ValidationError, match="device"):
        Settings(device="gpu")


def test_model_backends_override_the_default_backend(monkeypatch):
    monkeypatch.setenv("BERTSERVE_MODEL_BACKENDS", " sentiment=int8 , mlm=onnx ")
    settings = Settings(backend="bf16")
    assert [settings.backend_for(name) for name in ("sentiment", "mlm", "other")] == ["int8", "onnx", "bf16"]


@pytest.mark.parametrize("value", ["sentiment", "sentiment=tpu", "=fp32", "sentiment=int8,mlm"])
def test_bad_model_backends_are_refused(value):
    with pytest.raises(ValidationError, match="model_backends"):
        Settings(model_backends=value)


@pytest.fixture(scope="module")
def own_model_store(tmp_path_factory):
    """A store holding one classifier named `mine` and nothing called like the default models."""
    from bertserve.store.layout import ModelStore
    from bertserve.store.publish import import_hf_folder
    from tests.tiny_models import build_classifier

    folder = tmp_path_factory.mktemp("own")
    store = ModelStore(folder / "store")
    import_hf_folder(store, build_classifier(folder / "hf"), "mine")
    return store.root


def test_serve_refuses_at_start_a_default_model_it_does_not_serve(own_model_store):
    """Requests naming no model would all get 404: serve says so in one line and exits 2 before starting."""
    from typer.testing import CliRunner

    from bertserve.cli import app

    result = CliRunner().invoke(app, ["serve", "--store", str(own_model_store)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "the default classification model is 'sentiment'" in lines[0]
    assert "--default-classify-model" in lines[0] and lines[0].endswith("one of: mine")
