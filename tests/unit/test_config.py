"""Settings logic: automatic torch threads (the CPUs the process may use, capped by a cgroup CPU quota faked
in tmp_path) and per-model backends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from bertserve.config import Settings, cgroup_cpu_limit

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def cgroup_v1(root: Path, quota: str, period: str) -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        ("200000 100000", 2),  # docker run --cpus 2 / limits.cpu: 2
        ("150000 100000", 1),  # 1.5 CPUs: rounded down, never more threads than the quota
        ("50000 100000", 1),  # half a CPU: still one
        ("6400000 100000", 64),
        ("max 100000", None),  # unlimited
        ("garbage", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, cpus):
    assert cgroup_cpu_limit(cgroup_v2(tmp_path, cpu_max)) == cpus


def test_cgroup_v1_quota_and_period(tmp_path):
    assert cgroup_cpu_limit(cgroup_v1(tmp_path / "limited", "300000", "100000")) == 3
    assert cgroup_cpu_limit(cgroup_v1(tmp_path / "unlimited", "-1", "100000")) is None
    assert cgroup_cpu_limit(tmp_path / "no-cgroup-files") is None


def test_threads_follow_the_quota_and_the_workers(tmp_path):
    one_cpu = cgroup_v2(tmp_path / "one", "100000 100000")
    assert Settings(torch_threads=0).resolved_torch_threads(one_cpu) == 1
    huge = cgroup_v2(tmp_path / "huge", "6400000 100000")  # a quota above the CPUs we may use changes nothing
    assert Settings(torch_threads=0).resolved_torch_threads(huge) == AFFINITY
    unlimited = cgroup_v2(tmp_path / "unlimited", "max 100000")
    assert Settings(torch_threads=0, workers=2).resolved_torch_threads(unlimited) == max(1, AFFINITY // 2)
    v1 = cgroup_v1(tmp_path / "v1", "100000", "100000")
    assert Settings(torch_threads=0, workers=2).resolved_torch_threads(v1) == 1  # never below one


def test_explicit_threads_win_over_the_quota(tmp_path):
    limited = cgroup_v2(tmp_path, "100000 100000")
    assert Settings(torch_threads=3).resolved_torch_threads(limited) == 3


def test_model_backends_override_the_default_backend(monkeypatch):
    monkeypatch.setenv("BERTSERVE_MODEL_BACKENDS", " sentiment=int8 , mlm=onnx ")
    settings = Settings(backend="bf16")
    assert [settings.backend_for(name) for name in ("sentiment", "mlm", "other")] == ["int8", "onnx", "bf16"]


@pytest.mark.parametrize("value", ["sentiment", "sentiment=tpu", "=fp32", "sentiment=int8,mlm"])
def test_bad_model_backends_are_refused(value):
    with pytest.raises(ValidationError, match="model_backends"):
        Settings(model_backends=value)
