"""The `perp` method: `config` (torch-free settings) and `step.run`."""
