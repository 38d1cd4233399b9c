"""A checkpoint's tensors in the model's layout and back, a few tensors at a time.

transformers 5 does not hold every architecture the way its checkpoints store it: a
mixture-of-experts block's experts are fused 3-D parameters (`mlp.experts.gate_up_proj`
`[E, 2I, H]`), while Qwen-MoE, Mixtral, DeepSeek and OLMoE checkpoints keep one matrix per
expert (`mlp.experts.3.gate_proj.weight`); older checkpoints carry legacy names. `from_pretrained`
converts while loading (`transformers.core_model_loading`, with the model's mapping from
`conversion_mapping`), and `save_pretrained` reverts the conversion when saving.

A streamed run never calls either on the whole model: it reads one transformer block's tensors
by name and writes them back when the block is done (`engine.placement`). `StreamConversion`
applies the same conversions to such a group: `to_model` turns the stored tensors of one block
(or of everything outside the blocks) into the model's parameters, exactly as `from_pretrained`
would (the same mapping, renamings first, at most one converter per key, tensors in natural
key order so experts stack as `0, 1, ..., E-1`), and `to_saved` turns the model's tensors back
into the checkpoint layout with transformers' own `revert_weight_conversion`. Like
`from_pretrained`, it first renames every stored name (names only, nothing is read) and
records on the model which conversions the source uses, before any block is read: that is what
the reverse conversion reverts, so a streamed run publishes the layout an in-memory run's
`save_pretrained` would, and `engine.experts`, which learns how experts are saved from the
same reverse conversion, names them as in memory from the start.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class StreamConversion:
    """transformers' load-time conversions of one model, applied group by group."""

    def __init__(self, model: nn.Module, stored: list[str]) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming

        self.model = model
        self.mapping = list(get_model_conversion_mapping(model)) if hasattr(
            model, "config") else []
        self.renamings = [t for t in self.mapping if isinstance(t, WeightRenaming)]
        self.converters = [t for t in self.mapping if isinstance(t, WeightConverter)]
        self.by_pattern = {p: c for c in self.converters for p in c.source_patterns}
        self.names = dict.fromkeys(model.state_dict(keep_vars=True), True)
        self.prefix = getattr(model, "base_model_prefix", None) or None
        self._record_used(stored)

    def to_model(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stored tensors ({checkpoint name: tensor}) as the model's ({parameter name:
        tensor}). `tensors` is emptied as it is read, so a stored tensor is freed as soon as
        its conversion no longer needs it (a fused expert parameter is built from E matrices:
        holding both the matrices and the result of every parameter at once would double a
        block's memory)."""
        from transformers.core_model_loading import (
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )

        pending: dict[str, Any] = {}
        for key in sorted(tensors, key=dot_natural_key):
            tensor = tensors.pop(key)
            renamed, pattern = rename_source_key(key, self.renamings, self.converters,
                                                 self.prefix, self.names)
            if renamed not in self.names and key in self.names:  # as from_pretrained: a key
                renamed, pattern = key, None  # the model has is never renamed away
            if renamed not in self.names:
                raise ValueError(f"the checkpoint has a tensor the model does not: {key}")
            if pattern is not None:
                transform = pending.setdefault(renamed, copy.deepcopy(self.by_pattern[pattern]))
            else:
                transform = pending.setdefault(renamed, WeightRenaming(key, renamed))
                pattern = key
            transform.add_tensor(renamed, key, pattern, tensor)
            del tensor
        converted: dict[str, torch.Tensor] = {}
        for first in list(pending):
            transform = pending.pop(first)
            for name, value in transform.convert(first, model=self.model,
                                                 config=self.model.config).items():
                converted[name] = value[0] if isinstance(value, list) else value
        return converted

    def to_saved(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's tensors ({parameter name: tensor}) in the checkpoint's layout, as
        `save_pretrained` writes them (views where the layout allows: nothing is copied)."""
        from transformers.core_model_loading import revert_weight_conversion

        if not self.mapping:
            return tensors
        return revert_weight_conversion(self.model, tensors)

    def _record_used(self, stored: list[str]) -> None:
        """Keep on the model the conversions the stored names use, as `from_pretrained`
        does (`revert_weight_conversion` reverts those: a legacy name comes back as it was
        read, a conversion the checkpoint did not need is not applied on the way out)."""
        from transformers.core_model_loading import rename_source_key

        if not self.mapping:
            return
        for key in stored:  # renaming marks each transform that matches as used
            rename_source_key(key, self.renamings, self.converters, self.prefix, self.names)
        self.model._weight_conversions = [t for t in self.mapping if t.was_used()]
