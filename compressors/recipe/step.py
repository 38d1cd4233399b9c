"""The contract of a recipe step: every question the service asks a method's settings, each
with its default answer, and what a step holds besides the model.

A method's config (`methods/<name>/config.py`) subclasses `StepConfig` and overrides only the
hooks where its settings say more than the default. The recipe's order and placement rules,
the memory estimate and the submission checks call these methods directly, never through
`getattr`, so this class is the whole contract a newcomer reads: the method's own facts that
do not depend on its settings (stage, report section, formats, search space) are declared
beside the config as its `Method` (`methods/method.py`).

Torch-free: the API validates recipes with these and never loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

WeightForm = Literal["dense", "factorized", "quantized"]
Placement = Literal["auto", "in_memory", "onloaded", "streamed"]


@dataclass(frozen=True)
class MemoryNeeds:
    """What a step holds besides the model and the calibration activations.

    `hessians`: one `in × in` float64 Gram matrix per layer of the current block (SparseGPT,
    GPTQ, whitened SVD), a pass of experts at a time in a mixture-of-experts block;
    `kept_hessians`: a float32 copy of each of them is kept beside its factor (GPTQ).
    `output_grams`: one `out × out` float32 Gram matrix of the loss gradients per targeted
    layer of every block at once, from a backward pass through the whole model (low-rank
    `weighting: fisher`). `teacher`: a second full copy of the model
    (distillation targets).
    `training`: gradients and AdamW state of the trained parameters, plus the activations a
    backward pass keeps; `trained_share`: those parameters as a share of the blocks' weights
    (PERP's adapters and norms ~2%; a low-rank step trains every factor);
    `activations_checkpointed`: the backward pass recomputes activations instead of keeping
    them (gradient checkpointing). `reload`: the model
    is written out and read back once (bitsandbytes): while the new one is built the old one,
    the memory-mapped copy and the new model at `reload_bits` per block weight are all held.
    """

    hessians: bool = False
    kept_hessians: bool = False
    output_grams: bool = False
    teacher: bool = False
    training: bool = False
    trained_share: float = 0.02
    activations_checkpointed: bool = False
    reload: bool = False
    reload_bits: int = 16


class StepConfig(BaseModel):
    """A recipe step. Subclasses set `method: Literal[...]` (the discriminator).

    Strict (`"0.5"` is not a float, `true` is not an int), frozen, and unknown keys are
    errors, so a typo never silently changes a job.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def weights_after(self) -> WeightForm:
        """The form this step leaves the targeted weights in; the recipe's order rules compare
        it with what the next step accepts (`Method.accepts`)."""
        return "dense"

    def memory_needs(self, declared: MemoryNeeds) -> MemoryNeeds:
        """What this step holds, given the method's declared worst case (`Method.memory`):
        a config narrows it where its settings say so (no teacher without training, ...)."""
        return declared

    def needs_causal_lm(self) -> tuple[str, str] | None:
        """(field, why) when these settings need the model's next-token loss; submission
        refuses them on a model whose config declares no LM head, naming the field."""
        return None

    def experts_error(self) -> str | None:
        """Why these settings cannot compress mixture-of-experts expert matrices although the
        method can (the rest of a refusal naming the method and the layer kind, with the way
        out), or None; asked at submission and in the job of a selection that holds them."""
        return None

    def layer_error(self, name: str, out_features: int, in_features: int,
                    device_type: str) -> str | None:
        """Why this step cannot compress the layer `name` of this shape on a `device_type`
        worker ("cpu", "cuda"), or None; submission asks it of every selected layer (shapes
        from the checkpoint's headers), the job again before it changes anything."""
        return None

    def placement_error(self, placement: str) -> str | None:
        """Why this step cannot run with the model held `placement` (in_memory, onloaded,
        streamed), or None; the recipe refuses a forced placement and `auto` skips it."""
        return None


def packed_checkpoint_placement_error(method: str, placement: str) -> str | None:
    """The placement rule of the steps whose published checkpoint only the quantized model in
    memory can write (`fp8`, `nvfp4`, `w8a8`): a streamed run publishes dense weights block by
    block, which cannot say that their activations are quantized or hold packed codes, so
    the report's perplexity would not be the checkpoint's."""
    if placement == "streamed":
        return (f"{method} writes a compressed-tensors checkpoint, which needs the model in "
                "memory or onloaded; use placement in_memory, onloaded or auto")
    return None
