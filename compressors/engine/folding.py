"""Where a Linear layer's per-input-channel scales can be folded, found without tables of
architectures.

SmoothQuant and AWQ rescale a layer's input channels: `(W·diag(s)) (diag(s)⁻¹ x)` is the same
function as `W x`, and the division costs nothing at inference once it is folded into the op
that produced `x` (its output channel j divided by `s_j`): a norm's weight (and bias) entries,
or a Linear's output rows (and bias). Which op that is, and which layers read its output,
depends on the architecture (q/k/v read `input_layernorm`; gate/up read
`post_attention_layernorm`; `down_proj` reads `act(gate)·up`, linear in `up_proj`'s outputs;
`o_proj` reads attention's output, linear per channel in `v_proj`'s where every query head has
its own value head), so it is *measured*, once per kind of block, on one calibration batch:

1. Perturbation. For every candidate (each norm of the block: a module with a 1-D weight; each
   Linear), a random half of its output channels is doubled and the block run again. A Linear
   layer reads the candidate when exactly those of its input channels double and no other
   channel changes; scaling by a power of two is exact in floating point, so the test is exact.
2. Validation. Random powers of two (1/2, 1, 2) are folded into the candidate and every layer
   that reads it, and the fold is kept only if the block's output does not change (exact
   again). A candidate whose output also goes elsewhere (the residual stream of a post-norm
   block; the experts of a mixture-of-experts block, which no module hook sees; a router that is
   not a Linear) is refused: a kept fold never changes what the model computes.

Layers reading one predecessor share one scale vector. A layer with no foldable predecessor
keeps scale 1, and the steps report it (GQA's `o_proj`: fewer value heads than query heads,
so `v_proj`'s channels do not line up with `o_proj`'s inputs; MoE experts). The scale math is
`ops.smoothing`; this module only walks modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compressors.engine.layers import ExpertLayer
from compressors.engine.sequential import BlockBatch, BlockContext, block_output
from compressors.ops.smoothing import divide_outputs, multiply_inputs

TOLERANCE = 1e-4  # relative norm: the tests are exact in floating point, this only absorbs
# kernels that reorder sums between runs


@dataclass(frozen=True)
class Fold:
    """One op whose output channels scales are folded into, and the layers reading it.

    Names are full module names. `parent`: the smallest module holding every consumer (a
    module list counts as its owner): AWQ measures a scale's effect on its output (the
    attention module for q/k/v, the MLP for gate/up, the layer itself for down_proj).
    """

    predecessor: str
    consumers: tuple[str, ...]
    parent: str


def _is_norm(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    return (weight is not None and weight.ndim == 1 and not isinstance(module, nn.Linear)
            and not any(True for _ in module.children()))


def _outputs(module: nn.Module) -> int:
    return module.weight.shape[0]


def _tensors(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = module._parameters.get("bias")
    return module.weight.data, (bias.data if bias is not None else None)


def scale_outputs(module: nn.Module, scales: torch.Tensor) -> None:
    """Divide `module`'s output channels by `scales` (a norm or a Linear), in place."""
    divide_outputs(*_tensors(module), scales)


def scale_inputs(layer: nn.Module, scales: torch.Tensor) -> None:
    """Multiply a Linear layer's weight columns by `scales`, in place."""
    multiply_inputs(layer.weight.data, scales)


def apply_fold(block: BlockContext, fold: Fold, scales: torch.Tensor) -> None:
    """Fold `scales` (`[channels]`) into `fold`'s predecessor and compensate every consumer:
    the block computes the same function (up to the rounding of the rescaled weights)."""
    scale_outputs(submodule(block, fold.predecessor), scales)
    for name in fold.consumers:
        scale_inputs(submodule(block, name), scales)


def submodule(block: BlockContext, name: str) -> nn.Module:
    """The module `name` (a full name inside the block, or the block's own name)."""
    if name == block.name:
        return block.block
    return block.block.get_submodule(name[len(block.name) + 1:])


class FoldFinder:
    """The folds of each block, measured once per kind of block (same module names, types
    and parameter shapes) and reused for every block of that kind."""

    def __init__(self) -> None:
        self._known: dict[tuple, list[Fold]] = {}

    def folds(self, block: BlockContext) -> list[Fold]:
        """The folds of `block` that scale at least one of its target layers."""
        key = tuple((name, type(m).__name__,
                     tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
                    for name, m in block.block.named_modules())
        if key not in self._known:
            self._known[key] = _discover(block.block, block.inputs[0], block.device)
        prefix = block.name
        folds = [Fold(_full(prefix, f.predecessor), tuple(_full(prefix, c) for c in f.consumers),
                      _full(prefix, f.parent)) for f in self._known[key]]
        return [f for f in folds if any(c in block.layers for c in f.consumers)]


EXPERT_REASON = ("expert matrix: its inputs are the tokens routed to it, from a norm every "
                 "expert and the router read, so no scale of its own can be folded")
NO_FOLD_REASON = ("no op before it takes a scale: its input is not one op's output, linear "
                  "per channel, read only by layers that can compensate (e.g. GQA's o_proj)")


def unscaled_layers(layers: dict[str, nn.Module], folds: list[Fold]) -> dict[str, str]:
    """The layers (a block's targets) no fold scales, each with why: they are quantized with
    scale 1."""
    scaled = {c for fold in folds for c in fold.consumers}
    return {name: EXPERT_REASON if isinstance(layer, ExpertLayer) else NO_FOLD_REASON
            for name, layer in layers.items() if name not in scaled}


def _full(prefix: str, relative: str) -> str:
    return f"{prefix}.{relative}" if relative else prefix


@torch.no_grad()
def _discover(block: nn.Module, batch: BlockBatch, device: torch.device | None) -> list[Fold]:
    """Every valid fold of `block` (relative names), measured on `batch`."""
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    norms = {n: m for n, m in block.named_modules() if _is_norm(m)}
    before, output = _run(block, batch, device, linears)
    generator = torch.Generator().manual_seed(0)
    taken: set[str] = set()
    folds = []
    for name, candidate in {**norms, **linears}.items():
        width = _outputs(candidate)
        readers = {n: m for n, m in linears.items()
                   if n != name and n not in taken and m.in_features == width and n in before}
        if not readers or width < 2:
            continue
        half = torch.randperm(width, generator=generator)[: width // 2]
        subset = torch.zeros(width, dtype=torch.bool)
        subset[half] = True
        doubling = torch.where(subset, 0.5, 1.0)  # dividing by 1/2 doubles
        with _folded(candidate, [], doubling):
            after, _ = _run(block, batch, device, readers)
        consumers = tuple(n for n in readers if _doubled(before[n], after[n], subset))
        if not consumers:
            continue
        powers = 2.0 ** torch.randint(-1, 2, (width,), generator=generator).to(torch.float32)
        with _folded(candidate, [linears[c] for c in consumers], powers):
            _, changed = _run(block, batch, device, {})
        if _close(changed, output):
            taken.update(consumers)
            folds.append(Fold(name, consumers, _parent(block, consumers)))
    return folds


@contextlib.contextmanager
def _folded(predecessor: nn.Module, consumers: list[nn.Module],
            scales: torch.Tensor) -> Iterator[None]:
    """A trial fold, undone exactly afterwards (the original tensors are put back)."""
    saved = [t.clone() for t in _tensors(predecessor) if t is not None]
    saved += [c.weight.data.clone() for c in consumers]
    try:
        scale_outputs(predecessor, scales)
        for consumer in consumers:
            scale_inputs(consumer, scales)
        yield
    finally:
        targets = [t for t in _tensors(predecessor) if t is not None]
        targets += [c.weight.data for c in consumers]
        for target, original in zip(targets, saved, strict=True):
            target.copy_(original)


def _run(block: nn.Module, batch: BlockBatch, device: torch.device | None,
         watched: dict[str, nn.Module]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The inputs of the `watched` layers and the block's output on `batch`."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in watched.items():
        def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
            seen[name] = args[0].detach().to(torch.float32).clone()

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        hidden = batch.hidden if device is None else batch.hidden.to(device)
        result = block(hidden, *batch.args, **batch.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return seen, block_output(result).detach().to(torch.float32)


def _doubled(before: torch.Tensor, after: torch.Tensor, subset: torch.Tensor) -> bool:
    """Exactly the `subset` channels of the last dimension doubled; the rest unchanged."""
    mask = subset.to(before.device)
    return (_close(after[..., mask], 2 * before[..., mask])
            and _close(after[..., ~mask], before[..., ~mask]))


def _close(value: torch.Tensor, reference: torch.Tensor) -> bool:
    scale = float(reference.norm())
    return float((value - reference).norm()) <= TOLERANCE * max(scale, 1e-30)


def _parent(block: nn.Module, consumers: tuple[str, ...]) -> str:
    """The smallest module (relative name, "" for the block) holding every consumer: their
    names' common prefix, moved above any module list (whose forward never runs)."""
    if len(consumers) == 1:
        return consumers[0]
    parts = [c.split(".") for c in consumers]
    common: list[str] = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    while common and isinstance(block.get_submodule(".".join(common)),
                                nn.ModuleList | nn.ModuleDict):
        common.pop()
    return ".".join(common)


Call = tuple[tuple[Any, ...], dict[str, Any]]


@contextlib.contextmanager
def recording_calls(block: BlockContext, names: list[str]) -> Iterator[dict[str, list[Call]]]:
    """While active, every call of the modules `names` (full names; the block's own name for
    the block) is recorded as the (args, kwargs) it received, so the module can be run again
    on exactly those inputs (AWQ's parents, whatever their signature)."""
    calls: dict[str, list[Call]] = {name: [] for name in names}
    handles = []
    for name in names:
        def hook(_m: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            calls[name].append((args, kwargs))

        handles.append(submodule(block, name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
