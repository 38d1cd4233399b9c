"""The one place that lists every compression method a recipe may name.

Adding a method means writing its module (config + run function) and adding one `Method` line
below; the recipe schema, the CLI's `methods` listing, the API's `/methods`, and the contract
test table all read from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from compressors.context import StepContext, StepResult
from compressors.lowrank import LowRankConfig, run_lowrank
from compressors.pruning.magnitude import MagnitudeConfig, run_magnitude
from compressors.pruning.sparsegpt import SparseGPTConfig, run_sparsegpt
from compressors.pruning.wanda import WandaConfig, run_wanda
from compressors.quantization import QuantizeConfig, run_quantize
from compressors.retraining import PerpConfig, run_perp
from compressors.step_config import StepConfig

RunFn = Callable[[nn.Module, Any, StepContext], StepResult]


@dataclass(frozen=True)
class Method:
    name: str
    config: type[StepConfig]
    run: RunFn
    stage: str  # the job stage shown while it runs: compressing | retraining | quantizing
    summary: str
    needs_calibration: bool = False


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method(
            "magnitude", MagnitudeConfig, run_magnitude, "compressing",
            "prune the smallest |W| per matrix or per row; unstructured or N:M",
        ),
        Method(
            "wanda", WandaConfig, run_wanda, "compressing",
            "prune by |W|·‖X‖₂ within each output row (Sun et al. 2023); unstructured or N:M",
            needs_calibration=True,
        ),
        Method(
            "sparsegpt", SparseGPTConfig, run_sparsegpt, "compressing",
            "SparseGPT: OBS pruning with weight reconstruction from each layer's Hessian "
            "(Frantar & Alistarh 2023); unstructured or N:M",
            needs_calibration=True,
        ),
        Method(
            "perp", PerpConfig, run_perp, "retraining",
            "PERP: retrain biases, norms and mask-keeping LoRA after pruning; sparsity stays exact",
        ),
        Method(
            "quantize", QuantizeConfig, run_quantize, "quantizing",
            "bitsandbytes int8 (LLM.int8) / nf4 / fp4 weights, optional LoRC error correction",
        ),
        Method(
            "lowrank", LowRankConfig, run_lowrank, "compressing",
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
