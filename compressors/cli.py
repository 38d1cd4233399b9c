"""Command line: `python -m compressors run|methods` (`__main__` calls `main`).

    python -m compressors run --model smollm2-135m --recipe recipe.yaml --out out/
    python -m compressors methods
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError

from compressors.progress import ProgressEvent


class StageBars:
    """One tqdm bar per stage (0-100%), a new bar whenever the stage changes."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar: Any = None
        self.stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            self.bar = self._tqdm(total=100, desc=f"{event.stage:<11}", unit="%",
                                  bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.n = round(event.stage_progress * 100)
        self.bar.set_postfix_str(event.message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(args: argparse.Namespace) -> int:
    from compressors.pipeline import compress
    from compressors.recipe import default_recipe, parse_recipe
    from compressors.report.card import format_table

    try:
        recipe = parse_recipe(args.recipe) if args.recipe else default_recipe()
    except ValidationError as error:
        print(f"invalid recipe:\n{error}", file=sys.stderr)
        return 2
    bars = StageBars()
    try:
        report = compress(args.model, recipe, args.out, progress=bars,
                          overwrite=args.overwrite, device=args.device)
    finally:
        bars.close()
    print(format_table(report.metrics))
    print(f"sparsity of pruned layers: {report.sparsity.total:.4f}")
    print(f"seconds: {report.seconds_total:.1f}   "
          f"peak RSS: {report.peak_memory_bytes / 1e6:.0f} MB   out: {args.out}")
    print(f"checkpoint: {report.checkpoint.format}. {report.checkpoint.how_to_load}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from compressors.search import parse_goal, run_search
    from compressors.search.run import GoalNotMet

    try:
        goal = parse_goal(args.goal)
    except ValidationError as error:
        print(f"invalid goal:\n{error}", file=sys.stderr)
        return 2
    bars = StageBars()
    try:
        result = run_search(args.model, goal, args.out, progress=bars,
                            overwrite=args.overwrite, device=args.device)
    except GoalNotMet as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    finally:
        bars.close()
    final = result.search.chosen_final()
    print(f"chosen recipe (re-submit as is: {args.out}/recipe.json):")
    print(json.dumps(result.recipe, indent=2))
    if final is not None and final.perplexity and final.perplexity_ratio and final.size_bytes:
        print(f"perplexity {final.perplexity:.3f} ({final.perplexity_ratio:.4f}x dense), "
              f"size {final.size_bytes / 1e6:.1f} MB; search {result.search.seconds:.0f} s; "
              f"Pareto plot: {args.out}/pareto.svg")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from compressors.methods import method_schemas

    schemas = method_schemas()
    if args.json:
        print(json.dumps(schemas, indent=2))
        return 0
    for name, info in schemas.items():
        print(f"{name}: {info['summary']}")
        for field, spec in info["schema"].get("properties", {}).items():
            if field == "method":
                continue
            print(f"    {field:<14} {_describe(spec)}")
    return 0


def _describe(spec: dict[str, Any]) -> str:
    """One line: type, allowed range or choices, default, description."""
    options = spec.get("anyOf", [spec])
    types = [o.get("type", "enum" if "enum" in o else "?") for o in options]
    parts = ["|".join(t for t in types if t)]
    for option in options:
        if "enum" in option:
            parts.append("one of " + ", ".join(map(str, option["enum"])))
        low = option.get("minimum", option.get("exclusiveMinimum"))
        high = option.get("maximum", option.get("exclusiveMaximum"))
        if low is not None or high is not None:
            left = "[" if "minimum" in option else "("
            right = "]" if "maximum" in option else ")"
            parts.append(f"range {left}{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}{right}")
    if "default" in spec:
        parts.append(f"default {json.dumps(spec['default'])}")
    if "description" in spec:
        parts.append(f"— {spec['description']}")
    return "  ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compressors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="compress a model with a recipe")
    run.add_argument("--model", default="smollm2-135m",
                     help="bundled name, HF folder or .gguf file (default: smollm2-135m)")
    run.add_argument("--recipe", help="recipe file (.json/.yaml) or inline JSON; "
                     "default: wanda 50%%")
    run.add_argument("--out", required=True, help="output folder (published atomically)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    run.set_defaults(func=_run)
    search = sub.add_parser("search", help="search the recipe that best meets a goal")
    search.add_argument("--model", default="smollm2-135m", help="as for run")
    search.add_argument("--goal", required=True, help="goal file (.json) or inline JSON, e.g. "
                        '\'{"minimize": "size_bytes", "max_perplexity_ratio": 1.1}\'')
    search.add_argument("--out", required=True, help="output folder (published atomically)")
    search.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    search.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    search.set_defaults(func=_search)
    methods = sub.add_parser("methods", help="list methods with their parameters")
    methods.add_argument("--json", action="store_true", help="print the JSON schemas")
    methods.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our bars say what is happening; theirs only add noise
    try:
        return args.func(args)
    except (ValueError, FileExistsError, KeyError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
