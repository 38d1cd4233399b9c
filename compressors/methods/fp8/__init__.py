"""The `fp8` method: `config` (torch-free settings), `step.run`, its compressed-tensors record
(`checkpoint`), report section and search space; the FP8 math is `ops.float_quant`."""
