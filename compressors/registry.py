"""The one place that lists every compression method a recipe may name.

Adding a method means writing its module (config + run function) and adding one `Method` line
below; the recipe schema, the CLI's `methods` listing, the API's `/methods`, and the contract
test table all read from here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compressors.lowrank import LowRankConfig
from compressors.pruning.config import MagnitudeConfig, SparseGPTConfig, WandaConfig
from compressors.quantization import QuantizeConfig
from compressors.retraining import PerpConfig
from compressors.step_config import StepConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from compressors.context import StepContext, StepResult


@dataclass(frozen=True)
class Method:
    """A method's config class and where its step function lives.

    The step is named as "module:function" and imported on the first run, so that listing
    methods and validating recipes (the API, the CLI's `methods`) never imports torch.
    """

    name: str
    config: type[StepConfig]
    step: str  # "module:function" of the run function
    stage: str  # the job stage shown while it runs: compressing | retraining | quantizing
    summary: str
    needs_calibration: bool = False

    def run(self, model: nn.Module, config: Any, context: StepContext) -> StepResult:
        module, function = self.step.split(":")
        return getattr(importlib.import_module(module), function)(model, config, context)


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method(
            "magnitude", MagnitudeConfig, "compressors.pruning.magnitude:run_magnitude",
            "compressing",
            "prune the smallest |W| per matrix or per row; unstructured or N:M",
        ),
        Method(
            "wanda", WandaConfig, "compressors.pruning.wanda:run_wanda",
            "compressing",
            "prune by |W|·‖X‖₂ within each output row (Sun et al. 2023); unstructured or N:M",
            needs_calibration=True,
        ),
        Method(
            "sparsegpt", SparseGPTConfig, "compressors.pruning.sparsegpt:run_sparsegpt",
            "compressing",
            "SparseGPT: OBS pruning with weight reconstruction from each layer's Hessian "
            "(Frantar & Alistarh 2023); unstructured or N:M",
            needs_calibration=True,
        ),
        Method(
            "perp", PerpConfig, "compressors.retraining.perp:run_perp",
            "retraining",
            "PERP: retrain biases, norms and mask-keeping LoRA after pruning; sparsity stays exact",
        ),
        Method(
            "quantize", QuantizeConfig, "compressors.quantization.quantize:run_quantize",
            "quantizing",
            "bitsandbytes int8 (LLM.int8) / nf4 / fp4 weights, optional LoRC error correction",
        ),
        Method(
            "lowrank", LowRankConfig, "compressors.lowrank.step:run_lowrank",
            "compressing",
            "PELA: truncated-SVD factorization of Linear layers, trained against the frozen "
            "original (distillation + weight-perturbation regularization)",
            needs_calibration=True,
        ),
    ]
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def method_schemas() -> dict[str, dict[str, Any]]:
    """Each method's parameter JSON schema, with its summary, for the CLI and the API."""
    return {
        name: {"summary": m.summary, "stage": m.stage, "schema": m.config.model_json_schema()}
        for name, m in METHODS.items()
    }
