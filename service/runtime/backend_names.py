"""Backend names and what `auto` stands for, without importing torch (the HTTP processes use it for
/v1/models; the inference workers build the backend itself in backends.py)."""

from __future__ import annotations

import importlib.util

from service.runtime.cpu import native_bf16

BACKENDS = ("fp32", "bf16", "int8", "onnx", "onnx-int8")


def auto_candidates() -> list[str]:
    """`auto`'s order: the fastest backend that kept accuracy within 1 point of fp32 in bench/
    (bench/README-performance.md). On the AVX2 machine measured that is ONNX Runtime fp32 (1.2x, exact);
    the int8 backends were faster (1.7-1.9x) but lost 1.1-1.3 accuracy points, so they are opt-in. bf16 only
    where the CPU has native bf16 (AVX-512 BF16 / AMX): emulated bf16 measured 5x slower than fp32.
    At load each candidate must still build and pass verification against fp32, else the next is tried."""
    order = []
    if importlib.util.find_spec("onnxruntime") is not None:
        order.append("onnx")
    if native_bf16():
        order.append("bf16")
    return [*order, "fp32"]


def resolve_backend_name(name: str) -> str:
    """The backend `name` stands for before any model is loaded (for `auto`: its first candidate)."""
    return auto_candidates()[0] if name == "auto" else name
