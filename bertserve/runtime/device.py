"""Where inference runs (the CPU or CUDA GPUs) and how the machine is divided among processes and threads.

The main process resolves the device and the sizing before it forks the HTTP processes, so it never
initialises CUDA (a CUDA driver does not survive a fork): torch is asked about GPUs in a child process.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Where the kernel shows this process's cgroup (its CPU quota); a parameter below so tests can fake it.
CGROUP_ROOT = Path("/sys/fs/cgroup")
# A CUDA GPU is only visible to torch where NVIDIA's driver shows its device files (dxg: WSL).
DRIVER_FILES = (Path("/dev/nvidiactl"), Path("/dev/dxg"))
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+(,\d+)*)?")

CPU_BATCH = (32, 16384)  # max_batch_size, max_batch_tokens: a CPU forward gains little past 32 sequences
CUDA_BATCH = (128, 65536)  # a GPU needs wide batches to be busy; the token budget bounds its memory
GpuProbe = Callable[[], tuple[int, str]]  # () -> (CUDA GPUs torch sees, why none when 0)
MAX_CPU_WORKERS = 8
CUDA_THREADS = 4  # a GPU worker's CPU work is padding and decode: a few threads are plenty


class DeviceUnavailable(RuntimeError):
    """The requested device is not on this machine; `bertserve serve` prints this one line and exits 2."""


def check_device(spec: str) -> str:
    """A --device value as written, or ValueError."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise ValueError(f"{spec!r} is not auto, cpu, cuda or cuda:N (cuda:0,1: several GPUs)")
    return spec


@dataclass(frozen=True)
class Placement:
    """The CUDA GPUs the inference workers use, one set of workers per GPU; none: the CPU."""

    gpus: tuple[int, ...] = ()

    @property
    def accelerator(self) -> str:
        return "cuda" if self.gpus else "cpu"

    @property
    def spec(self) -> str:
        """The resolved --device value, e.g. 'cpu' or 'cuda:0,1'."""
        return f"cuda:{','.join(map(str, self.gpus))}" if self.gpus else "cpu"


@functools.cache
def cuda_gpus() -> tuple[int, str]:
    """(CUDA GPUs torch sees, why none when 0), asked once per process."""
    if not any(path.exists() for path in DRIVER_FILES):
        return 0, "no NVIDIA driver here: /dev/nvidiactl is missing"
    code = "import torch; print(torch.cuda.device_count(), torch.version.cuda, torch.__version__)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
        )
        count, cuda, version = done.stdout.split()[-3:]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return 0, f"asking torch failed: {exc}"
    if cuda == "None":
        return 0, f"torch {version} is a CPU-only build"
    return int(count), f"torch {version} (CUDA {cuda}) sees none"


def resolve_device(spec: str, probe: GpuProbe | None = None) -> Placement:
    """auto | cpu | cuda | cuda:N[,M...] -> the GPUs to use. `probe()` (default: cuda_gpus) gives (GPU count,
    why none) and is only called when the answer depends on it."""
    if check_device(spec) == "cpu":
        return Placement()
    count, why_none = (probe or cuda_gpus)()
    if spec == "auto":
        return Placement(tuple(range(count)))
    if count == 0:
        raise DeviceUnavailable(f"device {spec}: no CUDA GPU ({why_none}); use --device cpu or auto")
    wanted = tuple(range(count)) if spec == "cuda" else tuple(int(i) for i in spec[5:].split(","))
    missing = [i for i in wanted if i >= count]
    if missing:
        raise DeviceUnavailable(f"device {spec}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return Placement(tuple(dict.fromkeys(wanted)))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Whole CPUs (rounded down, at least 1) a cgroup CPU quota allows; None when unlimited or unknown.

    Reads cgroup v2's cpu.max ("max 100000" or "200000 100000") or v1's cpu/cpu.cfs_quota_us (-1: unlimited)
    and cpu/cpu.cfs_period_us."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return max(1, int(quota) // int(period))
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on, capped by a cgroup CPU quota (`docker run --cpus`, a Kubernetes CPU
    limit), which the affinity mask does not show: more threads than the quota only get throttled."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    return min(cpus, quota) if quota is not None else cpus


@dataclass(frozen=True)
class Sizing:
    workers: int  # inference processes per endpoint; on CUDA per GPU
    torch_threads: int  # per worker
    api_servers: int  # HTTP processes
    max_batch_size: int
    max_batch_tokens: int


def pick_sizing(cpus: int, gpus: int, workers: int = 0) -> Sizing:
    """The defaults for a machine with `cpus` usable CPUs and `gpus` GPUs in use; `workers` when set.

    CPU: one worker per 4 CPUs (at least 1, at most 8) sharing the CPUs as torch threads, and one HTTP
    process per CPU (at most 8): LitServe's default, one per inference worker of every endpoint, ran 4 HTTP
    processes for the default store's four workers on 2 CPUs, each holding its own memory for no more
    throughput than 2.
    Torch's intra-op threads scale poorly: on 16 cores, 4 processes x 4 threads did 1.66x the sequences/s of
    1 x 16. CUDA: one worker per GPU with a few threads, and HTTP processes by the CPUs (one per 4, at most
    8), as a GPU worker answers faster than one HTTP process can feed it."""
    http = min(max(1, cpus // 4), MAX_CPU_WORKERS)
    if gpus:
        workers = workers or 1
        threads = min(max(1, cpus // (gpus * workers)), CUDA_THREADS)
        return Sizing(workers, threads, http, *CUDA_BATCH)
    workers = workers or http
    return Sizing(workers, max(1, cpus // workers), min(cpus, MAX_CPU_WORKERS), *CPU_BATCH)
