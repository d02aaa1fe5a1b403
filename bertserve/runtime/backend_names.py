"""Backend names and what `auto` stands for, without importing torch (the HTTP processes use it for
/v1/models; the inference workers build the backend itself in backends.py)."""

from __future__ import annotations

import importlib.util

from bertserve.runtime.cpu import native_bf16

BACKENDS = ("fp32", "fp16", "bf16", "int8", "onnx", "onnx-int8")
CPU_ONLY = ("int8", "onnx", "onnx-int8")  # torch.ao dynamic quantization, ONNX Runtime's CPU provider


def auto_candidates(accelerator: str = "cpu") -> list[str]:
    """`auto`'s order: the fastest backends that kept accuracy, macro-F1 and MLM top-5 within 1 point of fp32
    in bench/ (README, Performance). On CUDA: fp16 (tensor cores, 3 more mantissa bits than bf16), then bf16
    (fp16's range can overflow in rare checkpoints: verification catches it), then fp32.
    On the CPU: bf16 first where the CPU has native bf16 (AVX-512 BF16 / AMX): about 2x fp32 there, while
    emulated bf16 (AVX2) measured 5x slower. Then ONNX Runtime fp32 (1.1-1.2x, exact). The int8 backends are
    faster still but lost more than a point, so they are opt-in.
    At load each candidate must still build and pass verification against fp32, else the next is tried."""
    if accelerator == "cuda":
        return ["fp16", "bf16", "fp32"]
    order = []
    if native_bf16():
        order.append("bf16")
    if importlib.util.find_spec("onnxruntime") is not None:
        order.append("onnx")
    return [*order, "fp32"]


def resolve_backend_name(name: str, accelerator: str = "cpu") -> str:
    """The backend `name` stands for before any model is loaded (for `auto`: its first candidate)."""
    return auto_candidates(accelerator)[0] if name == "auto" else name
