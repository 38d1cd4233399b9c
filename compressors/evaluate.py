"""Measurements a report is made of: perplexity, sparsity, parameters, size, latency, memory."""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compressors.engine.experts import kind_of_layer, router_names
from compressors.engine.layers import dense_weight, is_packed, kind_of, layer_tensors
from compressors.engine.modules import find_blocks, weight_layers
from compressors.engine.placement import placement_of
from compressors.engine.sequential import BlockContext, for_each_block, sequential_forward
from compressors.io.checkpoint_layers import stored_bytes
from compressors.recipe.protocol import LOGIT_CHUNK
from compressors.report.schema import KindTotals, SparsityReport

ProgressFn = Callable[[float, str], None]




@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, progress: ProgressFn | None = None,
    on_block: Callable[[BlockContext], None] | None = None,
) -> float:
    """exp(mean NLL over every predicted token), one window at a time to bound memory.

    A model in memory runs whole. Any other (onloaded, streamed) runs block by block
    (`engine.sequential.sequential_forward`), `on_block` seeing each loaded block, and its
    LM head runs on `LOGIT_CHUNK` positions at a time (`logits_to_keep`), so the logits of a
    window never sit in memory at once: what lets a model larger than RAM be evaluated.
    """
    placement = placement_of(model)
    total_nll, total_tokens = 0.0, 0
    if placement.mode == "in_memory":
        runs: Iterator = ((w, None) for w in windows)
    else:
        runs = zip(windows, sequential_forward(model, windows, on_block), strict=True)
    for index, (window, run) in enumerate(runs):
        ids = window.unsqueeze(0).to(placement.device)
        if run is None:
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            total_nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        else:
            total_nll += _chunked_nll(run, ids)
        total_tokens += ids.shape[1] - 1
        if progress:
            progress((index + 1) / len(windows), f"window {index + 1}/{len(windows)}")
    return math.exp(total_nll / total_tokens)


def _chunked_nll(run: Callable[..., object], ids: torch.Tensor) -> float:
    """Summed next-token NLL of one window, the head applied to a chunk of positions at a
    time (position t predicts token t + 1)."""
    nll = 0.0
    positions = ids.shape[1] - 1
    for start in range(0, positions, LOGIT_CHUNK):
        keep = torch.arange(start, min(start + LOGIT_CHUNK, positions), device=ids.device)
        logits = run(logits_to_keep=keep).logits[0].float()
        nll += float(F.cross_entropy(logits, ids[0, keep + 1], reduction="sum"))
    return nll


@dataclass
class Census:
    """Parameters, nonzeros, bytes and per-layer zeros, added up part by part: a whole model
    at once, or a streamed one block by block while each block is loaded. Shared tensors count
    once; quantized weights count as the logical matrix they stand for (dequantized), not as
    the packed bytes that store them."""

    parameters: int = 0
    nonzero: int = 0
    footprint_bytes: int = 0
    layer_zeros: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (zeros, parameters) of every weight layer inside the blocks: the per-kind totals
    block_layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    seen: dict[int, weakref.ref] = field(default_factory=dict)

    def add(self, module: nn.Module, prefix: str = "",
            layer_filter: Callable[[str], bool] = lambda _name: True,
            skip: str | None = None, blocks: str | None = None,
            layers: dict[str, nn.Module] | None = None,
            routers: dict[str, nn.Module] | None = None) -> None:
        """Count `module` (called `prefix` in the model), leaving out names starting with
        `skip`; per-layer zeros for the weight layers `layer_filter` accepts, and for every
        weight layer under `blocks`. `layers`: the module's weight layers, when the caller
        has them under their names in the whole model (a block's expert matrices). `routers`:
        the MoE routers among its modules that are no weight layer kind of their own (a
        `TopKRouter` holding a `[E, H]` weight): counted with the block layers, as routers."""
        def kept(name: str) -> bool:
            return not (skip and (prefix + name).startswith(skip))

        packed = {id(m.weight): m for m in module.modules() if is_packed(m)}
        for name, param in module.named_parameters():
            if kept(name) and self._first(param):
                values = dense_weight(packed[id(param)]) if id(param) in packed else param
                self.parameters += values.numel()
                self.nonzero += int(torch.count_nonzero(values.detach()).item())
                self.footprint_bytes += param.numel() * param.element_size()
        for name, buffer in module.named_buffers():
            if kept(name) and self._first(buffer):
                self.footprint_bytes += buffer.numel() * buffer.element_size()
        for name, layer in (weight_layers(module) if layers is None else layers).items():
            if not kept(name):
                continue
            self.footprint_bytes += sum(t.numel() * t.element_size()
                                        for t in layer_tensors(layer) if self._first(t))
            in_blocks = blocks is not None and (prefix + name).startswith(blocks + ".")
            if layer_filter(prefix + name) or in_blocks:
                weight = dense_weight(layer)
                counts = (int((weight == 0).sum()), weight.numel())
                if layer_filter(prefix + name):
                    self.layer_zeros[prefix + name] = counts
                if in_blocks:
                    self.block_layers[prefix + name] = counts
        for name, router in (routers or {}).items():
            weight = router.weight.detach()
            self.block_layers.setdefault(prefix + name, (int((weight == 0).sum()),
                                                         weight.numel()))

    def _first(self, tensor: torch.Tensor) -> bool:
        """True the first time this very tensor is seen. By weak reference, not bare `id`: a
        streamed block's tensors are freed before the next block loads, whose tensors may get
        the same ids (a flaky census 64 parameters short, one OPT block's norm)."""
        known = self.seen.get(id(tensor))
        if known is not None and known() is tensor:
            return False
        self.seen[id(tensor)] = weakref.ref(tensor)
        return True

    def sparsity(self) -> SparsityReport:
        per_layer = {n: zeros / count for n, (zeros, count) in self.layer_zeros.items()}
        zeros = sum(z for z, _ in self.layer_zeros.values())
        count = sum(c for _, c in self.layer_zeros.values())
        return SparsityReport(
            total=zeros / count if count else 0.0,
            model=1 - self.nonzero / self.parameters if self.parameters else 0.0,
            per_layer=per_layer)


def _layer_filter(model: nn.Module, layer_names: list[str] | None) -> Callable[[str], bool]:
    """The layers a sparsity report covers: those a recipe pruned, else those in blocks."""
    if layer_names is not None:
        wanted = set(layer_names)
        return lambda name: name in wanted
    prefix, _ = find_blocks(model)
    return lambda name: name.startswith(prefix + ".")


def census(model: nn.Module, layer_names: list[str] | None = None) -> Census:
    """Counts of a model in memory."""
    counted = Census()
    counted.add(model, layer_filter=_layer_filter(model, layer_names),
                blocks=find_blocks(model)[0], routers=_routers(model))
    return counted


def _routers(model: nn.Module, under: str = "") -> dict[str, nn.Module]:
    """The MoE routers (under `under`, named relative to it) that are no weight layer."""
    start = f"{under}." if under else ""
    return {name[len(start):]: model.get_submodule(name) for name in sorted(router_names(model))
            if name.startswith(start) and kind_of(model.get_submodule(name)) is None}


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) of a model in memory."""
    counted = census(model)
    return counted.parameters, counted.nonzero


def sparsity_report(model: nn.Module, layer_names: list[str] | None = None) -> SparsityReport:
    """Zeros per weight layer (the named ones, else those in blocks) of a model in memory."""
    return census(model, layer_names).sparsity()


def block_by_block_census(
    model: nn.Module, layer_names: list[str] | None, windows: torch.Tensor | None,
    progress: ProgressFn | None = None,
) -> tuple[Census, float | None]:
    """Counts (and perplexity, with windows) of a model that is not in memory, in one pass."""
    prefix, _ = find_blocks(model)
    counted = Census()
    layer_filter = _layer_filter(model, layer_names)
    counted.add(model, layer_filter=layer_filter, skip=prefix + ".")
    every = weight_layers(model)  # named as in the whole model (expert matrices included)

    def count(block: BlockContext) -> None:
        start = block.name + "."
        mine = {name[len(start):]: layer for name, layer in every.items()
                if name.startswith(start)}
        counted.add(block.block, start, layer_filter, blocks=prefix, layers=mine,
                    routers=_routers(model, block.name))

    if windows is not None:
        return counted, perplexity(model, windows, progress, on_block=count)
    for_each_block(model, count, progress)
    return counted, None


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


def kind_totals(model: nn.Module, counted: Census, folder: Path) -> dict[str, KindTotals]:
    """The published model's block weights by layer kind (`engine.experts.kind_of_layer`):
    zeros from the census of the model as saved, bytes from the saved files' headers."""
    stored = stored_bytes(folder, list(counted.block_layers))
    totals: dict[str, list[int]] = {}
    for name, (zeros, count) in counted.block_layers.items():
        kind = totals.setdefault(kind_of_layer(model, name), [0, 0, 0, 0])
        kind[0] += 1
        kind[1] += count
        kind[2] += zeros
        kind[3] += stored.get(name, 0)
    return {kind: KindTotals(layers=layers, parameters=params, zeros=zeros,
                             sparsity=zeros / params if params else 0.0, stored_bytes=size,
                             bits_per_weight=8 * size / params if params else 0.0)
            for kind, (layers, params, zeros, size) in sorted(totals.items())}


def peak_cuda_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
