"""How much memory a job will need, from the checkpoint's headers and the recipe alone.

Nothing is loaded: tensor shapes and dtypes come from the safetensors headers
(`io.model_files.tensor_sizes`), the architecture's widths from config.json. The transformer blocks
are found by name (the longest `prefix.<i>.` run of tensors), so no per-architecture table is
needed; a mixture-of-experts block's experts too, whether the checkpoint stores them one by one
(`...experts.<e>.<matrix>.weight`) or fused in 3-D tensors, and the Hessians of such a block
are counted as the engine holds them, one pass of experts at a time (`ops.hessian_passes`).
For each step the estimate adds what the step holds besides the model (the registry's
`MemoryNeeds`: Hessians, a teacher copy, training state) to the model itself, held one of three
ways (`engine.placement`); `choose_placement` picks the first way that fits the worker.

Torch-free: the API estimates a job at submission (refusing, with the step and the bytes, one
that fits no worker), the worker again before loading, and the report prints the estimate
beside the measured peak. The constants were calibrated on SmolLM2-135M (bench/scale.py,
tests/test_memory.py keeps them within 25% of measured peaks).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressors.io.model_files import (
    check_model_folder,
    dtype_bytes,
    model_config,
    tensor_sizes,
)
from compressors.methods import METHODS
from compressors.ops.hessian_passes import hessian_passes, sum_bytes
from compressors.recipe.fields import TrainingConfig
from compressors.recipe.protocol import LOGIT_CHUNK
from compressors.recipe.step import MemoryNeeds, StepConfig

GiB = 1024**3
RUNTIME_BYTES = int(0.45 * GiB)  # Python + torch + transformers + tokenizer, measured
_BLOCK = re.compile(r"^(.*?)\.(\d+)\.")
_PER_EXPERT = re.compile(r"\.experts\.(\d+)\.")  # a checkpoint storing experts one by one
_INPUT_SIDE = ("gate", "up", "input", "w1", "w3", "fc1")  # fused experts reading the hidden
_RUN_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_CONFIG_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "torch.float32": 4,
                  "torch.bfloat16": 2, "torch.float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of a model, read without loading it."""

    parameters: int
    stored_bytes_per_param: int
    outer_parameters: int  # embeddings, final norm, LM head (a tied head once)
    block_parameters: int  # the largest block
    blocks: int
    block_inputs: tuple[int, ...]  # in_features of each dense 2-D weight of the largest block
    block_outputs: tuple[int, ...]  # out_features of the same weights
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    experts: int = 0  # experts of the largest block (0: dense)
    expert_inputs: tuple[int, ...] = ()  # in_features of each matrix of one of its experts
    expert_outputs: tuple[int, ...] = ()  # out_features of the same matrices


@dataclass(frozen=True)
class Limits:
    """What a worker may use: RAM (the smallest of physical memory, its cgroup limit and
    WORKER_MEMORY_LIMIT) and, with a GPU, the device's free memory."""

    ram_bytes: int
    device_bytes: int | None = None
    device_type: str = "cpu"


@dataclass(frozen=True)
class StepEstimate:
    method: str
    ram: dict[str, int]  # placement -> peak RAM bytes
    device: dict[str, int]  # placement -> peak device bytes (0 on CPU)
    blockwise: bool


@dataclass
class Estimate:
    shape: ModelShape | None
    run_bytes_per_param: int
    steps: list[StepEstimate] = field(default_factory=list)
    evaluation: dict[str, int] = field(default_factory=dict)

    def peak(self, placement: str) -> int:
        values = [s.ram[placement] for s in self.steps] + [self.evaluation.get(placement, 0)]
        return max(values)

    def device_peak(self, placement: str) -> int:
        return max([s.device[placement] for s in self.steps] + [0])

    def step_summaries(self) -> list[dict[str, Any]]:
        return [{"method": s.method, "ram_bytes": max(s.ram.values()),
                 "device_bytes": max(s.device.values())} for s in self.steps]


@dataclass(frozen=True)
class Plan:
    mode: str
    ram_bytes: int | None
    device_bytes: int | None
    limit_bytes: int | None


class DoesNotFit(ValueError):
    """No placement of this model fits the limits; the message names the step and bytes."""


def read_shape(folder: Path) -> ModelShape | None:
    """The model's shape from its safetensors headers and config.json; None if unreadable
    (a GGUF file, `.bin` weights): the run then falls back to holding the model in memory."""
    try:
        sizes = tensor_sizes(folder)
        config = model_config(folder)
    except FileNotFoundError:  # a GGUF file, `.bin` weights: nothing to read the shape from
        return None
    if isinstance(config.get("text_config"), dict):  # multimodal: the language model's widths
        config = config["text_config"]
    counts: dict[str, int] = {}
    for name, (shape, _dtype) in sizes.items():
        match = _BLOCK.match(name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + _numel(shape)
    if not counts:
        return None
    prefix = max(counts, key=counts.__getitem__)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0)
    per_block: dict[int, int] = {}
    inputs: dict[int, list[int]] = {}
    outputs: dict[int, list[int]] = {}
    experts: dict[int, dict[int, list[tuple[int, int]]]] = {}  # block -> expert -> (in, out)
    fused: dict[int, list[tuple[int, int, int]]] = {}  # block -> (experts, in, out) per tensor
    outer = 0
    for name, (shape, _dtype) in sizes.items():
        match = _BLOCK.match(name)
        if match and match.group(1) == prefix:
            index = int(match.group(2))
            per_block[index] = per_block.get(index, 0) + _numel(shape)
            per_expert = _PER_EXPERT.search(name[match.end() - 1:])
            if len(shape) == 2 and name.endswith(".weight") and per_expert:
                experts.setdefault(index, {}).setdefault(int(per_expert.group(1)), []).append(
                    (shape[1], shape[0]))
            elif len(shape) == 2 and name.endswith(".weight"):
                inputs.setdefault(index, []).append(shape[1])
                outputs.setdefault(index, []).append(shape[0])
            elif len(shape) == 3 and min(shape[1:]) > 1:
                fused.setdefault(index, []).append((shape[0], *_fused_matrix(name, shape,
                                                                              hidden)))
        else:
            outer += _numel(shape)
    largest = max(per_block, key=per_block.__getitem__)
    count, expert_matrices = _experts_of(experts.get(largest, {}), fused.get(largest, []))
    stored = [dtype_bytes(d) for _s, d in sizes.values()]
    return ModelShape(
        parameters=sum(_numel(s) for s, _d in sizes.values()),
        stored_bytes_per_param=max(set(stored), key=stored.count),
        outer_parameters=outer, block_parameters=per_block[largest], blocks=len(per_block),
        block_inputs=tuple(inputs.get(largest, [])),
        block_outputs=tuple(outputs.get(largest, [])), hidden=hidden,
        intermediate=int(config.get("intermediate_size") or config.get("n_inner")
                         or config.get("ffn_dim") or 4 * hidden),
        heads=int(config.get("num_attention_heads") or config.get("n_head") or 1),
        vocab=int(config.get("vocab_size") or 0), experts=count,
        expert_inputs=tuple(width for width, _ in expert_matrices),
        expert_outputs=tuple(rows for _, rows in expert_matrices),
    )


def _fused_matrix(name: str, shape: tuple[int, ...], hidden: int) -> tuple[int, int]:
    """(in, out) of one expert's matrix of a fused `[E, a, b]` experts tensor, stored
    `[E, out, in]` or transposed (GPT-OSS): a matrix on the input side of the MLP reads the
    hidden states, the others write them (the convention of `engine.experts`)."""
    _count, rows, cols = shape
    leaf = name.removesuffix(".weight").rsplit(".", 1)[-1]
    if any(marker in leaf for marker in _INPUT_SIDE):
        width = hidden if hidden in (rows, cols) else cols
    elif rows == hidden and cols != hidden:
        width = cols
    elif cols == hidden and rows != hidden:
        width = rows
    else:
        width = cols
    return width, rows * cols // width


def _experts_of(per_expert: dict[int, list[tuple[int, int]]],
                fused: list[tuple[int, int, int]]) -> tuple[int, list[tuple[int, int]]]:
    """(experts, (in, out) of each matrix of the widest expert) of one block, from the
    matrices stored one by one and the fused 3-D tensors (one matrix per expert each)."""
    if per_expert:
        widest = max(per_expert.values(), key=lambda ms: sum(w * w for w, _ in ms))
        return len(per_expert), widest
    if fused:
        return max(count for count, _, _ in fused), [(w, out) for _, w, out in fused]
    return 0, []


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _run_bytes(shape: ModelShape | None, dtype: str, folder: Path | None) -> int:
    if dtype != "auto":
        return _RUN_BYTES[dtype]
    if folder is not None:
        config = model_config(folder)
        name = str(config.get("dtype") or config.get("torch_dtype") or "")
        if name in _CONFIG_DTYPES:
            return _CONFIG_DTYPES[name]
    return 4 if shape is None else max(2, shape.stored_bytes_per_param)


def estimate_source(source: Path, recipe: Any) -> Estimate:
    """The estimate for a local source (an HF folder; anything else gets an empty one).
    The folder is vetted first, like for every loader (`model_files.check_model_folder`)."""
    if not source.is_dir():
        return estimate(None, recipe, _run_bytes(None, recipe.dtype, None))
    check_model_folder(source)
    shape = read_shape(source)
    return estimate(shape, recipe, _run_bytes(shape, recipe.dtype, source))


def estimate(shape: ModelShape | None, recipe: Any, run_bytes: int) -> Estimate:
    """Peak RAM and device bytes of every step and of the evaluation, for each placement."""
    result = Estimate(shape, run_bytes)
    if shape is None:
        return result
    weights = shape.parameters * run_bytes
    cal = recipe.calibration
    activations = 2 * cal.samples * cal.seqlen * shape.hidden * run_bytes
    transient = _block_transient(shape, min(4, cal.samples), cal.seqlen, run_bytes)
    held = {"in_memory": weights, "onloaded": weights,
            "streamed": (shape.outer_parameters + 2 * shape.block_parameters) * run_bytes}
    for index, step in enumerate(recipe.steps):
        method = METHODS[step.method]
        needs = step_needs(step, method.memory)
        extra = activations + transient if method.needs_calibration or needs.hessians else 0
        if needs.hessians:
            extra += _hessian_bytes(shape, needs.kept_hessians)
        whole = 0
        if needs.teacher:
            whole += weights
        if needs.training:
            whole += _training_bytes(shape, step, needs)
        if needs.output_grams:
            whole += _output_gram_bytes(shape, cal.seqlen)
        if needs.reload:
            whole += weights + _rebuilt_bytes(shape, needs.reload_bits, run_bytes)
        if method.uses_masks:
            whole += _mask_bytes(shape, earlier=index > 0, training=not method.blockwise)
        ram = {mode: RUNTIME_BYTES + base + extra + whole for mode, base in held.items()}
        on_device = {"in_memory": weights + extra + whole,
                     "onloaded": (shape.outer_parameters + shape.block_parameters) * run_bytes
                     + extra + whole,
                     "streamed": (shape.outer_parameters + shape.block_parameters) * run_bytes
                     + extra}
        result.steps.append(StepEstimate(step.method, ram, on_device, method.blockwise))
    result.evaluation = _evaluation_bytes(shape, recipe, weights, held, run_bytes)
    return result


def step_needs(step: StepConfig, declared: MemoryNeeds) -> MemoryNeeds:
    """The registry's needs, narrowed by the step's own settings where they say more."""
    return step.memory_needs(declared)


def _block_transient(shape: ModelShape, batch: int, seqlen: int, run_bytes: int) -> int:
    """One block's forward on one batch: attention scores and the MLP's widest tensors."""
    attention = batch * shape.heads * seqlen * seqlen * 4
    mlp = 3 * batch * seqlen * shape.intermediate * run_bytes
    return attention + mlp


def _hessian_bytes(shape: ModelShape, kept: bool) -> int:
    """The Hessians of the largest block's largest pass (`ops.hessian_passes`: its dense
    layers first, then whole experts as long as their sums fit; one pass for a dense block).
    Per pass: one float64 `in × in` sum per layer while they accumulate; then, factoring,
    each sum is freed as its factor is made, and the widest input's factorisation holds two
    float64 `in × in` matrices (`ops.hessian`); plus the float32 factor of each distinct
    input (per expert: an expert's gate and up share theirs), and with `kept` (GPTQ) a
    float32 copy of every layer's Hessian."""
    dense = dict(enumerate(shape.block_inputs or (shape.hidden,)))
    expert = {("expert", i): width for i, width in enumerate(shape.expert_inputs)}
    experts = [{(e, key): width for key, width in expert.items()}
               for e in range(shape.experts)]
    widths = {**dense, **{key: w for one in experts for key, w in one.items()}}
    largest = 0
    for layers in hessian_passes(dense, experts):
        inputs = [widths[key] for key in layers]
        sums = sum(sum_bytes(width) for width in inputs)
        dense_widths = {widths[key] for key in layers if key in dense}
        factors = sum(4 * width * width for width in dense_widths)
        in_pass = {key[0] for key in layers if key not in dense}
        factors += len(in_pass) * sum(4 * width * width for width in set(shape.expert_inputs))
        copies = sum(4 * width * width for width in inputs) if kept else 0
        largest = max(largest, max(sums, 2 * sum_bytes(max(inputs))) + factors + copies)
    return largest


def _rebuilt_bytes(shape: ModelShape, bits: int, run_bytes: int) -> int:
    """A model rebuilt with its blocks' weights at `bits` each (their scales add ~1/16) and
    the rest (embeddings, norms, LM head: never quantized) as it was."""
    blocks = shape.blocks * shape.block_parameters * bits * 17 // (8 * 16)
    return blocks + shape.outer_parameters * run_bytes


def _mask_bytes(shape: ModelShape, earlier: bool, training: bool) -> int:
    """A step that keeps earlier masks holds, per weight of the blocks, the recorded bool mask
    and its intersection with the current nonzeros (1 byte each), and while adapters train
    one float32 work copy (the merged weight a layer's forward and backward form): 6 bytes per
    block weight, which is what PERP on SmolLM2 measures above the pruned model (+0.6 GB).
    A blockwise step (GPTQ, RTN) forms the intersection one layer at a time: it holds the
    recorded masks of every block, 1 byte per block weight, and none as the recipe's first
    step (no earlier step recorded any)."""
    if training:
        return 6 * shape.blocks * shape.block_parameters
    return shape.blocks * shape.block_parameters if earlier else 0


def _training_bytes(shape: ModelShape, step: StepConfig, needs: MemoryNeeds) -> int:
    """Activations a backward pass keeps (per block: ~20 hidden-wide and 4 MLP-wide tensors
    per token, plus the LM head's logits), and float32 gradients and AdamW state (3 copies) of
    the trained parameters, `trained_share` of the blocks' weights."""
    trained_share = needs.trained_share
    training = step if isinstance(step, TrainingConfig) else TrainingConfig()
    tokens = training.batch_size * training.seqlen
    per_block = tokens * (20 * shape.hidden + 4 * shape.intermediate) * 4
    if needs.activations_checkpointed:
        per_block = tokens * shape.hidden * 4 * 2
    logits = 3 * tokens * shape.vocab * 4
    optimizer = int(3 * 4 * trained_share * shape.blocks * shape.block_parameters)
    return shape.blocks * per_block + logits + optimizer


def _output_gram_bytes(shape: ModelShape, seqlen: int) -> int:
    """The fisher weighting's backward pass of one calibration window through the whole model
    (as `_training_bytes`' activations, no optimizer) and its float32 `out × out` sums, one per
    2-D weight of every block."""
    activations = shape.blocks * seqlen * (20 * shape.hidden + 4 * shape.intermediate) * 4
    logits = 3 * seqlen * shape.vocab * 4
    sums = shape.blocks * sum(4 * width * width for width in shape.block_outputs)
    return activations + logits + sums


def _evaluation_bytes(shape: ModelShape, recipe: Any, weights: int, held: dict[str, int],
                      run_bytes: int) -> dict[str, int]:
    """Perplexity: the logits of one window (three float32 copies while the loss is formed);
    block by block the logits of `LOGIT_CHUNK` positions, and every window's hidden states."""
    ev = recipe.evaluation
    if ev.windows == 0:
        return dict.fromkeys(held, RUNTIME_BYTES)
    logits = 3 * ev.seqlen * shape.vocab * 4
    chunked = 3 * min(ev.seqlen, LOGIT_CHUNK) * shape.vocab * 4
    states = 2 * ev.windows * ev.seqlen * shape.hidden * run_bytes
    return {"in_memory": RUNTIME_BYTES + weights + logits,
            "onloaded": RUNTIME_BYTES + weights + chunked + states,
            "streamed": RUNTIME_BYTES + held["streamed"] + chunked + states}


def choose_placement(estimate: Estimate, recipe: Any, limits: Limits, device_type: str) -> Plan:
    """The recipe's placement, or the first of in_memory / onloaded / streamed that fits."""
    if estimate.shape is None:  # nothing to estimate from: hold it in memory, as always
        mode = "in_memory" if recipe.placement == "auto" else recipe.placement
        return Plan(mode, None, None, limits.ram_bytes)
    candidates = [recipe.placement] if recipe.placement != "auto" else [
        "in_memory", "onloaded", "streamed"]
    if device_type == "cpu" and recipe.placement == "auto":
        candidates.remove("onloaded")  # on the CPU it is the same as in memory
    for mode in candidates:
        if mode == "streamed" and not all(s.blockwise for s in estimate.steps):
            continue
        if any(_refuses(step, mode) for step in recipe.steps):
            continue  # e.g. a step that back-propagates through the whole model, onloaded
        ram, device = estimate.peak(mode), estimate.device_peak(mode)
        fits_device = device_type == "cpu" or limits.device_bytes is None or (
            device <= limits.device_bytes)
        if ram <= limits.ram_bytes and fits_device:
            return Plan(mode, ram, device if device_type != "cpu" else None, limits.ram_bytes)
    if recipe.placement != "auto":  # a forced placement that does not fit is refused too:
        raise DoesNotFit(_explain_forced(estimate, recipe.placement, limits))  # not OOM-killed
    raise DoesNotFit(_explain(estimate, limits))


def _refuses(step: StepConfig, mode: str) -> bool:
    """The step says it cannot run with the model held `mode` (`placement_error`)."""
    return step.placement_error(mode) is not None


def _explain_forced(estimate: Estimate, mode: str, limits: Limits) -> str:
    """Which part of a forced placement does not fit: the RAM peak, or else the device's."""
    need, have, where = estimate.peak(mode), limits.ram_bytes, "RAM"
    if need <= have:
        need, have, where = estimate.device_peak(mode), limits.device_bytes or 0, "device memory"
    worst = max(estimate.steps, key=lambda s: s.ram[mode], default=None)
    what = f"step {worst.method!r}" if worst and worst.ram[mode] >= need else "the evaluation"
    return (f"placement {mode!r}: {what} needs about {need / GiB:.1f} GiB of {where}, more "
            f"than the {have / GiB:.1f} GiB this worker has; use placement 'auto' to let the "
            "estimate pick one that fits")


def _explain(estimate: Estimate, limits: Limits) -> str:
    """Which step needs how much, against what the worker has."""
    worst = max(estimate.steps, key=lambda s: min(s.ram.values()))
    best_mode = min(worst.ram, key=worst.ram.__getitem__)
    if not worst.blockwise:
        best_mode = min(("in_memory", "onloaded"), key=worst.ram.__getitem__)
    return (f"step {worst.method!r} needs about {worst.ram[best_mode] / GiB:.1f} GiB of RAM "
            f"even {best_mode.replace('_', ' ')}, more than the {limits.ram_bytes / GiB:.1f} "
            "GiB this worker may use"
            + ("" if worst.blockwise else " (it needs the whole model at once, so it cannot "
               "be streamed block by block)"))


def ram_limit_bytes() -> int:
    """The smallest of physical RAM, this process's cgroup limit (v1 or v2) and
    WORKER_MEMORY_LIMIT (bytes, or with a K/M/G suffix)."""
    limits = [_meminfo_total()]
    cgroup = _cgroup_limit()
    if cgroup:
        limits.append(cgroup)
    configured = os.environ.get("COMPRESSORS_WORKER_MEMORY_LIMIT") or os.environ.get(
        "WORKER_MEMORY_LIMIT")
    if configured:
        limits.append(parse_bytes(configured))
    return min(limits)


def parse_bytes(text: str) -> int:
    """`8G`, `512M`, `1.5GiB`, `1000000` -> bytes (binary multiples)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"memory limit {text!r}: use bytes or a K/M/G/T suffix")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _meminfo_total() -> int:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemTotal")  # pragma: no cover - Linux always has it


def _cgroup_limit() -> int | None:
    """This process's memory limit from cgroup v2 (`memory.max`) or v1 (`limit_in_bytes`),
    looking up its own cgroup path; None when unlimited or unreadable."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates = [Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max",
                          Path("/sys/fs/cgroup/unified") / path.lstrip("/") / "memory.max"]
        elif "memory" in controllers.split(","):
            candidates = [Path("/sys/fs/cgroup/memory") / path.lstrip("/") /
                          "memory.limit_in_bytes"]
        else:
            continue
        for candidate in candidates:
            value = read_limit(candidate)
            if value:
                found.append(value)
    return min(found) if found else None


def read_limit(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    value = int(text)
    return value if value < 2**60 else None  # v1 says "unlimited" with a huge number


def local_limits(device: Any) -> Limits:
    """This process's limits; the GPU's free memory is asked of torch (jobs run in a process
    of their own, so asking there never initialises CUDA in a worker's parent)."""
    device_type = getattr(device, "type", str(device).split(":")[0])
    free = None
    if device_type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
    return Limits(ram_limit_bytes(), free, device_type)
