"""The field types several recipe steps share (the step contract itself is `recipe.step`).

Torch-free: the API validates recipes with these and never loads a model. Every step config is
strict (`"0.5"` is not a float, `true` is not an int), frozen, and forbids unknown keys, so a
typo never silently changes a job. String fields are of three kinds only: a choice (Literal),
a text reference (`recipe.text.TextRef`, the one type that may name a file), or a constrained
pattern marked with `x-string-kind` (layer regexes, N:M patterns); `tests/test_recipe.py`
walks every method's schema to keep it that way. Layer regexes are RE2 patterns
(`recipe.patterns`): linear-time matching, the same engine here and in the job.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from compressors.recipe import patterns
from compressors.recipe.step import StepConfig, WeightForm

MAX_SEED = 2**32 - 1
MAX_GROUP = 256  # the largest M of an N:M pattern (hardware patterns are 2:4, 4:8)
MAX_LAYER_PATTERNS = 64
MAX_REGEX_LENGTH = 512
_NM = re.compile(r"^(\d{1,3}):(\d{1,3})$")

def parse_nm(pattern: str) -> tuple[int, int] | None:
    """`"unstructured"` -> None; `"N:M"` -> (N, M): keep at most N nonzeros in each M-group."""
    if pattern == "unstructured":
        return None
    match = _NM.match(pattern)
    if not match:
        raise ValueError("must be 'unstructured' or 'N:M' (e.g. '2:4', '4:8'), "
                         f"with M in [2, {MAX_GROUP}]")
    n, m = int(match.group(1)), int(match.group(2))
    if not (1 <= n < m <= MAX_GROUP):
        raise ValueError(f"N:M = {n}:{m}: need 1 <= N < M <= {MAX_GROUP}")
    return n, m


def _check_pattern(value: str) -> str:
    parse_nm(value)
    return value


def _check_regexes(values: list[str], info: ValidationInfo) -> list[str]:
    """Every pattern must compile with RE2, the engine the job matches with; the error names
    the field, the pattern and what RE2 refuses in it (e.g. lookahead)."""
    for pattern in values:
        why = patterns.refusal(pattern)
        if why is not None:
            raise ValueError(f"{info.field_name}: {pattern[:80]!r} is not a valid regex: {why}")
    return values


def _check_regex_keys(values: dict[str, float], info: ValidationInfo) -> dict[str, float]:
    _check_regexes(list(values), info)
    return values


def _exact_int(value: Any) -> Any:
    """Strict mode still lets `4.0` (and `True`, for a choice containing 1) equal an int
    Literal; a choice of integers takes integers only."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {type(value).__name__}")
    return value


def int_choice(*values: int) -> Any:
    """An integer that must be one of `values`, strictly (`"4"`, `4.0` and `true` are refused);
    the schema is an integer enum."""
    return Annotated[Literal[values], BeforeValidator(_exact_int)]  # type: ignore[valid-type]


Pattern = Annotated[
    str,
    AfterValidator(_check_pattern),
    Field(
        max_length=16,
        description="'unstructured' or 'N:M' (keep N nonzeros in every group of M inputs)",
        json_schema_extra={"examples": ["unstructured", "2:4", "4:8"],
                           "x-string-kind": "nm-pattern"},
    ),
]
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"random seed, in [0, {MAX_SEED}]")]
Regex = Annotated[str, Field(min_length=1, max_length=MAX_REGEX_LENGTH,
                             json_schema_extra={"x-string-kind": "regex"})]
LayerPatterns = Annotated[
    list[Regex], AfterValidator(_check_regexes), Field(max_length=MAX_LAYER_PATTERNS)
] | None


LayerSparsity = Annotated[
    dict[Regex, Sparsity], AfterValidator(_check_regex_keys), Field(max_length=MAX_LAYER_PATTERNS)
] | None
_RE2 = ("RE2 regexes searched anywhere in the full layer name (unanchored, like re.search; "
        "anchor with ^ and $; no lookaround or backreferences)")


class LayerSelection(BaseModel):
    """`include` / `exclude` regexes on full layer names, shared by every step that targets
    layers. A selection that matches no layer fails the job: a step that changes nothing is an
    error, never a silent success."""

    include: LayerPatterns = Field(
        None, description=f"{_RE2}; default: every Linear-like layer inside the transformer "
        "blocks and every expert matrix of a mixture-of-experts block (never embeddings, the "
        "LM head or a router: gate, router and shared_expert_gate are compressed only when a "
        "pattern here names them)")
    exclude: LayerPatterns = Field(
        None, description=f"{_RE2}; the layers they match are removed from the selection")


def one_of_required(*names: str) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` saying "exactly one of these fields" (JSON Schema `oneOf` of
    `required`), so a client generated from GET /methods builds only recipes the config's own
    validator accepts; pair it with a model validator that enforces the same rule."""

    def extra(schema: dict[str, Any]) -> None:
        schema["oneOf"] = [{"required": [name]} for name in names]

    return extra


def _pruning_schema(schema: dict[str, Any]) -> None:
    """The schema says what the validator enforces: unstructured pruning needs `sparsity`."""
    schema["anyOf"] = [
        {"required": ["sparsity"], "properties": {"pattern": {"const": "unstructured"}}},
        {"required": ["pattern"], "properties": {"pattern": {"pattern": _NM.pattern}}},
    ]


class PruningConfig(StepConfig, LayerSelection):
    """Fields every pruning method shares; `sparsity` follows from the pattern when N:M."""

    model_config = ConfigDict(json_schema_extra=_pruning_schema)

    sparsity: Sparsity | None = Field(
        None, description="fraction of weights set to zero, in [0, 1); required for "
        "unstructured pruning, implied by N:M patterns")
    pattern: Pattern = "unstructured"
    layer_sparsity: LayerSparsity = Field(
        None, description="unstructured only: per-layer sparsity, {RE2 regex searched in the "
        "full layer name (unanchored): sparsity in [0, 1)}; the first matching regex wins, "
        "other layers get `sparsity` (non-uniform allocations, e.g. from a goal search)")

    @model_validator(mode="after")
    def _sparsity_matches_pattern(self) -> PruningConfig:
        nm = parse_nm(self.pattern)
        if nm is None and self.sparsity is None:
            raise ValueError("sparsity: required for unstructured pruning, in [0, 1)")
        if self.layer_sparsity and nm is not None:
            raise ValueError(f"layer_sparsity: only for unstructured pruning (pattern "
                             f"{self.pattern} fixes the sparsity)")
        if nm is not None and self.sparsity is not None:
            implied = 1 - nm[0] / nm[1]
            if abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity: pattern {self.pattern} implies {implied:g}; omit sparsity "
                    "or set it to that value"
                )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern)

    @property
    def target_sparsity(self) -> float:
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else float(self.sparsity or 0.0)

    def sparsity_for(self, layer_name: str) -> float:
        """The sparsity of one layer: its first matching `layer_sparsity` regex (RE2, the
        engine validation used), else the step's `target_sparsity`."""
        for pattern, value in (self.layer_sparsity or {}).items():
            if patterns.search(pattern, layer_name):
                return float(value)
        return self.target_sparsity


def rename_deprecated(data: Any, old: str, new: str) -> Any:
    """Accept `old` as a deprecated alias of `new` for one release (with a warning)."""
    if not isinstance(data, dict) or old not in data:
        return data
    if new in data:
        raise ValueError(f"{old}: deprecated alias of {new}; give only {new}")
    warnings.warn(f"{old!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=4)
    data = dict(data)
    data[new] = data.pop(old)
    return data


class TrainingConfig(BaseModel):
    """The optimizer settings every training step shares (PERP, PELA): one loop runs them all
    (`engine.training`). Defaults are the best measured on SmolLM2 (PERP: lr 1e-3 with 10
    warm-up steps closed 86% of wanda 50%'s perplexity gap in 300 steps, 2e-4 closed 78%)."""

    train_steps: int = Field(
        100, ge=0, le=1_000_000, description="optimizer steps, in [0, 1000000]")
    lr: float = Field(1e-3, gt=0, le=1.0, description="AdamW learning rate, in (0, 1]")
    warmup: int = Field(
        10, ge=0, le=1_000_000,
        description="linear warm-up steps (capped at train_steps), in [0, 1000000]")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="learning-rate decay after warm-up (to 0 for linear/cosine)")
    batch_size: int = Field(1, ge=1, le=1024, description="sequences per step, in [1, 1024]")
    seqlen: int = Field(512, ge=8, le=32768, description="tokens per sequence, in [8, 32768]")
    seed: Seed = 0

    @model_validator(mode="before")
    @classmethod
    def _steps_alias(cls, data: Any) -> Any:
        return rename_deprecated(data, "steps", "train_steps")

    @property
    def warmup_steps(self) -> int:
        return min(self.warmup, self.train_steps)


GroupSize = Literal[-1, 32, 64, 128, 256]


class WeightGridConfig(StepConfig, LayerSelection):
    """Integer weight-only quantization of Linear layers, one scale per group of inputs.

    Layers are chosen like every other step's (`include` / `exclude`; default: every Linear in
    the transformer blocks, never embeddings or the LM head). Runs last: only evaluation may
    follow. Pruned zeros stay exactly zero (zero is always on the grid).
    """

    bits: Literal[4, 8] = Field(4, description="bits per weight code: 4 (W4A16) or 8 (W8A16)")
    group_size: GroupSize | None = Field(
        None, description="inputs per scale: 32/64/128/256 (must divide every targeted layer's "
        "in_features, else the job fails naming the layer), -1 one scale per output channel, "
        "unset (auto): 128 where it divides a layer's width, else the largest power of two "
        "below 128 that does (SmolLM2's 576 -> 64), per channel if that is under 32")
    symmetric: bool = Field(
        True, description="true: zero point 0 (what vLLM's Marlin W4A16/W8A16 kernels take "
        "fastest); false: a zero point per group, the grid fitted to each group's min and max "
        "(a finer grid for lopsided groups: llm-compressor's AWQ default). Asymmetric "
        "checkpoints hold packed zero points as vLLM reads them and ask transformers to "
        "decompress while loading (it cannot hold them packed yet), with one group size for "
        "all layers")
    clip_search: bool = Field(
        True, description="choose each group's scale by searching shrink factors of its range "
        "for the least error (GPTQ: weighted by the Hessian diagonal); false: plain min-max")
    scale_dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="dtype the scales are stored in (float16: what vLLM's kernels "
        "take)")

    def weights_after(self) -> WeightForm:
        return "quantized"

    def experts_error(self) -> str | None:
        if self.symmetric:
            return None
        # transformers 5.25's CompressedTensorsDequantize reads weight_packed, weight_scale
        # and weight_shape of each expert, never weight_zero_point
        return ("cannot be asymmetric: transformers 5.25 loads expert matrices without their "
                "zero points; use symmetric: true or add exclude: ['experts']")

    @property
    def label(self) -> str:
        """A short name for tables: `gptq w4 g64`, `rtn w8 ch`, ..."""
        group = "auto" if self.group_size is None else (
            "ch" if self.group_size == -1 else f"g{self.group_size}")
        return f"{self.method} w{self.bits} {group}" + ("" if self.symmetric else " asym")
