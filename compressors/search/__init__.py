"""Goal-driven search: the user states a budget (perplexity, size, latency), the search picks
the recipe.

Torch-free at import (the API validates goals with `Goal`); the search itself
(`run_search`) imports torch on first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressors.search.goal import Goal, parse_goal

if TYPE_CHECKING:  # pragma: no cover
    from compressors.search.run import SearchResult

__all__ = ["Goal", "parse_goal", "run_search"]


def run_search(*args: Any, **kwargs: Any) -> SearchResult:
    """`compressors.search.run.run_search` (imported here on first use: it needs torch)."""
    from compressors.search.run import run_search as run

    return run(*args, **kwargs)
