"""Inference backends behind one small interface: logits for sequences, logits at masked positions, token
states (last hidden state) for embedding models.

The task decode (softmax, top-k, labels) lives in loaded.py and never knows which backend ran.

Backends (Settings.backend / BERTSERVE_BACKEND / --backend):
- fp32: PyTorch float32, the reference every other backend is verified against;
- fp16: PyTorch with float16 weights, for CUDA GPUs (tensor cores; on a CPU it runs, slowly);
- bf16: PyTorch with bfloat16 weights; on a CPU fast only with native bf16 (AVX-512 BF16 / AMX);
- int8: PyTorch dynamic quantization (torch.ao quantize_dynamic): nn.Linear weights int8, activations
  quantized per batch;
- onnx / onnx-int8: ONNX Runtime on a graph exported on first load (cached, see onnx_export.py), fp32 or
  with dynamically quantized int8 MatMul weights;
- auto: the first of backend_names.auto_candidates() that can be built and passes verification.
The PyTorch backends run on the worker's device (cpu or cuda:N); int8 and the ONNX backends on the CPU only.

Every non-reference backend is verified when it is built: its logits on fixed probe inputs must stay within
the backend's tolerance of the fp32 model's on the same device, with the same top-1 wherever fp32's top-1 is
not a near tie. An embedding model's backend is verified by cosine instead: every probe text's mean-pooled
vector must be at least MIN_COSINE[backend] from fp32's.
A backend that fails is not used: an explicit choice raises BackendUnavailable, `auto` moves on.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from bertserve.runtime import backend_names
from bertserve.runtime.backend_names import BACKENDS, CPU_ONLY, resolve_backend_name
from bertserve.runtime.cpu import native_bf16

logger = logging.getLogger(__name__)
__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "make_backend", "resolve_backend_name"]

# Largest allowed RMS(backend - fp32) / std(fp32) over the probe logits. Exact backends must agree to float
# rounding; the quantized ones are only guarded against gross breakage here (a wrong export scores ~1):
# their accuracy cost is measured on held-out data by bench/ (see bench/README-performance.md).
TOLERANCE = {"fp32": 1e-5, "onnx": 1e-3, "fp16": 0.02, "bf16": 0.08, "int8": 0.5, "onnx-int8": 0.5}
# Least cosine between a backend's and fp32's mean-pooled probe embeddings (embedding models). Measured on
# all-MiniLM-L6-v2 (docs/performance.md): onnx 0.9999999, bf16 0.99984, onnx-int8 0.968, int8 0.888. As
# TOLERANCE does for the quantized backends' logits, the int8 floors only catch a broken graph (cosine near
# 0); what quantization costs an embedding model is stated in docs/performance.md.
MIN_COSINE = {"fp32": 0.99999, "onnx": 0.9999, "fp16": 0.999, "bf16": 0.999, "int8": 0.85, "onnx-int8": 0.85}
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROBE_TEXTS = (
    "the drug worked and my headache went away after two days",
    "terrible side effects, i could not sleep at all",
    "okay",
    "my doctor said to take one pill a day with water before breakfast, and after the first month the pain "
    "was much less than it had been for years, although the nausea never really stopped",
    "i love this medicine",
    "no change",
)


class BackendUnavailable(RuntimeError):
    """The backend cannot be built here (missing package, export failure) or failed verification."""


class Backend(Protocol):
    name: str

    def sequence_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, num_labels] float32 classification logits."""

    def masked_logits(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        """[len(positions), vocab] float32 logits at (row, column) positions of the batch."""

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, tokens, hidden] float32 last hidden state of a bare encoder (an embedding model)."""


def _masked_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(encoder, head) when the head can run on gathered hidden states alone (BERT `cls`, RoBERTa `lm_head`),
    so the vocabulary projection is computed only at masked positions, not for every token."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None:
        return None
    return model.base_model, head


def _is_bare_encoder(model: nn.Module) -> bool:
    """A model with no task head (AutoModel): what an embedding version loads."""
    return getattr(model, "base_model", model) is model


class TorchBackend:
    """PyTorch in float32 (the reference), float16 or bfloat16 weights on the CPU or a GPU, or dynamically
    quantized int8 Linears (CPU). Takes CPU tensors and returns float32 CPU logits on any device."""

    def __init__(
        self,
        model: nn.Module,
        name: str = "fp32",
        input_names: tuple[str, ...] = (),
        device: str = "cpu",
    ):
        self.name = name
        self.input_names = input_names or ("input_ids", "attention_mask", "token_type_ids")
        self.device = torch.device(device)
        if name == "int8":
            import warnings

            with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
                warnings.simplefilter("ignore")
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                # Only the encoder's Linears (where the time goes); the task head stays fp32: the MLM head
                # runs at masked positions only, and its vocabulary projection is the most error-prone.
                # Per output channel: 3-4x smaller error than one scale per weight matrix, same speed.
                self.model = copy.deepcopy(model).eval()
                quantize_dynamic(
                    self.model.base_model,
                    {nn.Linear: per_channel_dynamic_qconfig},
                    dtype=torch.qint8,
                    inplace=True,
                )
        else:
            self.model = model.to(self.device, FLOAT_DTYPES[name]).eval()
        self._mlm_parts = _masked_lm_parts(self.model)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """On a GPU: copied from pinned memory without blocking, so the copy overlaps the CPU's work."""
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: self._to_device(value) for key, value in batch.items() if key in self.input_names}

    @torch.inference_mode()
    def sequence_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**self._inputs(batch)).logits.float().cpu()

    @torch.inference_mode()
    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**self._inputs(batch)).last_hidden_state.float().cpu()

    @torch.inference_mode()
    def masked_logits(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        rows, cols = positions.to(self.device).unbind(1)
        if self._mlm_parts is None:
            return self.model(**self._inputs(batch)).logits[rows, cols].float().cpu()
        encoder, head = self._mlm_parts
        hidden = encoder(**self._inputs(batch)).last_hidden_state
        return head(hidden[rows, cols]).float().cpu()


class OrtBackend:
    """ONNX Runtime (CPU) on an exported graph: classification logits, or the encoder's last hidden state
    (an embedding model's, or a masked LM's, whose head stays in torch and runs at masked positions only)."""

    def __init__(
        self,
        model: nn.Module,
        input_names: tuple[str, ...],
        weights_sha256: str,
        quantized: bool,
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        from bertserve.runtime.onnx_export import exported_graph

        self.name = "onnx-int8" if quantized else "onnx"
        parts = _masked_lm_parts(model)
        self._head: nn.Module | None = None
        if parts is not None:
            module, self.graph = parts[0], "hidden"
            self._head = parts[1].eval()
        else:
            module, self.graph = model, "hidden" if _is_bare_encoder(model) else "logits"
        accepted = _forward_arguments(module)
        self.input_names = tuple(name for name in input_names if name in accepted) or ("input_ids",)
        path = exported_graph(
            module, self.input_names, weights_sha256, self.graph, quantized, getattr(model, "config", None)
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would otherwise spin and take CPU from the HTTP process on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.graph_path = path
        self._feeds = [item.name for item in self.session.get_inputs()]

    def _run(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: batch[name].numpy() for name in self._feeds}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def sequence_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.graph != "logits":
            raise TypeError("an encoder graph has no sequence logits")
        return self._run(batch).float()

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.graph != "hidden" or self._head is not None:
            raise TypeError("only an embedding model's graph gives hidden states here")
        return self._run(batch).float()

    @torch.inference_mode()
    def masked_logits(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        if self._head is None:
            raise TypeError("a classification graph has no masked-LM head")
        hidden = self._run(batch)
        return self._head(hidden[positions[:, 0], positions[:, 1]]).float()


def _forward_arguments(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


# ---- verification --------------------------------------------------------------------------------


@dataclass
class Verification:
    backend: str
    max_abs_diff: float
    relative: float  # RMS(diff) / std(reference)
    top1_agreement: float
    min_cosine: float | None = None  # embedding models: the least cosine to fp32's probe vectors


def probe_batch(config, input_names: tuple[str, ...], seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Fixed pseudo-random padded batch (lengths 5..48) and one masked position per row."""
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(config, "vocab_size", 100))
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    lengths = [min(n, limit) for n in (12, 5, 31, 48, 20, 9)]
    width = max(lengths)
    ids = torch.randint(min(5, vocab - 1), vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = ids * mask
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    batch = {key: value for key, value in batch.items() if key in input_names or key == "input_ids"}
    positions = torch.tensor([[row, length // 2] for row, length in enumerate(lengths)])
    return batch, positions


def _probe(backend: Backend, kind: str, batch: dict, positions: torch.Tensor) -> torch.Tensor:
    """What the probe compares: logits (classification, masked LM) or mean-pooled vectors (embedding)."""
    if kind == "embedding":
        from bertserve.runtime.embed import pool

        return pool(backend.hidden_states(batch), batch["attention_mask"], "mean")
    return backend.masked_logits(batch, positions) if kind == "masked" else backend.sequence_logits(batch)


def compare(reference: torch.Tensor, candidate: torch.Tensor, name: str) -> Verification:
    diff = reference - candidate
    spread = max(reference.std().item(), 1e-6)
    relative = diff.pow(2).mean().sqrt().item() / spread
    top2 = reference.topk(min(2, reference.shape[-1]), dim=-1).values
    margin = top2[:, 0] - top2[:, -1]
    clear = margin > 0.25 * spread  # rows whose top-1 is not a near tie
    same = reference.argmax(-1) == candidate.argmax(-1)
    agreement = same[clear].float().mean().item() if clear.any() else 1.0
    return Verification(name, diff.abs().max().item(), relative, agreement)


def compare_vectors(reference: torch.Tensor, candidate: torch.Tensor, name: str) -> Verification:
    """Embeddings agree when they point the same way: the least per-row cosine is what counts."""
    check = compare(reference, candidate, name)
    check.min_cosine = torch.nn.functional.cosine_similarity(reference, candidate, dim=-1).min().item()
    check.top1_agreement = 1.0  # a vector has no top-1; the cosine stands in for it
    return check


def _failure(check: Verification) -> str | None:
    """Why a verified backend is refused, or None."""
    if check.min_cosine is not None:
        floor = MIN_COSINE[check.backend]
        if check.min_cosine >= floor:
            return None
        return (
            f"{check.backend} embeddings differ from fp32: least cosine {check.min_cosine:.6f} "
            f"(floor {floor:g})"
        )
    if check.relative <= TOLERANCE[check.backend] and check.top1_agreement >= 1.0:
        return None
    return (
        f"{check.backend} differs from fp32: RMS diff / std {check.relative:.4g} (tolerance "
        f"{TOLERANCE[check.backend]:g}), max |diff| {check.max_abs_diff:.4g}, top-1 agreement "
        f"{check.top1_agreement:.2f}"
    )


def text_probe(tokenizer, input_names: tuple[str, ...], masked: bool) -> tuple[dict, torch.Tensor]:
    """PROBE_TEXTS tokenized and padded (a masked LM gets one mask per text, in the middle)."""
    from bertserve.runtime.batching import pad_batch

    encoded = tokenizer(list(PROBE_TEXTS), truncation=True, max_length=64)
    ids = [list(row) for row in encoded["input_ids"]]
    rows = []
    for row, seq in enumerate(ids):
        column = max(1, (len(seq) - 1) // 2)
        if masked and tokenizer.mask_token_id is not None:
            seq[column] = tokenizer.mask_token_id
        rows.append([row, column])
    types = encoded.get("token_type_ids") or [[0] * len(seq) for seq in ids]
    batch = pad_batch(ids, types, tokenizer.pad_token_id or 0)
    batch = {key: value for key, value in batch.items() if key in input_names or key == "input_ids"}
    return batch, torch.tensor(rows)


# ---- construction --------------------------------------------------------------------------------


def weights_digest(folder: Path | None) -> str:
    """sha256 of a checkpoint folder's model.safetensors (the ONNX cache key)."""
    if folder is None or not (Path(folder) / "model.safetensors").is_file():
        raise BackendUnavailable("ONNX backends need the checkpoint's model.safetensors to key their cache")
    digest = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _build(
    name: str,
    model: nn.Module,
    input_names: tuple[str, ...],
    weights_sha256: str | None,
    folder: Path | None,
    device: str,
) -> Backend:
    if name == "bf16" and device == "cpu" and not native_bf16():
        logger.warning("bf16 requested but this CPU has no native bf16: torch emulates it (slow)")
    if name in FLOAT_DTYPES or name == "int8":
        return TorchBackend(model, name, input_names, device)
    if name in ("onnx", "onnx-int8"):
        digest = weights_sha256 or weights_digest(folder)
        try:
            return OrtBackend(model, input_names, digest, quantized=name == "onnx-int8")
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"{name}: export or session failed: {exc}") from exc
    raise ValueError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")


def make_backend(
    name: str,
    model: nn.Module,
    input_names: tuple[str, ...],
    folder: Path | None = None,
    weights_sha256: str | None = None,
    tokenizer=None,
    device: str = "cpu",
) -> Backend:
    """Build (and verify against fp32 on `device`) the named backend for a loaded transformers model in
    float32 on the CPU.

    `folder` is the checkpoint folder (the ONNX cache is keyed by its model.safetensors sha256, or by
    `weights_sha256` when the caller already knows it). Verification probes with PROBE_TEXTS when the
    `tokenizer` is given, else with random token ids. The PyTorch backends move and convert `model` in
    place: do not reuse it."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
    accelerator = torch.device(device).type
    if name in CPU_ONLY and accelerator != "cpu":
        raise BackendUnavailable(f"{name} runs on the CPU only; on {device} use fp16, bf16 or fp32")
    model = model.float().eval()
    candidates = backend_names.auto_candidates(accelerator) if name == "auto" else [name]
    masked = _masked_lm_parts(model) is not None
    kind = "masked" if masked else "embedding" if _is_bare_encoder(model) else "sequence"
    if tokenizer is not None:
        batch, positions = text_probe(tokenizer, input_names, masked)
    else:
        batch, positions = probe_batch(getattr(model, "config", None), input_names)
    reference = None
    if candidates != ["fp32"]:
        reference = _probe(TorchBackend(model, "fp32", input_names, device), kind, batch, positions)
    failures = []
    for candidate in candidates:
        # fp16 and bf16 convert in place: when another candidate may follow, they get a copy
        converts = candidate in ("fp16", "bf16") and len(candidates) > 1
        source = copy.deepcopy(model) if converts else model
        try:
            backend = _build(candidate, source, input_names, weights_sha256, folder, device)
        except BackendUnavailable as exc:
            failures.append(str(exc))
            if name != "auto":
                raise
            logger.warning("backend %s unavailable: %s", candidate, exc)
            continue
        if reference is not None and candidate != "fp32":
            compared = compare_vectors if kind == "embedding" else compare
            check = compared(reference, _probe(backend, kind, batch, positions), candidate)
            backend.verification = check
            message = _failure(check)
            if message is not None:
                if name != "auto":
                    raise BackendUnavailable(message)
                failures.append(message)
                logger.warning("backend %s rejected: %s", candidate, message)
                continue
            logger.info(
                "backend %s verified: RMS diff / std %.4g, max |diff| %.4g%s",
                candidate,
                check.relative,
                check.max_abs_diff,
                "" if check.min_cosine is None else f", least cosine {check.min_cosine:.6f}",
            )
        return backend
    raise BackendUnavailable("no backend passed: " + "; ".join(failures))
