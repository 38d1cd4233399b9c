"""The registry: the one place that declares every compression method and its facts.

Each method lives in its own folder, `methods/<name>/`, with a torch-free `config.py` and a
`step.py` holding `run(model, config, context) -> StepResult`; its own math, layers and
checkpoint format sit beside them. Adding a method means adding its folder, one `Method` line
below, and one case in the contract table (`tests/contract_cases.py`); the recipe schema, the
order rules, the CLI's `methods`, the API's `/methods`, the checkpoint formats, the layer kinds
and the contract test all read from here.

Everything a module outside the method needs is named as "module:attribute" and imported on
first use, so that listing methods and validating recipes (the API) never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compressors.methods.gptq.config import GPTQConfig
from compressors.methods.lowrank.config import LowRankConfig
from compressors.methods.magnitude.config import MagnitudeConfig
from compressors.methods.perp.config import PerpConfig
from compressors.methods.quantize.config import QuantizeConfig
from compressors.methods.rtn.config import RTNConfig
from compressors.methods.sparsegpt.config import SparseGPTConfig
from compressors.methods.wanda.config import WandaConfig
from compressors.recipe.fields import StepConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from compressors.engine.context import StepContext, StepResult

STAGES = ("compressing", "retraining", "quantizing")


@dataclass(frozen=True)
class MemoryNeeds:
    """What a step holds besides the model and the calibration activations.

    `hessians`: one `in × in` float64 Gram matrix per layer of the current block (SparseGPT,
    GPTQ, whitened SVD). `output_grams`: one `out × out` float32 Gram matrix of the loss
    gradients per targeted layer of every block at once, from a backward pass through the
    whole model (low-rank `weighting: fisher`). `teacher`: a second full copy of the model
    (distillation targets).
    `training`: gradients and AdamW state of the trained parameters, plus the activations a
    backward pass keeps; `trained_share`: those parameters as a share of the blocks' weights
    (PERP's adapters and norms ~2%; a low-rank step trains every factor). `reload`: the model
    is written out and read back once (bitsandbytes): while the new one is built the old one,
    the memory-mapped copy and the new model at `reload_bits` per block weight are all held.
    """

    hessians: bool = False
    output_grams: bool = False
    teacher: bool = False
    training: bool = False
    trained_share: float = 0.02
    reload: bool = False
    reload_bits: int = 16


def import_object(reference: str) -> Any:
    """The object a "module:attribute" reference names."""
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Method:
    """A method and its facts.

    - `stage`: the job stage shown while it runs (one of `STAGES`).
    - `accepts`: the forms of weights it can work on ("dense", "factorized", "quantized");
      each config's `weights_after()` says what form it leaves. The recipe checks the chain.
    - `leaves_hint`: what to tell a user whose next step cannot take what this one leaves.
    - `section`: the top-level report key its step writes (None: only its step entry).
    - `charts`: ids of the charts its step may add to the report (the dashboard draws any).
    - `formats`, `layer_kinds`: "module:attribute" of the checkpoint formats and layer kinds it
      brings (`io.formats`, `engine.layers` collect them from here).
    - `uses_masks`: it must preserve the keep-masks of earlier pruning steps exactly, so they
      record them (`StepContext.masks`).
    - `blockwise`: it touches the model only through `engine.sequential` (one block at a time),
      so it runs onloaded and streamed; other steps need the whole model at once.
    - `memory`: what it holds besides the model, for the memory estimate (`compressors.memory`).
    """

    name: str
    config: type[StepConfig]
    summary: str
    stage: str = "compressing"
    needs_calibration: bool = False
    accepts: frozenset[str] = frozenset({"dense"})
    leaves_hint: str | None = None
    section: str | None = None
    charts: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    layer_kinds: tuple[str, ...] = ()
    uses_masks: bool = False
    blockwise: bool = False
    memory: MemoryNeeds = MemoryNeeds()

    @property
    def step(self) -> str:
        return f"compressors.methods.{self.name}.step:run"

    def run(self, model: nn.Module, config: Any, context: StepContext) -> StepResult:
        return import_object(self.step)(model, config, context)


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("magnitude", MagnitudeConfig,
               "prune the smallest |W| per matrix or per row; unstructured or N:M",
               blockwise=True),
        Method("wanda", WandaConfig,
               "prune by |W|·‖X‖₂ within each output row (Sun et al. 2023); unstructured or N:M",
               needs_calibration=True, blockwise=True),
        Method("sparsegpt", SparseGPTConfig,
               "SparseGPT: OBS pruning with weight reconstruction from each layer's Hessian "
               "(Frantar & Alistarh 2023); unstructured or N:M",
               needs_calibration=True, blockwise=True, memory=MemoryNeeds(hessians=True)),
        Method("perp", PerpConfig,
               "PERP: retrain biases, norms and mask-keeping LoRA after pruning; sparsity "
               "stays exact",
               stage="retraining", section="retraining", charts=("perp-loss",),
               uses_masks=True, memory=MemoryNeeds(training=True)),
        Method("quantize", QuantizeConfig,
               "bitsandbytes int8 (LLM.int8) / nf4 / fp4 weights, optional LoRC error "
               "correction",
               stage="quantizing", section="quantization",
               leaves_hint="quantized weights are final: put quantize last",
               memory=MemoryNeeds(reload=True),
               formats=("compressors.methods.quantize.checkpoint:FORMAT",),
               layer_kinds=("compressors.methods.quantize.layers:LAYER_KIND",)),
        Method("gptq", GPTQConfig,
               "GPTQ: int4/int8 weights in groups from each layer's Hessian, error fed back "
               "column by column (Frantar et al. 2022); compressed-tensors checkpoint",
               stage="quantizing", needs_calibration=True, section="quantization",
               charts=("quantization-error",), uses_masks=True, blockwise=True,
               leaves_hint="quantized weights are final: put gptq last",
               memory=MemoryNeeds(hessians=True),
               formats=("compressors.methods.gptq.checkpoint:FORMAT",)),
        Method("rtn", RTNConfig,
               "round-to-nearest int4/int8 weights in groups (the GPTQ baseline); "
               "compressed-tensors checkpoint",
               stage="quantizing", section="quantization", charts=("quantization-error",),
               uses_masks=True, blockwise=True,
               leaves_hint="quantized weights are final: put rtn last"),
        Method("lowrank", LowRankConfig,
               "low-rank factorization of Linear layers: SVD whitened by each layer's inputs "
               "(SVD-LLM) and weighted by the loss gradients at its outputs (Kronecker-factored "
               "Fisher), block by block, ranks allocated by predicted loss, then PELA training "
               "against the frozen original (distillation + perturbation)",
               needs_calibration=True, section="lowrank",
               charts=("ranks", "lowrank-error", "pela-loss"),
               leaves_hint="its factors are not Linear weights a quantizer can take: set "
               "export_dense: true on the lowrank step to hand dense weights on",
               memory=MemoryNeeds(hessians=True, teacher=True, training=True),
               formats=("compressors.methods.lowrank.checkpoint:FORMAT",),
               layer_kinds=("compressors.methods.lowrank.layers:LAYER_KIND",)),
    ]
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def method_schemas() -> dict[str, dict[str, Any]]:
    """Each method's facts and parameter JSON schema, for the CLI and the API."""
    return {
        name: {
            "summary": m.summary, "stage": m.stage, "accepts": sorted(m.accepts),
            "section": m.section, "charts": list(m.charts), "blockwise": m.blockwise,
            "schema": m.config.model_json_schema(),
        }
        for name, m in METHODS.items()
    }
