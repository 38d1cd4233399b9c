"""The `magnitude` method: `config` (torch-free settings) and `step.run`."""
