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
from compressors.pruning.magnitude import MagnitudeConfig, run_magnitude
from compressors.pruning.wanda import WandaConfig, run_wanda
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
