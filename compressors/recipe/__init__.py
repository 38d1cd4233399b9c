"""Recipes: validated, torch-free descriptions of a compression job.

`fields` (the step base and shared field types), `text` (the one text-reference type and its
policy) and `protocol` (calibration/evaluation settings) are what method configs build on;
`schema` (the `Recipe` itself, a union over the registry's configs) is loaded on first use,
because the registry imports the method configs, which import `fields`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
from compressors.recipe.text import TextRef

__all__ = ["CalibrationConfig", "EvaluationConfig", "Recipe", "TextRef", "default_recipe",
           "parse_recipe"]

if TYPE_CHECKING:  # pragma: no cover
    from compressors.recipe.schema import Recipe, default_recipe, parse_recipe

_LAZY = {"Recipe", "default_recipe", "parse_recipe"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from compressors.recipe import schema

        return getattr(schema, name)
    raise AttributeError(name)
