"""The `sparsegpt` method: `config` (torch-free settings) and `step.run`."""
