"""The weight matrices of a checkpoint, named and sorted by kind from its headers alone.

Submission checks a recipe's layer selection against the model before a job queues, in the
API process, without torch and without loading anything (`jobs.admission`). It needs the
names a step's `include` / `exclude` patterns will meet in the job, and which of them are
mixture-of-experts expert matrices (some methods refuse them, naming the method and the kind)
or routers (never in a default selection). This reads them from the safetensors headers with
the conventions the engine uses at run time (`engine.experts`):

- a 2-D `<module>.weight` is the layer `<module>`; one under `...experts.<e>.` (a checkpoint
  that saves experts one by one, what transformers writes for Qwen-MoE, Mixtral, DeepSeek,
  OLMoE) is expert `e`'s matrix, with the same name the job gives it;
- a 3-D tensor inside the blocks is a fused experts parameter saved whole (GPT-OSS,
  GraniteMoE): expert `e`'s matrix is `<tensor name without .weight>.<e>`;
- a router is a 2-D weight of the module holding the experts with one row per expert, or a
  Linear that is a direct child of that module (a shared expert's `[1, H]` gate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from compressors.io.model_files import header, model_config, shard_map, tensor_sizes

_BLOCK = re.compile(r"^(.*?)\.(\d+)\.")
_PER_EXPERT = re.compile(r"^(?P<block>.*)\.experts\.(?P<expert>\d+)\.")


@dataclass
class CheckpointLayers:
    """What a step's selection can meet in this checkpoint."""

    names: list[str] = field(default_factory=list)  # every weight matrix a step may target
    inside: list[str] = field(default_factory=list)  # the default selection
    experts: set[str] = field(default_factory=set)  # expert matrices among `names`
    fused_experts: set[str] = field(default_factory=set)  # saved inside 3-D tensors
    routers: set[str] = field(default_factory=set)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # 2-D ones: (out, in)

    def kind(self, name: str) -> str:
        if name in self.routers:
            return "routers"
        return "experts" if name in self.experts else "dense"


def checkpoint_layers(folder: Path, max_header_bytes: int) -> CheckpointLayers:
    """The checkpoint's layers (`max_header_bytes` bounds the headers read)."""
    sizes = tensor_sizes(folder, max_header_bytes=max_header_bytes)
    layers = CheckpointLayers()
    blocks = _block_prefix(sizes)
    moe_counts: dict[str, int] = {}  # the module holding the experts -> how many
    for tensor, (shape, _dtype) in sizes.items():
        name = tensor.removesuffix(".weight")
        if len(shape) == 3 and blocks is not None and tensor.startswith(blocks + "."):
            expanded = [f"{name}.{e}" for e in range(shape[0])]
            layers.names += expanded
            layers.experts.update(expanded)
            layers.fused_experts.update(expanded)
            module = name if tensor.endswith(".weight") else name.rsplit(".", 1)[0]
            holder = module.rsplit(".", 1)[0]  # the module that routes to the experts
            moe_counts[holder] = max(moe_counts.get(holder, 0), shape[0])
        elif len(shape) == 2 and tensor.endswith(".weight"):
            layers.names.append(name)
            layers.shapes[name] = (shape[0], shape[1])
            per_expert = _PER_EXPERT.match(name)
            if per_expert:
                layers.experts.add(name)
                block = per_expert.group("block")
                moe_counts[block] = max(moe_counts.get(block, 0),
                                        int(per_expert.group("expert")) + 1)
    layers.routers = _routers(sizes, moe_counts)
    layers.inside = [n for n in layers.names
                     if blocks is not None and n.startswith(blocks + ".")
                     and n not in layers.routers]
    if model_config(folder).get("tie_word_embeddings"):
        layers.names.append("lm_head")  # a tied head is not stored, but a step may target it
    return layers


def _block_prefix(sizes: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """The transformer blocks' prefix: the `<prefix>.<i>.` holding the most tensors."""
    counts: dict[str, int] = {}
    for name in sizes:
        match = _BLOCK.match(name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _routers(sizes: dict[str, tuple[tuple[int, ...], str]],
             moe_counts: dict[str, int]) -> set[str]:
    routers = set()
    for tensor, (shape, _dtype) in sizes.items():
        if len(shape) != 2 or not tensor.endswith(".weight"):
            continue
        name = tensor.removesuffix(".weight")
        if _PER_EXPERT.match(name):
            continue
        for holder, count in moe_counts.items():
            if not name.startswith(holder + ".") or ".experts." in name[len(holder):]:
                continue
            direct = name.count(".") == holder.count(".") + 1
            if shape[0] == count or direct:
                routers.add(name)
    return routers


def stored_bytes(folder: Path, layer_names: list[str],
                 max_header_bytes: int = 100 * 2**20) -> dict[str, int]:
    """Bytes each layer's weight takes in the saved files, from the headers: every tensor
    goes to the longest layer name it extends (`q_proj.weight_packed`, `.weight_scale`,
    bitsandbytes' `.weight.absmax`, `.SCB`, a factorized layer's `up.weight` / `down.weight`),
    biases aside; a fused experts tensor saved whole is shared out evenly among its experts'
    layers (`<tensor>.<e>`). What the report's bits per weight rest on: what was saved."""
    known = sorted(layer_names, key=len, reverse=True)
    by_layer = dict.fromkeys(layer_names, 0)
    for tensor, size in _tensor_bytes(folder, max_header_bytes).items():
        if tensor.endswith(".bias"):
            continue
        owner = next((n for n in known if tensor.startswith(n + ".")), None)
        if owner is not None:
            by_layer[owner] += size
            continue
        base = tensor.removesuffix(".weight")
        experts = [n for n in layer_names if n.startswith(base + ".") and
                   n[len(base) + 1:].isdigit()]
        for name in experts:
            by_layer[name] += size // len(experts)
    return by_layer


def _tensor_bytes(folder: Path, max_header_bytes: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for path in sorted(set(shard_map(folder).values())):
        for name, entry in header(path, max_header_bytes).items():
            start, end = entry["data_offsets"]
            found[name] = int(end) - int(start)
    return found
