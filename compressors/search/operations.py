"""The candidate operations the search allocates per layer: one table keyed by method name.

Torch-free (the API validates a goal's `methods` against it). Each entry says which per-layer
levels a method offers, whether one recipe step may mix levels across layers, what a layer
costs in stored bytes at each level, and (by "module:function" reference, imported on use)
how to perturb a weight the way the method would, for the sensitivity pass, and how to write
an allocation back as an ordinary recipe step.

Adding a method = one entry here plus its two functions in `search.perturb` / `search.steps`
(as `gptq` was added). Next in line:
- `lowrank`: levels = kept-rank fractions ("r0.75", "r0.5", "r0.25"), `mixed_levels=True`
  (needs a per-layer rank field on its config), bytes = rank·(in+out)·dtype bytes, perturb =
  the whitened truncated SVD at that rank (exact per layer), step = its per-layer ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

# bytes of one stored weight per dense dtype
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64  # transformers' bitsandbytes 4-bit block size (one fp32 absmax per block)
GPTQ_BITS = {"int8": 8, "int4": 4}
GPTQ_SCALE_BYTES = 2  # one float16 scale per group (symmetric: no zero point)


@dataclass(frozen=True)
class Operation:
    """One method as the search sees it.

    `levels`: what a layer can be turned into (besides staying as it is, "dense").
    `mixed_levels`: one recipe step can give different layers different levels; when False
    (bitsandbytes: one `bits` per step) each level is its own family and a layer chooses
    between that level and dense.
    `saves_bytes`: whether the stored checkpoint gets smaller (pruned zeros are stored, so
    pruning does not).
    """

    method: str
    levels: tuple[str, ...]
    mixed_levels: bool
    saves_bytes: bool
    perturb: str
    step: str
    note: str = ""


OPERATIONS: dict[str, Operation] = {
    op.method: op
    for op in [
        Operation("quantize", ("int8", "nf4"), mixed_levels=False, saves_bytes=True,
                  perturb="compressors.search.perturb:bnb_roundtrip",
                  step="compressors.search.steps:quantize_step",
                  note="bitsandbytes: one bits value per step, so per layer int8|dense or "
                       "nf4|dense; layers kept dense are excluded from the step"),
        Operation("gptq", ("int8", "int4"), mixed_levels=False, saves_bytes=True,
                  perturb="compressors.search.perturb:grid_roundtrip",
                  step="compressors.search.steps:gptq_step",
                  note="one bits value per step, like bitsandbytes: int8 per channel, int4 in "
                       "groups (auto size); sensitivity measured with round-to-nearest on the "
                       "same grid, an upper bound on GPTQ's error-fed result"),
        Operation("wanda", ("s0.25", "s0.5"), mixed_levels=True, saves_bytes=False,
                  perturb="compressors.search.perturb:wanda_prune",
                  step="compressors.search.steps:pruning_step",
                  note="non-uniform per-layer sparsity (layer_sparsity); zeros are stored, so "
                       "the checkpoint does not shrink"),
        Operation("magnitude", ("s0.25", "s0.5"), mixed_levels=True, saves_bytes=False,
                  perturb="compressors.search.perturb:magnitude_prune",
                  step="compressors.search.steps:pruning_step",
                  note="as wanda"),
        Operation("sparsegpt", ("s0.25", "s0.5"), mixed_levels=True, saves_bytes=False,
                  perturb="compressors.search.perturb:wanda_prune",
                  step="compressors.search.steps:pruning_step",
                  note="sensitivity measured with Wanda's mask (no reconstruction): an upper "
                       "bound on SparseGPT's error"),
    ]
}


def level_sparsity(level: str) -> float:
    """"s0.5" -> 0.5."""
    return float(level[1:])


def layer_bytes(method: str | None, level: str, rows: int, cols: int, dtype: str) -> float:
    """Stored bytes of one `[rows, cols]` weight at `level` (bias and norms are counted with the
    rest of the model). "dense" and pruning levels keep the dense dtype."""
    numel = rows * cols
    if method == "quantize" and level == "int8":
        return numel + rows * 4  # int8 weights + one fp32 scale per output row (SCB)
    if method == "quantize" and level == "nf4":
        return numel / 2 + numel / NF4_BLOCK * 4  # 4-bit codes + one fp32 absmax per block
    if method == "gptq":
        return numel * GPTQ_BITS[level] / 8 + rows * _groups(level, cols) * GPTQ_SCALE_BYTES
    return numel * DTYPE_BYTES[dtype]


def gptq_group_size(level: str, cols: int) -> int:
    """The group size the search's gptq steps use at `level` (-1: per output channel): int8
    per channel (within 0.06% of fp32 on SmolLM2), int4 the step's auto size."""
    from compressors.ops.int_grid import resolve_group_size  # torch: worker side

    return -1 if level == "int8" else resolve_group_size(cols, None)


def _groups(level: str, cols: int) -> int:
    size = gptq_group_size(level, cols)
    return 1 if size == -1 else cols // size
