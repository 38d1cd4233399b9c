"""The `w8a8` method (INT8 W8A8, SmoothQuant): `config` (torch-free settings), `step.run`, its
compressed-tensors record (`checkpoint`), report section and search space. The smoothing math
is `ops.smoothing`, where to fold it `engine.folding`; the weights are rounded by the `gptq`
or `rtn` step (through the registry) and the inputs by `ops.int_activations`."""
