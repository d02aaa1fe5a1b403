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
