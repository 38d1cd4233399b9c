"""Measurements a report is made of: perplexity, sparsity, parameters, size, latency, memory."""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compressors.modules import dense_weight, find_blocks, is_quantized, linear_layers

ProgressFn = Callable[[float, str], None]


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, progress: ProgressFn | None = None
) -> float:
    """exp(mean NLL over every predicted token), one window at a time to bound memory."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for index, window in enumerate(windows):
        ids = window.unsqueeze(0).to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
        total_nll += float(nll)
        total_tokens += ids.shape[1] - 1
        if progress:
            progress((index + 1) / len(windows), f"window {index + 1}/{len(windows)}")
    return math.exp(total_nll / total_tokens)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters), counting tied tensors once.

    Quantized weights count as the logical matrix they stand for (dequantized), not as the
    packed bytes that store them.
    """
    quantized = {id(m.weight): m for m in model.modules() if is_quantized(m)}
    total = nonzero = 0
    for param in model.parameters():
        values = dense_weight(quantized[id(param)]) if id(param) in quantized else param.detach()
        total += values.numel()
        nonzero += int(torch.count_nonzero(values).item())
    return total, nonzero


def sparsity_report(model: nn.Module, layer_names: list[str] | None = None) -> dict:
    """Zeros per Linear-like layer: the named ones (what a recipe pruned), else those in blocks.

    `total` is over the layers listed; `model` is over every parameter of the model.
    """
    layers = linear_layers(model)
    if layer_names is None:
        prefix, _ = find_blocks(model)
        layer_names = [n for n in layers if n.startswith(prefix + ".")]
    per_layer: dict[str, float] = {}
    zeros = count = 0
    for name in layer_names:
        weight = dense_weight(layers[name])
        layer_zeros = int((weight == 0).sum().item())
        per_layer[name] = layer_zeros / weight.numel()
        zeros += layer_zeros
        count += weight.numel()
    total, nonzero = parameter_counts(model)
    return {
        "total": zeros / count if count else 0.0,
        "model": 1 - nonzero / total if total else 0.0,
        "per_layer": per_layer,
    }


@torch.no_grad()
def forward_latency(model: nn.Module, seqlen: int = 128, repeats: int = 3) -> dict:
    """Median wall time of one forward pass over a `[1, seqlen]` batch, after one warm-up."""
    device = next(model.parameters()).device
    vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
    ids = torch.randint(0, vocab, (1, seqlen), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    times = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"latency_ms": median * 1000, "seqlen": seqlen, "tokens_per_second": seqlen / median}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_cuda_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
