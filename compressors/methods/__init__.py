"""The registry: every compression method, collected from its own folder.

Each method lives in `methods/<name>/`: a torch-free `config.py` holding its settings (a
`recipe.step.StepConfig`, whose hooks answer what depends on them) and, at its bottom, its
`METHOD`, the facts they do not change (`methods.method.Method`: stage, report section, charts,
checkpoint formats, layer kinds, memory needs, search space); a `step.py` holding
`run(model, config, context) -> StepResult`; and its own math, layers and checkpoint format.
Adding a method means adding its folder, one import line below, and one case in the contract
table (`tests/contract_cases.py`); the recipe schema, the order rules, the CLI's `methods`,
the API's `/methods`, the checkpoint formats, the layer kinds, the search and the contract
test all read from here. A method's other modules are its own: nothing outside its folder
imports them (`tests/test_import_direction.py`); a config another part names as a type (the
search's recovery step is a `PerpConfig`) is exported here.
"""

from __future__ import annotations

from typing import Any

from compressors.methods.awq.config import METHOD as AWQ
from compressors.methods.fp8.config import METHOD as FP8
from compressors.methods.gptq.config import METHOD as GPTQ
from compressors.methods.lowrank.config import METHOD as LOWRANK
from compressors.methods.magnitude.config import METHOD as MAGNITUDE
from compressors.methods.method import STAGES, Method, SearchSpace, import_object
from compressors.methods.nvfp4.config import METHOD as NVFP4
from compressors.methods.perp.config import METHOD as PERP
from compressors.methods.perp.config import PerpConfig
from compressors.methods.quantize.config import METHOD as QUANTIZE
from compressors.methods.rtn.config import METHOD as RTN
from compressors.methods.sparsegpt.config import METHOD as SPARSEGPT
from compressors.methods.w8a8.config import METHOD as W8A8
from compressors.methods.wanda.config import METHOD as WANDA

__all__ = ["METHODS", "STAGES", "Method", "PerpConfig", "SearchSpace", "get_method",
           "import_object", "method_schemas", "search_spaces"]

METHODS: dict[str, Method] = {method.name: method for method in (
    MAGNITUDE, WANDA, SPARSEGPT, PERP, QUANTIZE, GPTQ, RTN, LOWRANK, W8A8, AWQ, FP8, NVFP4)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def search_spaces() -> dict[str, SearchSpace]:
    """The methods the goal-driven search may use, in registry order, with how it may use
    each (`Method.search`): what a goal's `methods` is validated against."""
    return {name: m.search for name, m in METHODS.items() if m.search is not None}


def method_schemas() -> dict[str, dict[str, Any]]:
    """Each method's facts and parameter JSON schema, for the CLI and the API."""
    return {
        name: {
            "summary": m.summary, "stage": m.stage, "accepts": sorted(m.accepts),
            "section": m.section, "charts": list(m.charts), "blockwise": m.blockwise,
            "schema": m.config.model_json_schema(),
        }
        for name, m in METHODS.items()
    }
