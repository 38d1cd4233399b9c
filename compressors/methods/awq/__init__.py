"""The `awq` method: `config` (torch-free settings), `step.run`, its scale search (`scales`),
report section and search space. The scale math is `ops.smoothing`, where to fold it
`engine.folding`; the scaled weights are rounded by the `rtn` or `gptq` step (through the
registry) into their compressed-tensors pack-quantized checkpoint."""
