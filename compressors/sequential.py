"""The block-by-block engine shared by every method that learns from activations.

Running a whole LLM on the calibration set for each layer would cost memory and time, so the
engine does what Wanda and SparseGPT do: capture the inputs of the first transformer block once,
then walk the blocks in order. For each block the method observes its layers' inputs, changes
the block, and the engine runs the *changed* block to produce the next block's inputs, so every
block's statistics come from the already-compressed blocks before it. Whatever positional and
keyword arguments the architecture passes to its blocks (attention masks, rotary embeddings,
position ids) are captured with the hidden states and replayed; caches are off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressors.modules import find_blocks, in_features, layers_in_block

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
    """Run the model up to the first block on every mini-batch of windows; keep what it sees."""
    _, blocks = find_blocks(model)
    device = next(model.parameters()).device
    captured: list[BlockBatch] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append(BlockBatch(hidden.detach(), _to_device(args[1:], device), kwargs))
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


def _block_output(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple | list) else result


class BlockContext:
    """What a method sees of one block: its layers, its inputs, and ways to run it."""

    def __init__(
        self, index: int, name: str, block: nn.Module, layers: dict[str, nn.Module],
        inputs: list[BlockBatch],
    ) -> None:
        self.index = index
        self.name = name
        self.block = block
        self.layers = layers
        self.inputs = inputs

    @torch.no_grad()
    def collect(self, observe: Observer) -> None:
        """Run the block once over all inputs, handing each target layer's input to `observe`.

        The input arrives flattened to `[tokens, in_features]`.
        """
        handles = []
        for name, layer in self.layers.items():
            width = in_features(layer)

            def hook(module: nn.Module, args: tuple, _out: Any, name: str = name,
                     width: int = width) -> None:
                observe(name, module, args[0].detach().reshape(-1, width))

            handles.append(layer.register_forward_hook(hook))
        try:
            self.outputs()
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def outputs(self) -> list[torch.Tensor]:
        """The block's outputs on every input batch, with the block as it is now."""
        return [
            _block_output(self.block(batch.hidden, *batch.args, **batch.kwargs))
            for batch in self.inputs
        ]


def run_sequential(
    model: nn.Module,
    windows: torch.Tensor,
    targets: dict[str, nn.Module],
    process_block: Callable[[BlockContext], None],
    progress: ProgressFn | None = None,
    batch_size: int = 4,
) -> None:
    """Capture first-block inputs, then for every block: `process_block`, then advance."""
    prefix, blocks = find_blocks(model)
    outside = [n for n in targets if not n.startswith(prefix + ".")]
    if outside:
        raise ValueError(
            f"layers outside the transformer blocks cannot be processed sequentially: {outside}"
        )
    was_training = model.training
    model.eval()
    try:
        inputs = capture_block_inputs(model, windows, batch_size)
        for index, block in enumerate(blocks):
            name = f"{prefix}.{index}"
            context = BlockContext(index, name, block, layers_in_block(targets, name), inputs)
            if context.layers:
                process_block(context)
            if index == len(blocks) - 1:
                break  # nothing reads the last block's outputs
            outputs = context.outputs()
            inputs = [
                BlockBatch(out, batch.args, batch.kwargs)
                for out, batch in zip(outputs, inputs, strict=True)
            ]
            if progress:
                progress((index + 1) / len(blocks), f"block {index + 1}/{len(blocks)}")
        if progress:
            progress(1.0, f"block {len(blocks)}/{len(blocks)}")
    finally:
        model.train(was_training)
