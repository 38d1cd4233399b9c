"""The `wanda` method: `config` (torch-free settings) and `step.run`."""
