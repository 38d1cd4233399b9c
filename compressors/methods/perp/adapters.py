"""Walking the model: wrap Linear-like layers in adapters, choose what trains, merge back.

The tensor math lives in `lora_math`; this module only finds layers, swaps modules in and out
of their parents, and flips `requires_grad`. Wrappers are temporary: `merge_adapters` writes
the merged weight into the original layer and puts that layer back, so the saved checkpoint is
the plain architecture that transformers loads without any adapter library.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compressors.engine.modules import set_module, weight_matrix
from compressors.engine.training import is_norm, unfreeze_only
from compressors.methods.perp import lora_math
from compressors.methods.perp.expert_adapters import ExpertAdapters


class AdaptedLayer(nn.Module):
    """A Linear or GPT-2 Conv1D layer computing with `lora_math.adapted_linear`.

    The base weight is frozen; its bias stays a parameter of the base layer (biases train in
    every PERP mode). Conv1D keeps its weight as `[in, out]`; the wrapper works on the `[out, in]`
    transpose so the math is the same for both layer types.
    """

    def __init__(
        self, base: nn.Module, mode: str, rank: int, alpha: float,
        mask: torch.Tensor | None, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.mode = mode
        self.scale = alpha / rank
        self.transposed = isinstance(base, Conv1D)
        weight = weight_matrix(base)
        a, b = lora_math.init_factors(weight.shape[0], weight.shape[1], rank, mode, generator)
        self.lora_a = nn.Parameter(a.to(weight.device))
        self.lora_b = nn.Parameter(b.to(weight.device))
        self.register_buffer(
            "mask", None if mask is None else mask.to(weight.device, torch.bool), persistent=False
        )

    def base_weight(self) -> torch.Tensor:
        weight = self.base.weight
        return weight.t() if self.transposed else weight

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = lora_math.adapted_linear(inputs, self.base_weight(), self.lora_a, self.lora_b,
                                       self.mode, self.scale, self.mask)
        return out if self.base.bias is None else out + self.base.bias

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Write the merged weight into the base layer and return it (masks made exact)."""
        merged = lora_math.merged_weight(
            self.base_weight().detach(), self.lora_a, self.lora_b, self.mode, self.scale,
            self.mask,
        )
        target = merged.t() if self.transposed else merged
        if self.weight_is_shared:
            # A tied LM head: give it its own tensor so the input embeddings stay unchanged.
            self.base.weight = nn.Parameter(target.contiguous().clone(), requires_grad=False)
        else:
            self.base.weight.data.copy_(target)
        return self.base

    weight_is_shared: bool = False  # a tied LM head: merged into a tensor of its own


def wrap_layers(
    model: nn.Module, layers: dict[str, nn.Module], masks: dict[str, torch.Tensor | None],
    mode: str, rank: int, alpha: float, seed: int,
) -> dict[str, AdaptedLayer]:
    """Replace each named layer by an `AdaptedLayer` (same name, so hooks and lookups agree)."""
    generator = torch.Generator().manual_seed(seed)
    wrapped: dict[str, AdaptedLayer] = {}
    for name, layer in layers.items():
        adapter = AdaptedLayer(layer, mode, rank, alpha, masks.get(name), generator)
        set_module(model, name, adapter)
        wrapped[name] = adapter
    return wrapped


def wrap_lm_head(model: nn.Module, rank: int, alpha: float, seed: int) -> dict[str, AdaptedLayer]:
    """A plain (unmasked) LoRA on the output embedding; untied from the input one at merge."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(head, nn.Linear):
        raise ValueError("lm_head_adapter: the model has no Linear output embedding to adapt")
    name = next(n for n, m in model.named_modules() if m is head)
    inputs = model.get_input_embeddings()
    shared = inputs is not None and getattr(inputs, "weight", None) is head.weight
    wrapped = wrap_layers(model, {name: head}, {name: None}, "lora", rank, alpha, seed + 1)
    wrapped[name].weight_is_shared = shared
    return wrapped


def merge_adapters(model: nn.Module, wrapped: dict[str, AdaptedLayer]) -> None:
    """Put every base layer back with its merged weight; unties the config if the head was."""
    for name, adapter in wrapped.items():
        shared = adapter.weight_is_shared
        set_module(model, name, adapter.merge())
        if shared:
            config = getattr(model, "config", None)
            if config is not None:
                config.tie_word_embeddings = False
                text_config = getattr(config, "get_text_config", lambda: None)()
                if text_config is not None and text_config is not config:
                    text_config.tie_word_embeddings = False


def select_trainable(root: nn.Module) -> list[nn.Parameter]:
    """Freeze everything under `root`, then unfreeze biases (an experts module's per-expert
    `*_bias` too), norm parameters and adapters (of Linear layers and of expert matrices)."""
    chosen = [param for module in root.modules()
              for pname, param in module.named_parameters(recurse=False)
              if is_norm(module) or pname == "bias" or pname.endswith("_bias")
              or isinstance(module, AdaptedLayer)]
    chosen += [param for module in root.modules() if isinstance(module, ExpertAdapters)
               for param in module.parameters()]
    return unfreeze_only(root, chosen)


def unique_parameter_count(model: nn.Module) -> int:
    seen: dict[int, int] = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())
