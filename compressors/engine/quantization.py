"""What the `gptq` and `rtn` steps share around the grid math: choosing layers and grids,
the keep-masks of earlier pruning, installing the result, checking zeros, and the report.
Choosing layers, keep-masks and the zeros check serve every quantizer that writes
compressed-tensors (`fp8`, `nvfp4`, ... through `engine.schemes`)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from compressors.engine.context import StepContext
from compressors.engine.layers import ExpertLayer
from compressors.engine.modules import linear_layers, select_layers
from compressors.engine.sections import QuantizationSection, RelativeError
from compressors.io.compressed_tensors import FORMAT_NAME, QUANT_FORMAT, install, loads_packed
from compressors.ops.int_grid import (
    STORAGE_DTYPES,
    Grid,
    QuantizedWeight,
    bits_per_weight,
    relative_error,
    resolve_group_size,
)
from compressors.recipe.fields import WeightGridConfig
from compressors.report.charts import layer_chart
from compressors.report.schema import Chart

Section = TypeVar("Section", bound=QuantizationSection)


class Selection(Protocol):
    """What choosing a quantizer's layers reads of its config (any quantizing step's)."""

    method: str
    include: list[str] | None
    exclude: list[str] | None


def target_layers(model: nn.Module, config: Selection) -> dict[str, nn.Module]:
    """The selected layers; each must be a plain `nn.Linear`, or an expert matrix that
    transformers saves one by one (what the format stores)."""
    targets = select_layers(model, config.include, config.exclude)
    conv = [name for name, layer in targets.items()
            if not isinstance(layer, nn.Linear | ExpertLayer)]
    if conv:
        raise ValueError(f"{config.method}: {len(conv)} selected layers (e.g. {conv[0]}) are "
                         "GPT-2 Conv1D, which compressed-tensors checkpoints cannot hold; "
                         "exclude them or use the quantize step")
    fused = [name for name, layer in targets.items()
             if isinstance(layer, ExpertLayer) and not layer.per_expert_checkpoint]
    if fused:
        raise ValueError(f"{config.method}: {len(fused)} selected expert matrices (e.g. "
                         f"{fused[0]}) belong to fused experts that transformers saves as one "
                         "3-D tensor, which a compressed-tensors checkpoint cannot hold packed "
                         "(transformers loads packed experts only one by one); exclude them "
                         "(exclude: ['experts'])")
    if any(getattr(layer, "compressors_quant", None) is not None for layer in targets.values()):
        raise ValueError(f"{config.method}: the model is already quantized; a recipe may "
                         "quantize once")
    return targets


def grids_for(model: nn.Module, targets: dict[str, nn.Module],
              config: WeightGridConfig) -> dict[str, Grid]:
    """Each target's grid; an explicit group size that does not divide a width fails here,
    naming the layer, before anything is changed. Every expert matrix of the model gets one
    grid (the group size that divides all their widths): transformers decompresses the
    experts of a checkpoint with one scheme for all of them. So do the dense layers of a
    model transformers can load only dequantized (`compressed_tensors.packed_blocker`:
    Falcon, or any asymmetric grid), whose dequantizing loader knows one scheme for them."""
    experts = {n: layer for n, layer in targets.items() if isinstance(layer, ExpertLayer)}
    common = math.gcd(*(layer.in_features for layer in experts.values())) if experts else 0
    dense = [layer.in_features for n, layer in targets.items() if n not in experts]
    packed = loads_packed(model, targets.values(), config.symmetric)
    one_dense = math.gcd(*dense) if dense and not packed else 0
    grids = {}
    for name, layer in targets.items():
        width = common if name in experts else one_dense or layer.in_features
        try:
            resolve_group_size(layer.in_features, config.group_size)
            size = resolve_group_size(width, config.group_size)
        except ValueError as error:
            raise ValueError(f"{error} (layer {name})") from None
        grids[name] = Grid(config.bits, size, config.symmetric, STORAGE_DTYPES[config.scale_dtype],
                           product_in_scale_dtype=name in experts or not packed)
    return grids


def keep_mask(layer: nn.Module, name: str, context: StepContext) -> torch.Tensor | None:
    """Weights that must stay exactly zero are False: the recorded keep-mask of an earlier
    pruning step (intersected with the current nonzeros, as PERP does) or, without one, the
    current zeros. None when nothing is zero."""
    keep = layer.weight.data != 0
    recorded = context.masks.get(name)
    if recorded is not None:
        keep &= recorded.to(keep.device)
    return None if bool(keep.all()) else keep


def check_zeros(method: str, name: str, weight: torch.Tensor, keep: torch.Tensor | None
                ) -> tuple[int, int]:
    """(weights that had to stay zero, how many did) of a quantized weight; every one must,
    else the step fails naming the layer."""
    if keep is None:
        return 0, 0
    pruned = weight[~keep.to(weight.device)]
    lost = int(torch.count_nonzero(pruned))
    if lost:
        raise RuntimeError(f"{method}: {name} lost {lost} pruned zeros while quantizing")
    return pruned.numel(), pruned.numel()


class QuantRecord:
    """Per-layer facts noted while each block is loaded, then the section and chart."""

    def __init__(self, config: WeightGridConfig, metric: str) -> None:
        self.config, self.metric = config, metric
        self.errors: dict[str, float] = {}
        self.groups: dict[str, int] = {}
        self.bits: dict[str, tuple[float, int]] = {}
        self.zeros_before = self.zeros_kept = 0

    def add(self, name: str, layer: nn.Module, quantized: QuantizedWeight,
            keep: torch.Tensor | None, hessian: torch.Tensor | None = None) -> None:
        """Install `quantized` into `layer`, check the zeros it must keep, note its error."""
        original = layer.weight.data.detach().to(torch.float32).clone()
        weight = install(layer, quantized)
        before, kept = check_zeros(self.config.method, name, weight, keep)
        self.zeros_before += before
        self.zeros_kept += kept
        self.errors[name] = relative_error(original, weight.to(torch.float32), hessian)
        self.groups[name] = quantized.grid.group_size
        rows, cols = weight.shape
        self.bits[name] = (bits_per_weight(quantized.grid, rows, cols), rows * cols)

    def section(self, kind: type[Section], context: StepContext, seconds: float,
                skipped: list[str], **extra: Any) -> Section:
        """The step's `quantization` section: the shared fields, plus `extra`, the ones its
        own section type (`kind`) adds."""
        total = sum(n for _, n in self.bits.values())
        errors = list(self.errors.values())
        placement_note = None
        if context.placement_mode == "streamed":
            placement_note = ("streamed runs publish dense weights holding the quantized values "
                              "(the compressed-tensors checkpoint needs the model in memory or "
                              "onloaded)")
        return kind(
            scheme=self.config.label, method=self.config.method, bits=self.config.bits,
            group_size=self.config.group_size if self.config.group_size is not None
            else "auto",
            group_sizes={str(k): v for k, v in sorted(Counter(self.groups.values()).items())},
            symmetric=self.config.symmetric, clip_search=self.config.clip_search,
            scale_dtype=self.config.scale_dtype,
            format=f"{FORMAT_NAME} {QUANT_FORMAT} (W{self.config.bits}A16)",
            quantized_layers=len(self.errors),
            bits_per_weight=sum(b * n for b, n in self.bits.values()) / total,
            quantized_weights=total,
            relative_error=RelativeError(metric=self.metric, mean=sum(errors) / len(errors),
                                         max=max(errors), per_layer=self.errors),
            zeros_before=self.zeros_before, zeros_kept=self.zeros_kept,
            quantize_seconds=seconds, note=placement_note, skipped_layers=skipped, **extra,
        )

    def chart(self) -> Chart:
        title = ("Relative quantization error per layer on the Hessian metric (‖ΔW X‖ / ‖W X‖)"
                 if self.metric == "hessian"
                 else "Relative quantization error per layer (‖ΔW‖ / ‖W‖)")
        return layer_chart("quantization-error", title, self.errors, "relative error")


def skipped_layers(model: nn.Module, targets: dict[str, nn.Module]) -> list[str]:
    return [name for name in linear_layers(model) if name not in targets]
