"""The `quantize` method: `config` (torch-free settings) and `step.run`."""
