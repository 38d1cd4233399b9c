"""compressors: prune, retrain, quantize and factorize pretrained models.

Public entry points: `compress` runs a recipe and publishes a checkpoint with its report;
`run` does that for a recipe or a goal (whose search picks the recipe); `load` reads back any
checkpoint this project writes; `parse_recipe` validates a recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressors.version import __version__

__all__ = ["__version__", "compress", "load", "parse_recipe", "run"]

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressors.io.loading import load
    from compressors.pipeline import compress
    from compressors.progress import ProgressCallback
    from compressors.recipe import Recipe, parse_recipe
    from compressors.report.schema import CompressionReport
    from compressors.search.goal import Goal


def run(model: str | Path, spec: Recipe | Goal, out_dir: str | Path, *,
        progress: ProgressCallback | None = None, device: torch.device | str | None = None,
        model_name: str | None = None,
        allowed_text_roots: list[Path] | None = None) -> CompressionReport:
    """Run a recipe, or search for the recipe that best meets a goal, and publish the
    checkpoint and its report into `out_dir`: one door for whatever a job carries, so the
    worker has one path. Here, in the front layer, because the search sits above the
    pipeline (`compress`); a goal's report is its chosen recipe's, with the search's
    section. Both import torch on this first call, never at `import compressors`."""
    from compressors.search.goal import Goal

    if isinstance(spec, Goal):
        from compressors.search import run_search

        return run_search(model, spec, out_dir, progress=progress, device=device,
                          model_name=model_name, allowed_text_roots=allowed_text_roots).report
    from compressors.pipeline import compress

    return compress(model, spec, out_dir, progress=progress, device=device,
                    model_name=model_name, allowed_text_roots=allowed_text_roots)


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
