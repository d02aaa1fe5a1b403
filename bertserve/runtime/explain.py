"""Why a classifier answered what it did: integrated gradients per token, and attention probabilities.

Integrated gradients (Sundararajan et al., 2017) on the word embeddings: the path runs from a baseline where
every token but [CLS]/[SEP] is [PAD] to the input, with position and token-type embeddings unchanged. The
integral of the target logit's gradient along the path is taken by Gauss-Legendre quadrature (exact for
polynomials of degree 2*steps-1, so it converges much faster than a Riemann sum); the points of the path run
in batches of at most TOKENS_PER_PASS tokens. A token's attribution is the sum over the hidden dimension of
(input - baseline) * mean gradient; by the completeness axiom the attributions add up to logit minus
baseline logit, and what is left over is reported as `convergence_delta`.

It needs the float32 PyTorch module with gradients, which the explain workers load (api/explain.py): bf16
would blur the gradients, int8 and ONNX cannot give them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bertserve.runtime.encoding import ClassifyInput
from bertserve.runtime.loaded import LoadedModel

# Tokens (path points x sequence length) in one forward + backward pass: bounds the activation memory
TOKENS_PER_PASS = 2048
ATTENTION_DECIMALS = 4  # attention is big ([layer][head][query][key]): 4 decimals keep the JSON small


@dataclass
class ExplainJob:
    """One explain request in a batch (api/explain.py makes it); `model` is a LoadedModel on fp32."""

    model: LoadedModel
    text: ClassifyInput
    target: str | None
    steps: int
    attention: bool
    truncate: bool
    sequences: int = 1
    route: str = ""  # whose handler writes the answer (api/base.py sets it)


def gauss_legendre(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of Gauss-Legendre quadrature on [0, 1] (the weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.tensor((nodes + 1) / 2, dtype=torch.float32), torch.tensor(weights / 2, dtype=torch.float32)


@contextlib.contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """The fused (SDPA) attention kernels return no probabilities: switch to eager for one forward."""
    current = module.config._attn_implementation
    if current == "eager":
        yield
        return
    module.set_attn_implementation("eager")
    try:
        yield
    finally:
        module.set_attn_implementation(current)


def explain(job: ExplainJob) -> tuple[dict, int]:
    """The explanation of one input, and the tokens its passes took (for the batch-tokens metric)."""
    model, tokenizer = job.model, job.model.tokenizer
    module: nn.Module = model.backend.model
    module.requires_grad_(False)  # gradients are wanted for the inputs only
    device = next(module.parameters()).device
    first, second = (job.text, None) if isinstance(job.text, str) else job.text
    encoding = tokenizer(first, second, truncation=job.truncate, max_length=model.max_length)
    keep = {tokenizer.cls_token_id, tokenizer.sep_token_id} - {None}
    ids = torch.tensor([encoding["input_ids"]], device=device)
    baseline_ids = torch.tensor(
        [[t if t in keep else model.pad_id for t in encoding["input_ids"]]], device=device
    )
    types = encoding.get("token_type_ids")
    inputs = {"token_type_ids": torch.tensor([types], device=device)} if types else {}
    embed = module.get_input_embeddings()
    with torch.no_grad():
        x, x0 = embed(ids), embed(baseline_ids)
        logits = _logits(module, torch.cat([x, x0]), inputs)
    target = int(logits[0].argmax()) if job.target is None else model.labels.index(job.target)
    attributions = ((x - x0) * _mean_gradient(module, x, x0, inputs, target, job.steps)).sum(-1)[0]
    logit, baseline_logit = logits[0, target].item(), logits[1, target].item()
    probabilities = torch.sigmoid(logits[0]) if model.multi_label else torch.softmax(logits[0], -1)
    explanation = {
        "label": model.labels[target],
        "score": probabilities[target].item(),
        "logit": logit,
        "baseline_logit": baseline_logit,
        "tokens": tokenizer.convert_ids_to_tokens(encoding["input_ids"]),
        "word_ids": encoding.word_ids() if encoding.is_fast else None,
        "attributions": attributions.tolist(),
        "convergence_delta": attributions.sum().item() - (logit - baseline_logit),
    }
    if job.attention:
        explanation["attention"] = _attention(module, ids, inputs)
    return explanation, ids.shape[1] * (job.steps + 2)


def _logits(module: nn.Module, embeddings: torch.Tensor, inputs: dict) -> torch.Tensor:
    rows = embeddings.shape[0]
    expanded = {key: value.expand(rows, -1) for key, value in inputs.items()}
    return module(inputs_embeds=embeddings, **expanded).logits.float()


def _mean_gradient(
    module: nn.Module, x: torch.Tensor, x0: torch.Tensor, inputs: dict, target: int, steps: int
) -> torch.Tensor:
    """The target logit's gradient averaged along the straight path x0 -> x (quadrature-weighted)."""
    alphas, weights = (t.to(x.device) for t in gauss_legendre(steps))
    per_pass = max(1, TOKENS_PER_PASS // x.shape[1])
    total = torch.zeros_like(x)
    for start in range(0, steps, per_pass):
        alpha = alphas[start : start + per_pass].view(-1, 1, 1)
        points = (x0 + alpha * (x - x0)).requires_grad_(True)
        with torch.enable_grad():
            target_logits = _logits(module, points, inputs)[:, target]
            (grads,) = torch.autograd.grad(target_logits.sum(), points)
        total += (weights[start : start + per_pass].view(-1, 1, 1) * grads).sum(0, keepdim=True)
    return total


@torch.no_grad()
def _attention(module: nn.Module, ids: torch.Tensor, inputs: dict) -> list:
    """[layer][head][query][key] attention probabilities of the input, rounded for the JSON answer."""
    with eager_attention(module):
        attentions = module(input_ids=ids, **inputs, output_attentions=True).attentions
    stacked = torch.stack([layer[0] for layer in attentions]).double().cpu()  # float64: 4 short decimals
    return torch.round(stacked, decimals=ATTENTION_DECIMALS).tolist()
