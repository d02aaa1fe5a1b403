"""What this CPU can do fast. bf16 pays off only with native bf16 instructions (AVX-512 BF16 or AMX);
on a CPU without them (e.g. AVX2-only) torch emulates bf16 and a training step measured 25x slower."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_freed_memory() -> None:
    """Hand memory the process has freed back to the OS (glibc's malloc_trim). Loading a version (its
    float32 weights, an ONNX export, the verification probes) peaks far above what it keeps; without this,
    glibc holds on to the freed heap and the worker's resident memory stays at the peak."""
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
