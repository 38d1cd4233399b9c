"""Per-layer sensitivity of the model to each candidate operation, measured cheaply.

Two passes on a few calibration windows:

1. The sequential engine walks the dense blocks. In each block, every (layer, operation
   level) is applied to that one layer alone and the block re-run on its dense inputs: the
   mean per-token relative change of the block's output, ‖ΔY_t‖²/‖Y_t‖², is the layer's
   *proxy* error (per token, so the few massive activations of LLM residual streams do not
   swamp it). Cost: (layers × levels) block forwards, about as many whole-model forwards as
   levels × layers per block, never a whole-model forward per layer.
2. Per level, one whole-model probe: the level applied to every target layer at once, the
   mean next-token NLL against the dense model's. The probe's loss increase, divided by the
   sum of the level's proxy errors, turns proxies into predicted loss increases
   (`Δloss_layer = scale · proxy_layer`); additivity across layers is the assumption the
   verification checks (predicted against measured in the report). A dtype probe gives the
   loss increase of holding the model in bfloat16.

What a level does to a weight is the method's own cheap stand-in (`SearchSpace.perturb`, read
from the registry); the input norms Wanda-style stand-ins score with are gathered once per
block by the engine's `InputNormAccumulator`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from compressors.engine.modules import select_layers, weight_matrix
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.engine.statistics import InputNormAccumulator
from compressors.engine.windows import calibration_windows
from compressors.io.loading import LoadedModel
from compressors.methods import import_object, search_spaces
from compressors.report.search import SensitivitySummary
from compressors.search.goal import Goal

ProgressFn = Callable[[float, str], None]
Family = tuple[str, str]  # (method, level)


@dataclass
class Sensitivity:
    """What the allocation needs: per layer and family, the predicted loss increase."""

    layers: dict[str, tuple[int, int]]  # name -> (out, in)
    proxy: dict[str, dict[Family, float]]
    probe_loss: dict[Family, float]  # whole-model Δ mean NLL with the family everywhere
    dtype_loss: dict[str, float]  # Δ mean NLL of holding the model in this dtype
    dense_loss: float
    other_parameters: int  # parameters no operation touches (embeddings, norms, biases)
    seconds: float = 0.0
    windows: list[int] = field(default_factory=list)  # [samples, seqlen]

    def scale(self, family: Family) -> float:
        total = sum(self.proxy[name][family] for name in self.layers)
        return max(self.probe_loss[family], 0.0) / total if total > 0 else 0.0

    def loss(self, name: str, family: Family) -> float:
        """Predicted Δ mean NLL of applying `family` to layer `name` alone."""
        return self.scale(family) * self.proxy[name][family]

    def summary(self) -> SensitivitySummary:
        """The report's view: per family ("method:level") and per layer."""
        families = sorted({f for per in self.proxy.values() for f in per})
        return SensitivitySummary(
            windows=self.windows, seconds=round(self.seconds, 2), dense_loss=self.dense_loss,
            probe_loss={f"{m}:{lv}": v for (m, lv), v in self.probe_loss.items()},
            dtype_loss=self.dtype_loss,
            scale={f"{m}:{lv}": self.scale((m, lv)) for m, lv in families},
            per_layer={name: {f"{m}:{lv}": self.loss(name, (m, lv)) for m, lv in families}
                       for name in self.layers})


def _perturbed(method: str, level: str, weight: torch.Tensor,
               norms: torch.Tensor | None) -> torch.Tensor:
    """The method's stand-in applied to one weight (given the input norms only if it
    declared it uses them)."""
    space = search_spaces()[method]
    given = norms if space.needs_input_norms else None
    return import_object(space.perturb)(weight.float(), level, given).to(weight.dtype)


def _needs_norms(families: list[Family]) -> bool:
    spaces = search_spaces()
    return any(spaces[method].needs_input_norms for method, _ in families)


def _relative_change(new: list[torch.Tensor], old: list[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for a, b in zip(new, old, strict=True):
        diff = (a.float() - b.float()).pow(2).sum(-1)
        ref = b.float().pow(2).sum(-1).clamp_min(1e-12)
        total += float((diff / ref).sum())
        count += diff.numel()
    return total / max(count, 1)


def _block_proxies(block: BlockContext, families: list[Family],
                   proxy: dict[str, dict[Family, float]]) -> dict[str, torch.Tensor]:
    """Fill `proxy` for the block's layers; returns their input norms (when a family uses
    them: Wanda-style pruning)."""
    norms = InputNormAccumulator()
    if _needs_norms(families):
        block.collect(norms)
    reference = block.outputs()
    for name, layer in block.layers.items():
        weight = weight_matrix(layer)
        original = weight.detach().clone()
        proxy[name] = {}
        for method, level in families:
            with torch.no_grad():
                weight.copy_(_perturbed(method, level, original, norms.sums.get(name)))
            proxy[name][(method, level)] = _relative_change(block.outputs(), reference)
            with torch.no_grad():
                weight.copy_(original)
    return norms.sums


@torch.no_grad()
def mean_nll(model: nn.Module, windows: torch.Tensor) -> float:
    """Mean next-token NLL over every predicted token of the windows (batch 1)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for window in windows:
        ids = window.unsqueeze(0).to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        tokens += ids.shape[1] - 1
    return total / tokens


@torch.no_grad()
def _probe(model: nn.Module, layers: dict[str, nn.Module], family: Family,
           windows: torch.Tensor, norms: dict[str, torch.Tensor]) -> float:
    """Mean NLL with `family` applied to every target layer (weights restored after)."""
    saved = {name: weight_matrix(layer).detach().clone() for name, layer in layers.items()}
    try:
        for name, layer in layers.items():
            weight_matrix(layer).copy_(_perturbed(*family, saved[name], norms.get(name)))
        return mean_nll(model, windows)
    finally:
        for name, layer in layers.items():
            weight_matrix(layer).copy_(saved[name])


def measure(
    model: nn.Module, windows: torch.Tensor, methods: list[str], dtypes: list[str],
    progress: ProgressFn | None = None,
) -> Sensitivity:
    """Proxies on the sequential engine, then one probe per family and per dtype.

    The model must be in memory in float32 (the search's reference); it is left unchanged.
    """
    began = time.perf_counter()
    report = progress or (lambda _f, _m: None)
    spaces = search_spaces()
    families = [(m, level) for m in methods for level in spaces[m].levels]
    layers = select_layers(model)
    proxy: dict[str, dict[Family, float]] = {}
    input_norms: dict[str, torch.Tensor] = {}

    def process(block: BlockContext) -> None:
        input_norms.update(_block_proxies(block, families, proxy))

    run_sequential(model, windows, layers, process,
                   lambda f, m: report(0.8 * f, f"sensitivity: {m}"))
    dense = mean_nll(model, windows)
    probes = {}
    for index, family in enumerate(families):
        report(0.8 + 0.15 * index / max(len(families), 1), f"probe {family[0]} {family[1]}")
        probes[family] = _probe(model, layers, family, windows, input_norms) - dense
    dtype_loss = {"float32": 0.0}
    for dtype in dtypes:
        if dtype != "float32":
            held = copy.deepcopy(model).to(getattr(torch, dtype))
            dtype_loss[dtype] = mean_nll(held, windows) - dense
            del held
    report(1.0, "sensitivity measured")
    target_params = sum(weight_matrix(m).numel() for m in layers.values())
    total_params = sum(p.numel() for p in model.parameters())
    return Sensitivity(
        layers={n: tuple(weight_matrix(m).shape) for n, m in layers.items()}, proxy=proxy,
        probe_loss=probes, dtype_loss=dtype_loss, dense_loss=dense,
        other_parameters=total_params - target_params, seconds=time.perf_counter() - began,
        windows=list(windows.shape))


def measure_for_goal(reference: LoadedModel, goal: Goal, progress: ProgressFn | None = None
                     ) -> Sensitivity:
    """The search's first phase: the goal's byte-saving methods and dtypes measured on its
    `sensitivity` calibration windows, on the float32 original."""
    windows = calibration_windows(reference.tokenizer, goal.sensitivity)
    return measure(reference.model, windows, goal.shrinking_methods(), list(goal.dtypes),
                   progress)
