"""The `lowrank` method: `config` (torch-free settings) and `step.run`."""
