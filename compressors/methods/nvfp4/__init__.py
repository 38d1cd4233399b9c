"""The `nvfp4` method: `config` (torch-free settings), `step.run`, its compressed-tensors record
(`checkpoint`) and report section; the FP4 math is `ops.float_quant`."""
