"""Round-to-nearest (`rtn`): every weight to the nearest code of its group's grid.

Data-free, so it walks the blocks without calibration inputs (`run_blockwise`: in memory,
onloaded or streamed). Same grids, mask handling, report and compressed-tensors checkpoint as
`gptq`; its relative error is the plain Frobenius one (there is no Hessian).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.quantization import (
    QuantRecord,
    grids_for,
    keep_mask,
    skipped_layers,
    target_layers,
)
from compressors.engine.sections import QuantizationSection
from compressors.engine.sequential import BlockContext, run_blockwise
from compressors.methods.rtn.config import RTNConfig
from compressors.ops.hessian import one_thread
from compressors.ops.int_grid import rtn_quantize


def run(model: nn.Module, config: RTNConfig, context: StepContext) -> StepResult:
    targets = target_layers(model, config)
    grids = grids_for(model, targets, config)
    record = QuantRecord(config, metric="frobenius")
    began = time.perf_counter()

    @torch.no_grad()
    def quantize_block(block: BlockContext) -> None:
        with one_thread():  # small elementwise ops: a second thread costs more than it saves
            for name, layer in block.layers.items():
                keep = keep_mask(layer, name, context)
                quantized = rtn_quantize(layer.weight.data, grids[name], keep,
                                         search=config.clip_search)
                record.add(name, layer, quantized, keep)

    context.progress(0.0, f"rounding {len(targets)} layers to {config.label}")
    run_blockwise(model, targets, quantize_block, context.progress)
    seconds = time.perf_counter() - began
    section = record.section(QuantizationSection, context, seconds,
                             skipped_layers(model, targets))
    details = {"scheme": config.label, "quantized_layers": len(targets),
               "bits_per_weight": section.bits_per_weight, "quantize_seconds": seconds}
    return StepResult(details=details, section=section, charts=[record.chart()])
