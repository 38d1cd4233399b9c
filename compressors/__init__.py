"""compressors: prune, retrain, quantize and factorize pretrained models.

Public entry points: `compress` runs a recipe and publishes a checkpoint with its report;
`load` reads back any checkpoint this project writes; `parse_recipe` validates a recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressors.version import __version__

__all__ = ["__version__", "compress", "load", "parse_recipe"]

if TYPE_CHECKING:  # pragma: no cover
    from compressors.io.loading import load
    from compressors.pipeline import compress
    from compressors.recipe import parse_recipe


def __getattr__(name: str) -> Any:
    """Import lazily: `import compressors` stays cheap for the API process."""
    if name == "compress":
        from compressors.pipeline import compress

        return compress
    if name == "load":
        from compressors.io.loading import load

        return load
    if name == "parse_recipe":
        from compressors.recipe import parse_recipe

        return parse_recipe
    raise AttributeError(name)
