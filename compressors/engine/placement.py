"""Where a model's weights live while it is compressed, and how each block reaches the device.

One engine, three ways to hold a model (chosen by the memory estimate, or forced by a recipe):

- `in_memory`: the whole model sits on the execution device; blocks are used where they are.
- `onloaded`: the model sits in CPU memory; everything outside the transformer blocks
  (embeddings, final norm, LM head) moves to the execution device, and each block moves there
  for its turn and back after, so the device holds one block plus the block inputs.
- `streamed`: the model is a skeleton whose block parameters are on the meta device; each
  block is read from the source safetensors when its turn comes and, after the step changed
  it, written into the output shards and dropped, so RAM holds the outer modules plus one
  block. A recipe of several steps streams once per step, each pass reading the last one's
  shards. Tensors go through transformers' own load-time conversions both ways
  (`io.conversion`): a checkpoint that stores a MoE block's experts one by one fills the
  model's fused expert parameters, and the output shards store them one by one again.

The sequential engine asks `placement_of(model)` for the placement and walks blocks through
`Placement.block`, so methods written against `run_sequential` / `run_blockwise` run in every
mode without knowing which.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from compressors.engine.modules import find_blocks
from compressors.io.conversion import StreamConversion
from compressors.io.stream import ShardWriter, TensorSource
from compressors.malloc import release_free_memory

Mode = Literal["in_memory", "onloaded", "streamed"]
MODES: tuple[Mode, ...] = ("in_memory", "onloaded", "streamed")


class Placement:
    """In memory: every block already sits on the execution device."""

    mode: Mode = "in_memory"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.offload_inputs = False  # keep block inputs on CPU between blocks

    @contextlib.contextmanager
    def block(self, model: nn.Module, index: int) -> Iterator[nn.Module]:
        """Block `index`, usable on `self.device` inside the `with`."""
        _, blocks = find_blocks(model)
        yield blocks[index]

    def finish_pass(self, model: nn.Module) -> None:
        """A step that walked every block is done with them (streamed: close the output)."""


class Onloaded(Placement):
    """The model lives on `home` (CPU); blocks visit `device` one at a time."""

    mode: Mode = "onloaded"

    def __init__(self, device: torch.device, home: torch.device | None = None) -> None:
        super().__init__(device)
        self.home = home or torch.device("cpu")

    def place_outer(self, model: nn.Module) -> None:
        """Move everything outside the blocks to the execution device (it stays there)."""
        _, blocks = find_blocks(model)
        inside = {id(t) for t in [*blocks.parameters(), *blocks.buffers()]}
        for module in model.modules():
            for param in module._parameters.values():
                if param is not None and id(param) not in inside:
                    param.data = param.data.to(self.device)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and id(buffer) not in inside:
                    module._buffers[name] = buffer.to(self.device)

    @contextlib.contextmanager
    def block(self, model: nn.Module, index: int) -> Iterator[nn.Module]:
        _, blocks = find_blocks(model)
        block = blocks[index].to(self.device)
        try:
            yield block
        finally:
            block.to(self.home)


class Streamed(Placement):
    """Blocks read from `source` when used, written to `sink` (if any) and dropped after."""

    mode: Mode = "streamed"

    def __init__(self, device: torch.device, source: TensorSource, dtype: torch.dtype) -> None:
        super().__init__(device)
        self.source = source
        self.dtype = dtype
        self.sink: ShardWriter | None = None
        self.written_outer = False
        self.conversion: StreamConversion | None = None

    def _conversion(self, model: nn.Module) -> StreamConversion:
        if self.conversion is None or self.conversion.model is not model:
            self.conversion = StreamConversion(model, self.source.names())
        return self.conversion

    def load_outer(self, model: nn.Module) -> None:
        """Materialise everything outside the blocks on the execution device."""
        prefix, _ = find_blocks(model)
        names = [n for n in self.source.names() if not n.startswith(prefix + ".")]
        tensors = self.source.load(names, self.device, self.dtype)
        assign_tensors(model, self._conversion(model).to_model(tensors))
        model.tie_weights()
        missing = [n for n, p in model.named_parameters()
                   if p.is_meta and not n.startswith(prefix + ".")]
        if missing:
            raise ValueError(f"the checkpoint lacks weights the model needs: {missing[:3]}")

    def begin_pass(self, sink: ShardWriter | None) -> None:
        self.sink = sink
        self.written_outer = False

    @contextlib.contextmanager
    def block(self, model: nn.Module, index: int) -> Iterator[nn.Module]:
        prefix, blocks = find_blocks(model)
        name = f"{prefix}.{index}."
        block = blocks[index]
        conversion = self._conversion(model)
        tensors = conversion.to_model(
            self.source.load(self.source.names(name), self.device, self.dtype))
        outside = [k for k in tensors if not k.startswith(name)]
        if outside:
            raise ValueError(f"the tensors stored under {name[:-1]} convert to parameters "
                             f"outside it: {outside[:3]}")
        assign_tensors(block, {k[len(name):]: v for k, v in tensors.items()})
        still_meta = [n for n, p in block.named_parameters() if p.is_meta]
        if still_meta:
            raise ValueError(f"the checkpoint lacks weights of {name[:-1]}: {still_meta[:3]}")
        del tensors
        try:
            yield block
            if self.sink is not None:
                self.sink.write(conversion.to_saved(
                    {name + k: v for k, v in block.state_dict().items()}))
        finally:
            drop_parameters(block)

    def finish_pass(self, model: nn.Module) -> None:
        """Write the outer tensors once per pass (after the blocks: shard order is free)."""
        if self.sink is None or self.written_outer:
            return
        prefix, _ = find_blocks(model)
        outer = {n: t for n, t in model.state_dict().items() if not n.startswith(prefix + ".")}
        for tied in tied_names(model):
            outer.pop(tied, None)
        self.sink.write(self._conversion(model).to_saved(outer))
        self.written_outer = True


def assign_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put `tensors` ({dotted name: tensor}) in place of `module`'s parameters and buffers."""
    for dotted, tensor in tensors.items():
        owner_name, _, leaf = dotted.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf in owner._parameters:
            old = owner._parameters[leaf]
            owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=bool(
                old is not None and old.requires_grad))
        elif leaf in owner._buffers:
            owner._buffers[leaf] = tensor
        else:
            raise ValueError(f"the checkpoint has a tensor the model does not: {dotted}")


def drop_parameters(module: nn.Module) -> None:
    """Replace every parameter by a meta tensor of its shape, freeing its memory (buffers,
    which may have been computed at construction, are kept)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = nn.Parameter(
                    torch.empty_like(param, device="meta"), requires_grad=False)
    release_free_memory()  # the heap's freed pages too, not only mapped chunks (see malloc)


def tied_names(model: nn.Module) -> list[str]:
    """Parameter names that share storage with an earlier one (a tied LM head): the checkpoint
    stores only the first."""
    seen: dict[int, str] = {}
    tied = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.append(name)
        else:
            seen[id(param)] = name
    return tied


_PLACEMENTS: weakref.WeakKeyDictionary[nn.Module, Placement] = weakref.WeakKeyDictionary()


def set_placement(model: nn.Module, placement: Placement) -> None:
    _PLACEMENTS[model] = placement


def placement_of(model: nn.Module) -> Placement:
    """The model's placement; a model nobody placed is in memory, wherever it sits."""
    found = _PLACEMENTS.get(model)
    if found is not None:
        return found
    return Placement(next(model.parameters()).device)
