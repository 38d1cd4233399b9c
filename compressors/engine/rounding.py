"""Rounding weights with a registered weight-grid quantizer (`gptq`, `rtn`) as the second half
of another step (`w8a8`, `awq`): those steps first rescale the model (scales folded into the
ops before the layers, the function unchanged), then hand it to the quantizer exactly as a
recipe step would, through the registry, so GPTQ's Hessians, grids, pruned-zero checks,
mixture-of-experts handling and compressed-tensors records are the very ones of `gptq` and
`rtn`. The quantizer's `quantization` section becomes the caller's, with its own keys added.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.sections import QuantizationSection
from compressors.methods import get_method

Section = TypeVar("Section", bound=QuantizationSection)


def round_weights(model: nn.Module, quantizer: str, fields: dict[str, Any],
                  context: StepContext, done: float) -> StepResult:
    """Run the registered step `quantizer` with `fields` (its config's, validated as a
    recipe's would be) on `model`; its progress is reported from `done` (the share of the
    caller's work already behind it) to 1."""
    method = get_method(quantizer)
    config = method.config.model_validate({"method": quantizer, **fields})
    if method.needs_calibration:
        context.calibration_tokens()  # tokenized once, shared with the caller's context

    def progress(fraction: float, message: str) -> None:
        context.progress(done + (1 - done) * fraction, f"{quantizer}: {message}")

    return method.run(model, config, replace(context, progress=progress))


def merged_section(kind: type[Section], inner: QuantizationSection | None,
                   **fields: Any) -> Section:
    """The caller's section (`kind`, a `QuantizationSection` with keys of its own) from the
    quantizer's: its shared keys as they are, unless `fields` overrides them (scheme, method,
    format); the keys of the quantizer's own section type (GPTQ's dampening, Cholesky
    fallbacks, ...) under `quantizer_details`."""
    if inner is None:
        raise ValueError("the quantizer wrote no section")
    data = inner.model_dump()
    shared = {k: data[k] for k in QuantizationSection.model_fields if k in data}
    details = {k: v for k, v in data.items() if k not in QuantizationSection.model_fields}
    return kind(**{**shared, "quantizer_details": details, **fields})
