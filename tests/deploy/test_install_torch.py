"""scripts/install-torch.sh picks the torch build for the machine (`make serve`, `make venv`, the Dockerfile):
the CPU wheel without an NVIDIA GPU, the CUDA one with, each from PyTorch's index for that build. Run in
--dry-run mode with a fake nvidia-smi on PATH, or none."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.tools import REPO

SCRIPT = REPO / "scripts" / "install-torch.sh"
[TORCH_PIN] = [
    d
    for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    if d.startswith("torch==")
]
VERSION = TORCH_PIN.removeprefix("torch==")
NO_DRIVER = Path("/proc/driver/nvidia/gpus")


def dry_run(tmp_path: Path, nvidia_smi: str | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script with PATH = a folder holding only the given nvidia-smi script, plus the basic tools."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        tool = fake_bin / "nvidia-smi"
        tool.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        tool.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_TORCH_")}
    environ.update(env, PATH=f"{fake_bin}:/usr/bin:/bin")
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "/venv/bin/pip", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=30,
    )


@pytest.mark.skipif(
    NO_DRIVER.exists() and any(NO_DRIVER.iterdir()),
    reason="this machine's NVIDIA driver lists GPUs in /proc: a machine without one cannot be faked here",
)
def test_without_a_gpu_the_cpu_wheel_from_the_cpu_index(tmp_path):
    broken_driver = 'echo "NVIDIA-SMI has failed because it could not communicate with the driver"; exit 9'
    for fake in (None, broken_driver):
        result = dry_run(tmp_path, fake)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"install-torch: torch=={VERSION}+cpu (no NVIDIA GPU"), lines
        assert lines[1] == (
            "install-torch: /venv/bin/pip install -q --extra-index-url https://download.pytorch.org/whl/cpu "
            f"torch=={VERSION}+cpu"
        )


def test_with_a_gpu_the_cuda_wheel_from_the_cuda_index(tmp_path):
    gpu = "echo 'GPU 0: NVIDIA H100 (UUID: GPU-0000)'"
    result = dry_run(tmp_path, gpu)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"install-torch: torch=={VERSION}+cu130 (NVIDIA GPU found: GPU 0: NVIDIA H100 (UUID: GPU-0000))"
    )
    assert "--extra-index-url https://download.pytorch.org/whl/cu130" in lines[1]
    # another CUDA index on request, extra pip arguments passed on (the Dockerfile's TORCH_PIP_ARGS)
    result = dry_run(tmp_path, gpu, "--find-links", "/wheels", BERTSERVE_TORCH_CUDA="cu128")
    assert result.stdout.splitlines()[1] == (
        "install-torch: /venv/bin/pip install -q --extra-index-url https://download.pytorch.org/whl/cu128 "
        f"--find-links /wheels torch=={VERSION}+cu128"
    )


def test_the_environment_forces_a_build(tmp_path):
    forced_cuda = dry_run(tmp_path, None, BERTSERVE_TORCH_BUILD="cuda").stdout
    assert forced_cuda.startswith(f"install-torch: torch=={VERSION}+cu130 (BERTSERVE_TORCH_BUILD=cuda)")
    forced_cpu = dry_run(tmp_path, "echo 'GPU 0: NVIDIA A10G'", BERTSERVE_TORCH_BUILD="cpu").stdout
    assert forced_cpu.startswith(f"install-torch: torch=={VERSION}+cpu (BERTSERVE_TORCH_BUILD=cpu)")
    wrong = dry_run(tmp_path, None, BERTSERVE_TORCH_BUILD="gpu")
    assert wrong.returncode == 2
    assert "BERTSERVE_TORCH_BUILD must be auto, cpu or cuda, not 'gpu'" in wrong.stderr
    assert wrong.stdout == ""
