"""The device a server runs on and the machine-derived defaults (the sizing table), with the GPU count and the
cgroup CPU quota faked; and `bertserve serve --device cuda` on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertserve.config import Settings
from bertserve.runtime import device
from bertserve.runtime.device import (
    DeviceUnavailable,
    Placement,
    Sizing,
    cgroup_cpu_limit,
    cuda_gpus,
    pick_sizing,
    resolve_device,
    usable_cpus,
)

AFFINITY = len(os.sched_getaffinity(0))


def gpus(count: int):
    return lambda: (count, "the reason given")


def never_asked():
    raise AssertionError("--device cpu must not look for GPUs")


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("cpu", None, ()),
        ("auto", 0, ()),
        ("auto", 2, (0, 1)),
        ("cuda", 1, (0,)),
        ("cuda", 4, (0, 1, 2, 3)),
        ("cuda:1", 2, (1,)),
        ("cuda:2,0,2", 3, (2, 0)),
    ],
)
def test_device_resolution(spec, count, expected):
    probe = never_asked if count is None else gpus(count)
    assert resolve_device(spec, probe) == Placement(expected)


def test_placement_spec_resolves_to_itself():
    for placement in (Placement(), Placement((0,)), Placement((1, 3))):
        assert resolve_device(placement.spec, gpus(4)) == placement
    assert (Placement().accelerator, Placement((1, 3)).spec) == ("cpu", "cuda:1,3")


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("cuda", 0, r"device cuda: no CUDA GPU \(the reason given\); use --device cpu or auto"),
        ("cuda:0", 0, "no CUDA GPU"),
        ("cuda:2", 2, "torch sees 2 GPU"),
    ],
)
def test_missing_gpus_are_refused(spec, count, message):
    with pytest.raises(DeviceUnavailable, match=message):
        resolve_device(spec, gpus(count))


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:a", "CPU", "cuda:0,", " cpu"])
def test_bad_device_values(spec):
    with pytest.raises(ValueError, match="not auto, cpu, cuda or cuda:N"):
        resolve_device(spec, never_asked)


@pytest.mark.parametrize(
    ("cpus", "gpus_used", "workers", "expected"),
    [
        # CPU: one worker per 4 CPUs (1..8), the CPUs shared as threads, HTTP processes: one per CPU (1..8)
        (1, 0, 0, Sizing(1, 1, 1, 32, 16384)),
        (2, 0, 0, Sizing(1, 2, 2, 32, 16384)),
        (4, 0, 0, Sizing(1, 4, 4, 32, 16384)),
        (8, 0, 0, Sizing(2, 4, 8, 32, 16384)),
        (16, 0, 0, Sizing(4, 4, 8, 32, 16384)),
        (64, 0, 0, Sizing(8, 8, 8, 32, 16384)),
        (2, 0, 4, Sizing(4, 1, 2, 32, 16384)),  # explicit workers: never below one thread
        # CUDA: one worker per GPU, a few threads, HTTP processes by the CPUs, wide batches
        (16, 1, 0, Sizing(1, 4, 4, 128, 65536)),
        (2, 1, 0, Sizing(1, 2, 1, 128, 65536)),
        (8, 4, 0, Sizing(1, 2, 2, 128, 65536)),
        (64, 8, 2, Sizing(2, 4, 8, 128, 65536)),
    ],
)
def test_sizing_table(cpus, gpus_used, workers, expected):
    assert pick_sizing(cpus, gpus_used, workers) == expected


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


def test_usable_cpus_are_the_affinity_capped_by_the_quota(tmp_path):
    assert usable_cpus(cgroup_v2(tmp_path / "one", "100000 100000")) == 1
    assert usable_cpus(cgroup_v2(tmp_path / "huge", "6400000 100000")) == AFFINITY
    assert usable_cpus(cgroup_v2(tmp_path / "unlimited", "max 100000")) == AFFINITY
    assert usable_cpus(cgroup_v1(tmp_path / "v1", "100000", "100000")) == 1


def test_a_cuda_server_starts_its_workers_one_per_gpu(store_root, tiny_classifier_dir, tmp_path, monkeypatch):
    """The assembly LitServe gets (no worker starts here, so no GPU is needed): each endpoint's workers are
    spread over the GPUs, one per GPU, each told its cuda:N; the HTTP processes come from the sizing."""
    from bertserve.server import build_server
    from bertserve.store.layout import ModelStore
    from bertserve.store.publish import import_hf_folder

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(device, "cuda_gpus", gpus(2))
    import_hf_folder(ModelStore(store_root), tiny_classifier_dir, "sentiment")
    server = build_server(
        Settings(store=store_root, device="cuda"), tmp_path / "draining", tmp_path
    ).litserver
    (engine,) = server.litapi_connector  # one inference process per slot hosts every task
    assert server._inference_workers_config_for_api(engine.api_path) == [["cuda:0"], ["cuda:1"]]
    (api,) = [api for api in engine.tasks if api.endpoint == "classify"]
    assert (api.settings.device, api.settings.workers, api.max_batch_size) == ("cuda:0,1", 1, 128)
    assert engine.explain is not None, "explanations run on a thread of the same processes"
    cpu = build_server(
        Settings(store=store_root, device="cpu", workers=3), tmp_path / "draining", tmp_path
    ).litserver
    assert cpu._inference_workers_config_for_api(engine.api_path) == ["cpu"] * 3


@pytest.mark.skipif(cuda_gpus()[0] > 0, reason="this machine has a CUDA GPU")
def test_serve_on_cuda_without_a_gpu_ends_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bertserve.cli", "serve", "--device", "cuda", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("bertserve serve: device cuda: no CUDA GPU (")
