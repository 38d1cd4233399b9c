"""Mixture-of-experts weights, found generically: each expert's matrix is a layer of its own.

transformers 5 keeps a MoE block's experts as fused 3-D parameters of one module
(`experts.gate_up_proj [E, 2I, H]`, `experts.down_proj [E, H, I]`; GPT-OSS stores them
transposed), not as `nn.Linear` modules, so a walk over Linear layers never sees them and every
method would skip 80-97% of a real MoE model's weights in silence. Here, without a table of
architectures:

- an *experts module* owns 3-D parameters whose first dimension `E` equals the rows of a router
  in the module that contains it, its *MoE block*: a 2-D weight with `E` rows (`gate`,
  `router`), the module that routes tokens to the experts;
- each expert's matrix of each such parameter is an `ExpertLayer` (`engine.layers`): an
  `[out, in]` view of that expert's slice, which every method treats as a layer of its own
  (its own mask, Hessian, scales); where transformers saves the experts one by one
  (`experts.3.gate_proj.weight`), the layer is that per-expert matrix and carries its name,
  learned from transformers' own conversion mapping (`revert_weight_conversion` run on a small
  stand-in), so recipes name experts as their checkpoints do, at submission and in the job
  alike; where it saves them fused (GPT-OSS), the layer is the whole expert matrix, named
  `<parameter>.<e>`;
- the block's other weights get their kind: routers (never compressed unless a recipe names
  them) and shared experts.

The inputs of an expert layer are the tokens the router sends to it, seen inside the experts
module's forward, where no module hook reaches: `ExpertInputs` watches the matrix products
the forward makes with an expert's weights (transformers' eager experts implementation indexes
`param[e]` and multiplies by it), and can run every token through every expert first, for
statistics only (`all_experts`, llm-compressor's `calibrate_all_experts`).
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from compressors.engine.layers import ExpertLayer

EXPERT_KINDS = ("attention", "mlp", "experts", "shared_experts", "routers", "other")
# An expert matrix whose statistics rest on fewer calibration tokens than this falls back to
# its data-free form (magnitude scores; round-to-nearest): a rare expert routed a handful of
# tokens has no Hessian or input norms worth the name. Each step counts them in its report.
MIN_EXPERT_TOKENS = 16
_PROXY_ROWS = 12  # rows of the stand-in a conversion is learned on (splits in 2, 3, 4 or 6)
_INPUT_SIDE = ("gate", "up", "input", "w1", "w3", "fc1")


@dataclass(frozen=True)
class MoEBlock:
    """One MoE block: where its experts, routers and shared experts are."""

    name: str  # the module that routes: "model.layers.1.mlp"
    experts: str  # the module owning the fused 3-D parameters
    num_experts: int
    hidden: int
    routers: tuple[str, ...]  # modules (or parameters' owners) that route, never defaults
    shared: tuple[str, ...]  # child modules of the block that are shared experts


_BLOCKS: weakref.WeakKeyDictionary[nn.Module, list[MoEBlock]] = weakref.WeakKeyDictionary()
_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[str, ExpertLayer]] = (
    weakref.WeakKeyDictionary())


def _fused_params(module: nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in module.named_parameters(recurse=False) if p.ndim == 3}


def _router_rows(module: nn.Module) -> tuple[int, int] | None:
    """(rows, width) of a module's own 2-D weight: a router has one row per expert."""
    weight = module._parameters.get("weight")
    return (weight.shape[0], weight.shape[1]) if weight is not None and weight.ndim == 2 else None


def moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every MoE block of the model (cached per model: the structure never changes)."""
    found = _BLOCKS.get(model)
    if found is None:
        found = _BLOCKS[model] = list(_discover(model))
    return found


def _discover(model: nn.Module) -> Iterator[MoEBlock]:
    modules = dict(model.named_modules())
    for name, module in modules.items():
        shapes = _fused_params(module)
        if not shapes:
            continue
        experts = {shape[0] for shape in shapes.values()}
        if len(experts) != 1:
            continue
        (count,) = experts
        block = _routing_ancestor(modules, name, count)
        if block is None:
            continue
        block_name, hidden = block
        yield MoEBlock(block_name, name, count, hidden,
                       _routers(modules, block_name, count),
                       _shared(modules, block_name, name))


def _routing_ancestor(modules: dict[str, nn.Module], name: str,
                      count: int) -> tuple[str, int] | None:
    """The nearest module above `name` holding a router for `count` experts, and its width."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        ancestor = ".".join(parts[:depth])
        for child_name, child in modules.items():
            if not child_name.startswith(ancestor + ".") or child_name.startswith(name):
                continue
            rows = _router_rows(child)
            if rows is not None and rows[0] == count:
                return ancestor, rows[1]
    return None


def _routers(modules: dict[str, nn.Module], block: str, count: int) -> tuple[str, ...]:
    """The block's routing modules: those with one weight row per expert, and Linear layers
    that are the block's direct children (a shared expert's gate, `[1, H]`)."""
    found = []
    for name, module in modules.items():
        if not name.startswith(block + "."):
            continue
        rows = _router_rows(module)
        direct = name.count(".") == block.count(".") + 1
        if rows is not None and (rows[0] == count or (direct and isinstance(module, nn.Linear))):
            found.append(name)
    return tuple(found)


def _shared(modules: dict[str, nn.Module], block: str, experts: str) -> tuple[str, ...]:
    """Direct children of the block, other than the experts and the routers, that hold Linear
    layers: the shared experts every token goes through."""
    depth = block.count(".") + 1
    found = []
    for name, module in modules.items():
        if not name.startswith(block + ".") or name.count(".") != depth or name == experts:
            continue
        if any(isinstance(m, nn.Linear) for m in module.modules()) and not isinstance(
                module, nn.Linear):
            found.append(name)
    return tuple(found)


# ---- the expert layers ---------------------------------------------------------------------

def expert_layers(model: nn.Module) -> dict[str, ExpertLayer]:
    """Every expert matrix of every MoE block, by name (the same objects on every call, so
    what a step attaches to them, such as quantization records, stays with them)."""
    layers: dict[str, ExpertLayer] = {}
    for block in moe_blocks(model):
        owner = model.get_submodule(block.experts)
        cached = _LAYERS.get(owner)
        if cached is None:
            cached = _LAYERS[owner] = _layers_of(model, block, owner)
        layers.update(cached)
    return layers


def _layers_of(model: nn.Module, block: MoEBlock, owner: nn.Module) -> dict[str, ExpertLayer]:
    layers: dict[str, ExpertLayer] = {}
    for param, shape in _fused_params(owner).items():
        transposed = _transposed(owner, param, shape, block.hidden)
        qualified = f"{block.experts}.{param}"
        layout = _saved_layout(model, qualified, shape)
        whole = qualified if not isinstance(layout, str) else layout
        for expert in range(shape[0]):
            if not isinstance(layout, list):
                name = f"{whole}.{expert}"
                layers[name] = ExpertLayer(owner, qualified, expert, None, transposed, name,
                                           per_expert_checkpoint=False)
                continue
            for saved_name, fraction in layout[expert]:
                rows = _rows(fraction, shape, transposed)
                layers[saved_name] = ExpertLayer(owner, qualified, expert, rows, transposed,
                                                 saved_name, per_expert_checkpoint=True)
    return layers


def _transposed(owner: nn.Module, param: str, shape: torch.Size, hidden: int) -> bool:
    """Whether the parameter is stored `[E, in, out]` (used as `x @ W[e]`): transformers'
    experts interface says so (`is_transposed`); otherwise the shapes do, given the hidden
    width and which side of the MLP the parameter is (its inputs or its outputs are the
    hidden states)."""
    declared = getattr(owner, "is_transposed", None)
    if isinstance(declared, bool):
        return declared
    _experts, rows, cols = shape
    input_side = any(marker in param for marker in _INPUT_SIDE)
    normal, flipped = (cols == hidden, rows == hidden) if input_side else (
        rows == hidden, cols == hidden)
    if normal != flipped:
        return flipped
    raise ValueError(f"experts parameter {param!r} of {type(owner).__name__} {tuple(shape)}: "
                     "cannot tell whether it is stored transposed (no `is_transposed` on the "
                     "module, and its shape fits both ways)")


Fraction = tuple[int, int]  # (first, end) rows out of _PROXY_ROWS


def _saved_layout(model: nn.Module, qualified: str, shape: torch.Size
                  ) -> list[list[tuple[str, Fraction]]] | str | None:
    """Per expert, the (saved name, share of the expert's rows) of each matrix transformers
    saves it as, learned by running its reverse conversion on a small stand-in whose values
    are their own positions. Where it saves the parameter fused, the name it saves it under
    (a str: the whole expert matrix is the layer, named `<that name>.<e>`, as the headers
    name it at submission); None where the conversion is no slice of rows."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # pragma: no cover - transformers without conversion mappings
        return None
    count = shape[0]
    proxy = torch.arange(count * _PROXY_ROWS * 3, dtype=torch.float64).reshape(
        count, _PROXY_ROWS, 3)
    try:
        saved = revert_weight_conversion(model, {qualified: proxy})
    except Exception:  # a conversion that cannot run on a stand-in: keep it fused
        return None
    if len(saved) == 1 and next(iter(saved.values())).ndim == 3:
        return next(iter(saved)).removesuffix(".weight")
    layout: list[list[tuple[str, Fraction]]] = [[] for _ in range(count)]
    for name, tensor in saved.items():
        slot = _row_slice(proxy, tensor)
        if slot is None:
            return None
        expert, first, end = slot
        layout[expert].append((name.removesuffix(".weight"), (first, end)))
    return layout if all(layout) else None


def _row_slice(proxy: torch.Tensor, tensor: torch.Tensor) -> tuple[int, int, int] | None:
    """(expert, first row, end row) when `tensor` is `proxy[expert, first:end, :]`."""
    if tensor.ndim != 2 or tensor.shape[1] != proxy.shape[2] or tensor.numel() == 0:
        return None
    start = int(tensor[0, 0])
    expert, row = divmod(start // proxy.shape[2], proxy.shape[1])
    end = row + tensor.shape[0]
    if end > proxy.shape[1] or not torch.equal(proxy[expert, row:end], tensor):
        return None
    return expert, row, end


def _rows(fraction: Fraction, shape: torch.Size, transposed: bool) -> slice | None:
    """The output rows of an expert's `[out, in]` matrix a saved matrix holds."""
    first, end = fraction
    if (first, end) == (0, _PROXY_ROWS):
        return None
    out = shape[2] if transposed else shape[1]
    if transposed or (out * first) % _PROXY_ROWS or (out * end) % _PROXY_ROWS:
        raise ValueError(f"experts of shape {tuple(shape)}: the saved per-expert layout "
                         "splits them in a way that is not a slice of output rows")
    return slice(out * first // _PROXY_ROWS, out * end // _PROXY_ROWS)


def starved(layers: dict[str, nn.Module], tokens: dict[str, int]) -> dict[str, int]:
    """{name: tokens seen} of the expert layers whose statistics are too thin to use
    (`MIN_EXPERT_TOKENS`); a method treats them data-free and reports them."""
    return {name: tokens.get(name, 0) for name, layer in layers.items()
            if isinstance(layer, ExpertLayer) and tokens.get(name, 0) < MIN_EXPERT_TOKENS}


# ---- kinds -------------------------------------------------------------------------------

def router_names(model: nn.Module) -> set[str]:
    """Modules that route tokens to experts: a default selection never includes them."""
    return {name for block in moe_blocks(model) for name in block.routers}


def kind_of_layer(model: nn.Module, name: str) -> str:
    """The kind a report splits a weight layer by: attention, mlp (dense), experts,
    shared_experts, routers, or other (outside the transformer blocks)."""
    for block in moe_blocks(model):
        if any(name == r or name.startswith(r + ".") for r in block.routers):
            return "routers"
        if name.startswith(block.experts + "."):
            return "experts"
        if any(name.startswith(s + ".") for s in block.shared):
            return "shared_experts"
    if name in expert_layers(model):
        return "experts"
    parts = name.split(".")
    if any("attn" in part or "attention" in part for part in parts):
        return "attention"
    return "mlp"


# ---- seeing an expert's inputs -------------------------------------------------------------

@contextlib.contextmanager
def eager_experts(layers: Iterable[ExpertLayer]) -> Iterator[None]:
    """transformers' experts modules dispatch their forward on their config's
    `_experts_implementation` (grouped matmuls by default); its eager loop indexes each
    expert's weights, which is what `ExpertInputs` watches. Same numbers, one way to see."""
    configs = {id(c): c for c in (getattr(layer.owner, "config", None) for layer in layers)
               if c is not None and hasattr(c, "_experts_implementation")}
    before = {key: config._experts_implementation for key, config in configs.items()}
    for config in configs.values():
        config._experts_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._experts_implementation = before[key]


Observe = Callable[[ExpertLayer, torch.Tensor], None]
_PRODUCTS = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


class ExpertInputs(TorchFunctionMode):
    """While active, hands each expert layer the inputs its expert multiplies by its weights.

    `param[e]` (indexing an experts parameter) is tagged with (parameter, e); a product of an
    input with a tagged weight then reports the input (`[tokens, in]`) to every expert layer
    cut from that expert's matrix. With `all_experts`, each experts module first runs every
    token through every expert with zero weight (its output is not used), and its own call
    then reports nothing: the statistics see all tokens, the block's output is unchanged.
    """

    def __init__(self, layers: dict[str, ExpertLayer], observe: Observe,
                 all_experts: bool = False) -> None:
        super().__init__()
        self.observe = observe
        self.all_experts = all_experts
        self.by_param: dict[int, dict[int, list[ExpertLayer]]] = {}
        self.owners: dict[int, nn.Module] = {}
        for layer in layers.values():
            param = getattr(layer.owner, layer.param)
            self.by_param.setdefault(id(param), {}).setdefault(layer.expert, []).append(layer)
            self.owners[id(layer.owner)] = layer.owner
        self.recording = True
        self.tokens: dict[str, int] = {name: 0 for name in layers}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is torch.Tensor.__getitem__ and id(args[0]) in self.by_param:
            expert = _index(args[1])
            if expert is not None and isinstance(result, torch.Tensor):
                result._compressors_expert = (id(args[0]), expert)
        elif func in _PRODUCTS and self.recording and len(args) >= 2:
            tag = getattr(args[1], "_compressors_expert", None)
            if tag is not None:
                inputs = args[0].detach()
                for layer in self.by_param[tag[0]].get(tag[1], []):
                    flat = inputs.reshape(-1, layer.in_features)
                    self.tokens[layer.name] += flat.shape[0]
                    self.observe(layer, flat)
        return result

    @contextlib.contextmanager
    def watching(self) -> Iterator[ExpertInputs]:
        handles = []
        if self.all_experts:
            for owner in self.owners.values():
                handles.append(owner.register_forward_pre_hook(self._all_first,
                                                               with_kwargs=True))
                handles.append(owner.register_forward_hook(self._resume))
        try:
            with self:
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def _all_first(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Run every token through every expert (zero weights), recording; then stop
        recording for the module's own call."""
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        names = list(bound.signature.parameters)
        hidden = bound.arguments[names[0]]
        tokens = hidden.reshape(-1, hidden.shape[-1]).shape[0]
        count = next(p.shape[0] for p in module.parameters(recurse=False) if p.ndim == 3)
        every = torch.arange(count, device=hidden.device).expand(tokens, count)
        weights = torch.zeros(tokens, count, dtype=hidden.dtype, device=hidden.device)
        module.forward(hidden, every, weights)
        self.recording = False

    def _resume(self, _module: nn.Module, _args: tuple, _output: object) -> None:
        self.recording = True


def _index(key: object) -> int | None:
    """An integer index (a Python int or a one-element integer tensor), else None."""
    if isinstance(key, int):
        return key
    if isinstance(key, torch.Tensor) and key.numel() == 1 and not key.is_floating_point():
        return int(key)
    return None
