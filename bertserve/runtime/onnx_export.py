"""ONNX export of a loaded transformers model for ONNX Runtime, cached outside the (maybe read-only) store.

The cache key is the version's model.safetensors sha256 plus the torch / onnxruntime versions and the
variant, so a new checkpoint, a new exporter or a new quantizer never reuses a stale graph. Workers that load
the same version at once serialize on a lock file; the graph is written to a temporary name and renamed.

What gets exported:
- classification: input ids / mask / segment ids -> logits;
- masked LM: the encoder only (-> last hidden state); the vocabulary head stays in torch and runs on the
  hidden states of the masked positions alone, as in TorchBackend.

`onnx-int8` is onnxruntime's dynamic quantization of the fp32 graph's MatMul weights to int8 (activations
quantized per batch at run time), per channel, 7-bit (reduce_range) on CPUs without VNNI.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

ONNX_CACHE_ENV = "BERTSERVE_ONNX_CACHE"


def onnx_cache_dir() -> Path:
    """BERTSERVE_ONNX_CACHE, else <BERTSERVE_CACHE or ~/.cache/bertserve>/onnx."""
    if os.environ.get(ONNX_CACHE_ENV):
        return Path(os.environ[ONNX_CACHE_ENV])
    from bertserve.training.assets import cache_dir

    return cache_dir() / "onnx"


class _GraphOutput(nn.Module):
    """Positional tensor inputs (what the exporter traces) -> one named output of the wrapped model."""

    def __init__(self, module: nn.Module, input_names: tuple[str, ...], output: str):
        super().__init__()
        self.module, self.input_names, self.output = module, input_names, output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.module(**dict(zip(self.input_names, inputs, strict=True))), self.output)


def reduce_range() -> bool:
    """7-bit weights where the CPU lacks VNNI: AVX2/AVX-512 u8 x s8 products (VPMADDUBSW) saturate int16
    otherwise, which onnxruntime documents and which we measured (tiny models: top-1 flips without it)."""
    from bertserve.runtime.cpu import cpu_flags

    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()


def cache_key(weights_sha256: str, graph: str, quantized: bool) -> str:
    import onnxruntime

    torch_version = torch.__version__.split("+")[0]
    variant = ("int8r" if reduce_range() else "int8") if quantized else "fp32"
    return f"{weights_sha256[:24]}-{graph}-{variant}-torch{torch_version}-ort{onnxruntime.__version__}"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export(module: _GraphOutput, input_names: tuple[str, ...], output: Path) -> None:
    """TorchScript-based exporter: with dynamic batch and sequence axes it gives onnxruntime's BERT
    fusions (Attention, SkipLayerNorm, Gelu) the op patterns they expect."""
    example = tuple(torch.ones((2, 8), dtype=torch.long) for _ in input_names)
    output_name = module.output
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes[output_name] = {0: "batch"} if output_name == "logits" else {0: "batch", 1: "sequence"}
    with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(open(os.devnull, "w")):
        torch.onnx.export(
            module.eval(),
            example,
            str(output),
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def _optimize(source: Path, output: Path, config) -> None:
    """onnxruntime's transformer optimizer: fuses attention, layer norms and GELU for the CPU kernels."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=getattr(config, "num_attention_heads", 0) or 0,
        hidden_size=getattr(config, "hidden_size", 0) or 0,
        opt_level=1,
        use_gpu=False,
    )
    optimized.save_model_to_file(str(output))


def _quantize(source: Path, output: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(output),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range(),
        op_types_to_quantize=["MatMul", "Attention"],
        # the fused contrib ops (com.microsoft) have no ONNX shape inference: their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def exported_graph(
    module: nn.Module,
    input_names: tuple[str, ...],
    weights_sha256: str,
    graph: str,
    quantized: bool,
    config=None,
) -> Path:
    """Path of the cached .onnx file for this module (exported, optimized, maybe quantized, on first use)."""
    folder = onnx_cache_dir()
    target = folder / f"{cache_key(weights_sha256, graph, quantized)}.onnx"
    if target.is_file():
        return target
    with _locked(target):
        if target.is_file():
            return target
        wrapped = _GraphOutput(module, input_names, "logits" if graph == "logits" else "last_hidden_state")
        with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as scratch:
            raw, fused = Path(scratch) / "raw.onnx", Path(scratch) / "fused.onnx"
            logger.info("exporting %s graph to ONNX (%s)", graph, target.name)
            _export(wrapped, input_names, raw)
            try:
                _optimize(raw, fused, config)
            except Exception:  # an architecture the optimizer does not know: the plain graph still runs
                logger.warning("onnxruntime transformer optimizer failed; using the unfused graph")
                fused = raw
            final = Path(scratch) / "final.onnx"
            if quantized:
                _quantize(fused, final)
            else:
                final = fused
            os.replace(final, target)
    return target
