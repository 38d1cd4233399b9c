"""The `rtn` method (round-to-nearest): `config` and `step.run`; grids and format are gptq's."""
