"""The `gptq` method: `config` (torch-free settings), `step.run`, its grid math, sweep and
compressed-tensors checkpoint format."""
