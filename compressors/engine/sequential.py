"""The block-by-block engine shared by every method that learns from activations.

Running a whole LLM on the calibration set for each layer would cost memory and time, so the
engine does what Wanda and SparseGPT do: capture the inputs of the first transformer block once,
then walk the blocks in order. For each block the method observes its layers' inputs, changes
the block, and the engine runs the *changed* block to produce the next block's inputs, so every
block's statistics come from the already-compressed blocks before it. Whatever positional and
keyword arguments the architecture passes to its blocks (attention masks, rotary embeddings,
position ids) are captured with the hidden states and replayed; caches are off.

Blocks are reached through the model's placement (`engine.placement`): in memory, onloaded to
the execution device one at a time, or streamed from the checkpoint files, so a method written
against `run_sequential` / `run_blockwise` runs unchanged on models larger than the GPU or RAM.
`sequential_forward` runs windows through the whole model the same way (perplexity of a model
that is not in memory): the outer modules run as usual, with each block replaced by a replay of
the hidden states the block-by-block pass computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressors.engine.experts import ExpertInputs, eager_experts
from compressors.engine.modules import find_blocks, in_features, is_expert, layers_in_block
from compressors.engine.placement import Placement, placement_of
from compressors.ops.hessian_passes import hessian_passes

Observer = Callable[[str, nn.Module, torch.Tensor], None]
ProgressFn = Callable[[float, str], None]


class _StopForward(Exception):
    """Raised by the capture hook: nothing past the first block needs to run."""


@dataclass
class BlockBatch:
    """One mini-batch of block inputs with the extra arguments the model passed alongside."""

    hidden: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 4
) -> list[BlockBatch]:
    """Run the model up to the first block on every mini-batch of windows; keep what it sees.

    Only the modules before the first block run, so the blocks themselves may be anywhere
    (on the CPU, or not loaded at all).
    """
    _, blocks = find_blocks(model)
    placement = placement_of(model)
    device = placement.device
    captured: list[BlockBatch] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        home = torch.device("cpu") if placement.offload_inputs else device
        captured.append(BlockBatch(hidden.detach().to(home), _to_device(args[1:], device),
                                   kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)
            with contextlib.suppress(_StopForward):
                model(input_ids=batch, use_cache=False)
    finally:
        handle.remove()
    return captured


def block_output(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple | list) else result


class BlockContext:
    """What a method sees of one block: its layers, its inputs, and ways to run it."""

    def __init__(
        self, index: int, name: str, block: nn.Module, layers: dict[str, nn.Module],
        inputs: list[BlockBatch], device: torch.device | None = None,
    ) -> None:
        self.index = index
        self.name = name
        self.block = block
        self.layers = layers
        self.inputs = inputs
        self.device = device
        self.returns_tuple = False

    def _run(self, batch: BlockBatch) -> torch.Tensor:
        hidden = batch.hidden
        on_device = hidden if self.device is None else hidden.to(self.device)
        result = self.block(on_device, *batch.args, **batch.kwargs)
        self.returns_tuple = isinstance(result, tuple | list)
        return block_output(result).to(hidden.device)

    @torch.no_grad()
    def collect(self, observe: Observer, all_experts: bool = False) -> dict[str, int]:
        """Run the block once over all inputs, handing each target layer's input to `observe`;
        returns the tokens each layer saw.

        The input arrives flattened to `[tokens, in_features]`. A layer module's input comes
        from a forward hook; an expert matrix's (`engine.experts`) from watching the experts
        module's products: the tokens the router sends to that expert, or with `all_experts`
        every token (for statistics only: the block's output is the routed one).
        """
        tokens = dict.fromkeys(self.layers, 0)
        handles = []
        experts = {n: layer for n, layer in self.layers.items() if is_expert(layer)}
        for name, layer in self.layers.items():
            if name in experts:
                continue
            width = in_features(layer)

            def hook(module: nn.Module, args: tuple, _out: Any, name: str = name,
                     width: int = width) -> None:
                flat = args[0].detach().reshape(-1, width)
                tokens[name] += flat.shape[0]
                observe(name, module, flat)

            handles.append(layer.register_forward_hook(hook))
        watch = ExpertInputs(experts, lambda layer, x: observe(layer.name, layer, x),
                             all_experts) if experts else None
        try:
            with contextlib.ExitStack() as stack:
                if watch is not None:
                    stack.enter_context(eager_experts(experts.values()))
                    stack.enter_context(watch.watching())
                self.outputs()
        finally:
            for handle in handles:
                handle.remove()
        if watch is not None:
            tokens.update(watch.tokens)
        return tokens

    def hessian_passes(self) -> list[BlockContext]:
        """The block's layers in passes whose Hessian sums fit (`ops.hessian_passes`: the
        dense layers first, then whole experts), each a context over the same block and
        inputs. A method collects and compresses one pass before the next, whose `collect`
        runs the block again with the earlier passes' layers already changed, as every block
        sees the blocks before it changed (the experts see the compressed attention's
        outputs). When everything fits, every dense block among them, the one pass is this
        context itself."""
        dense = {n: in_features(layer) for n, layer in self.layers.items()
                 if not is_expert(layer)}
        experts: dict[tuple[int, int], dict[str, int]] = {}
        for name, layer in self.layers.items():
            if is_expert(layer):
                key = (id(layer.owner), layer.expert)
                experts.setdefault(key, {})[name] = in_features(layer)
        passes = hessian_passes(dense, list(experts.values()))
        if len(passes) <= 1:
            return [self]
        return [BlockContext(self.index, self.name, self.block,
                             {name: self.layers[name] for name in names}, self.inputs,
                             self.device) for names in passes]

    @torch.no_grad()
    def outputs(self) -> list[torch.Tensor]:
        """The block's outputs on every input batch, with the block as it is now."""
        return [self._run(batch) for batch in self.inputs]

    @torch.no_grad()
    def advance(self) -> None:
        """Replace each input batch by the block's output on it, one batch at a time, so the
        inputs and outputs of the whole calibration set are never held at once."""
        for position, batch in enumerate(self.inputs):
            self.inputs[position] = BlockBatch(self._run(batch), batch.args, batch.kwargs)


def _walk(
    model: nn.Module, inputs: list[BlockBatch] | None, targets: dict[str, nn.Module],
    process_block: Callable[[BlockContext], None] | None, progress: ProgressFn | None,
    advance_last: bool = False, every_block: bool = False,
) -> tuple[list[BlockBatch] | None, bool]:
    """Every block in order through the placement: process it (if it holds targets, or
    `every_block`), then (with inputs) advance.

    Returns the last block's outputs as batches (when `advance_last`) and whether the blocks
    return tuples (what a replay of them must return).
    """
    placement = placement_of(model)
    prefix, blocks = find_blocks(model)
    returns_tuple = False
    for index in range(len(blocks)):
        name = f"{prefix}.{index}"
        with placement.block(model, index) as block:
            context = BlockContext(index, name, block, layers_in_block(targets, name),
                                   inputs or [], placement.device)
            if process_block is not None and (context.layers or every_block):
                process_block(context)
            last = index == len(blocks) - 1
            if inputs is not None and (advance_last or not last):
                context.advance()
                returns_tuple = context.returns_tuple
        if progress:
            progress((index + 1) / len(blocks), f"block {index + 1}/{len(blocks)}")
    placement.finish_pass(model)
    return inputs, returns_tuple


def _check_targets(model: nn.Module, targets: dict[str, nn.Module]) -> None:
    prefix, _ = find_blocks(model)
    outside = [n for n in targets if not n.startswith(prefix + ".")]
    if outside:
        raise ValueError(
            f"layers outside the transformer blocks cannot be processed sequentially: {outside}"
        )


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def run_sequential(
    model: nn.Module,
    windows: torch.Tensor,
    targets: dict[str, nn.Module],
    process_block: Callable[[BlockContext], None],
    progress: ProgressFn | None = None,
    batch_size: int = 4,
) -> None:
    """Capture first-block inputs, then for every block: `process_block`, then advance."""
    _check_targets(model, targets)
    with _evaluating(model):
        inputs = capture_block_inputs(model, windows, batch_size)
        _walk(model, inputs, targets, process_block, progress)


def run_blockwise(
    model: nn.Module,
    targets: dict[str, nn.Module],
    process_block: Callable[[BlockContext], None],
    progress: ProgressFn | None = None,
) -> None:
    """For every block holding targets: `process_block` (no inputs: data-free methods)."""
    _check_targets(model, targets)
    with _evaluating(model):
        _walk(model, None, targets, process_block, progress)


def for_each_block(
    model: nn.Module, visit: Callable[[BlockContext], None], progress: ProgressFn | None = None,
) -> None:
    """`visit` every block while it is loaded (statistics of a model that is not in memory)."""
    _walk(model, None, {}, visit, progress, every_block=True)


class _Replay(nn.Module):
    """Stands in for a block: returns the hidden states the sequential pass computed."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple
        self.value: torch.Tensor | None = None

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        return (self.value,) if self.as_tuple else self.value


@torch.no_grad()
def sequential_forward(
    model: nn.Module, windows: torch.Tensor,
    on_block: Callable[[BlockContext], None] | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[Callable[..., Any]]:
    """For each window (batch 1), a function running the model on it as computed block by
    block: `run(**kwargs)` calls the model's forward (e.g. with `logits_to_keep`) with every
    block replaced by a replay of the hidden states the block-by-block pass produced.

    `on_block` sees every block while it is loaded (for statistics of a streamed model).
    """
    placement: Placement = placement_of(model)
    _, blocks = find_blocks(model)
    with _evaluating(model):
        inputs = capture_block_inputs(model, windows, batch_size=1)
        finals, as_tuple = _walk(model, inputs, {}, on_block, progress, advance_last=True,
                                 every_block=True)
        replays = [_Replay(as_tuple) for _ in blocks]
        originals = list(blocks)
        for index, replay in enumerate(replays):
            blocks[index] = replay
        try:
            for window, final in zip(windows, finals or [], strict=True):
                ids = window.unsqueeze(0).to(placement.device)
                hidden = final.hidden.to(placement.device)

                def run(ids: torch.Tensor = ids, hidden: torch.Tensor = hidden,
                        **kwargs: Any) -> Any:
                    for replay in replays:
                        replay.value = hidden
                    return model(input_ids=ids, use_cache=False, **kwargs)

                yield run
        finally:
            for index, block in enumerate(originals):
                blocks[index] = block
