"""Adding a method touches one folder, the registry and the contract table, and nothing else.

Shown on a copy of the tree: a toy method `halve` (scale the selected layers' weights by a
factor) gets its folder (its config declaring its `METHOD`, search space included), one import
line in the registry (and its name in the registry's tuple), and one contract case; the recipe
schema, the CLI listing, the whole contract check and the goal-driven search then know it, and
no other file names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIG = '''"""The `halve` step's settings (a toy method for the structure test)."""

from typing import Literal

from pydantic import Field

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import LayerSelection
from compressors.recipe.step import StepConfig


class HalveConfig(StepConfig, LayerSelection):
    method: Literal["halve"] = "halve"
    factor: float = Field(0.5, gt=0.0, lt=1.0, description="scale of the weights, in (0, 1)")


METHOD = Method(
    "halve", HalveConfig, "scale weights",
    search=SearchSpace(("f0.5", "f0.25"), mixed_levels=False,
                       perturb="compressors.methods.halve.search:perturb",
                       step="compressors.methods.halve.search:step",
                       layer_bytes="compressors.methods.halve.search:layer_bytes"))
'''

STEP = '''"""Scale the selected layers' weights."""

from compressors.engine.context import StepResult
from compressors.engine.modules import select_layers, weight_matrix


def run(model, config, context):
    layers = select_layers(model, config.include, config.exclude)
    for layer in layers.values():
        weight_matrix(layer).mul_(config.factor)
    return StepResult(details={"layers": len(layers)})
'''

SEARCH = '''"""How the goal-driven search may scale one layer."""

from compressors.methods.halve.config import HalveConfig
from compressors.recipe.per_layer import layer_selection, only_level


def factor(level):
    return float(level.removeprefix("f"))


def layer_bytes(level, rows, cols, dtype):
    return rows * cols * 2.0  # a toy: it pretends a scaled layer is stored in 16 bits


def perturb(weight, level, input_sq_norms):
    return weight * factor(level)


def step(choices):
    level = only_level(choices)
    if level is None:
        return None
    return HalveConfig(method="halve", factor=factor(level), **layer_selection(choices, level))
'''

# Run in the copied tree: a goal naming the toy validates, and its sensitivity, allocation and
# recipe go through the registry alone (tiny random Llama, random tokens).
SEARCH_CHECK = """
import torch
from tests.conftest import tiny_model
from compressors.recipe import parse_recipe
from compressors.search import Goal
from compressors.search.fronts import families_front, uniform_points
from compressors.search.recipes import recipe_for
from compressors.search.sensitivity import measure

goal = Goal.model_validate({"methods": ["halve"], "max_perplexity_ratio": 1.5,
                            "dtypes": ["float32"]})
windows = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
sens = measure(tiny_model("llama"), windows, goal.shrinking_methods(), list(goal.dtypes))
assert all(sens.proxy[name][("halve", "f0.25")] > sens.proxy[name][("halve", "f0.5")] > 0
           for name in sens.layers)
fronts = families_front(sens, goal)
assert sorted(fronts) == ["float32/halve:f0.25", "float32/halve:f0.5"]
recipe = parse_recipe(recipe_for(uniform_points(fronts, None)[0], goal))
assert recipe.steps[0].method == "halve" and recipe.steps[0].factor in (0.5, 0.25)
print("searched", len(sens.layers), "layers")
"""

CASE = '''    "halve": [
        ContractCase("halve-quarter", [{"method": "halve", "factor": 0.25}],
                     {"method": "halve", "factor": 2.0}, "factor"),
    ],
'''


def _add_method(root: Path) -> None:
    folder = root / "compressors" / "methods" / "halve"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""The toy `halve` method."""\n')
    (folder / "config.py").write_text(CONFIG)
    (folder / "step.py").write_text(STEP)
    (folder / "search.py").write_text(SEARCH)
    registry = root / "compressors" / "methods" / "__init__.py"
    text = registry.read_text()
    anchor = "from compressors.methods.lowrank.config import METHOD as LOWRANK\n"
    assert anchor in text
    text = text.replace(anchor,
                        anchor + "from compressors.methods.halve.config import METHOD as HALVE\n")
    anchor = "GPTQ, RTN, LOWRANK"  # whatever methods follow it in the tuple
    assert anchor in text
    registry.write_text(text.replace(anchor, "GPTQ, RTN, LOWRANK, HALVE"))
    cases = root / "tests" / "contract_cases.py"
    text = cases.read_text()
    anchor = "CASES: dict[str, list[ContractCase]] = {\n"
    cases.write_text(text.replace(anchor, anchor + CASE))


def test_a_new_method_is_one_folder_one_registry_line_one_contract_case(tmp_path):
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("compressors", "tests"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    _add_method(root)

    folder = root / "compressors" / "methods" / "halve"
    naming = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                    if "halve" in p.read_text() and not p.is_relative_to(folder)
                    and p.name != Path(__file__).name)
    assert naming == ["compressors/methods/__init__.py", "tests/contract_cases.py"]

    env = {**os.environ, "PYTHONPATH": str(root)}
    listing = subprocess.run([sys.executable, "-m", "compressors", "methods"], cwd=root,
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "halve: scale weights" in listing.stdout and "factor" in listing.stdout
    contract = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_contract.py",
         "-k", "halve or every_registered"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert contract.returncode == 0, contract.stdout[-3000:]
    assert "4 passed" in contract.stdout  # two architectures, the bad step, the table check
    search = subprocess.run([sys.executable, "-c", SEARCH_CHECK], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert search.returncode == 0, search.stderr[-3000:]
    assert "searched" in search.stdout
