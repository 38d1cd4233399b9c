"""Goal-driven search on SmolLM2-135M at the full protocol, against the README's hand-written
recipes (issue 18's benchmark).

Goals: "perplexity <= 1.1x dense, smallest" and "size <= 50% of fp32, best perplexity". Both
searches share one sensitivity measurement and the dense perplexities (`SearchCache`); each
publishes its chosen recipe with the full evaluation (40 x 512 windows of SOTU 2000-). The
best hand-written recipe under each constraint is int8 (README, bench/quantize.py: the only
row within 1.1x, and the best row under 50% size); it was measured there on 10 windows only,
so this script re-runs it on the same 40 windows (`--no-reference` skips that, and the table
then quotes the README's 10-window numbers).

    .venv/bin/python bench/search.py                      # both goals + the int8 reference
    .venv/bin/python bench/search.py --goals size --verify-windows 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MB = 1e6
# The README's hand-written SmolLM2 rows: (recipe, perplexity, dense perplexity on the same
# windows, windows, size MB). Pruning, PERP and low-rank rows store >= 325 MB and are > 1.1x.
README_ROWS = [
    ("int8 (threshold 6.0)", 21.528, 21.055, 10, 220.3),
    ("nf4", 26.194, 21.055, 10, 173.2),
    ("fp4", 29.465, 21.055, 10, 173.2),
    ("nf4 + double quant", 26.168, 21.055, 10, 168.6),
    ("nf4 + LoRC r32", 25.397, 21.055, 10, 192.8),
    ("wanda 50% + nf4", 60.966, 21.055, 10, 173.2),
    ("sparsegpt 50%", 40.322, 24.343, 40, 538.1),
    ("PELA 1/2 fewer", 1870.39, 21.05, 10, 325.4),
]
GOALS = {
    "size": {"minimize": "size_bytes", "max_perplexity_ratio": 1.1},
    "perplexity": {"minimize": "perplexity", "max_size_ratio": 0.5},
}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--goals", nargs="+", default=list(GOALS), choices=list(GOALS))
    parser.add_argument("--windows", type=int, default=40, help="final evaluation windows")
    parser.add_argument("--verify-windows", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--sens-samples", type=int, default=4)
    parser.add_argument("--sens-seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--model", type=Path, default=None,
                        help="another HF folder (default: the bundled SmolLM2-135M)")
    return parser.parse_args()


def _reference_int8(source: Path, windows: int, work: Path) -> dict[str, Any]:
    from compressors import compress, parse_recipe

    recipe = parse_recipe({"steps": [{"method": "quantize", "bits": 8}],
                           "evaluation": {"windows": windows}})
    report = compress(source, recipe, work / "int8", overwrite=True).to_json()
    return {"perplexity": report["metrics"]["after"]["perplexity"],
            "dense": report["metrics"]["before"]["perplexity"],
            "size_bytes": report["metrics"]["after"]["size_bytes"],
            "seconds": report["seconds_total"]}


def _goal(name: str, args: argparse.Namespace):
    from compressors.search import Goal

    return Goal.model_validate({
        **GOALS[name], "verify_windows": args.verify_windows, "candidates": args.candidates,
        "sensitivity": {"samples": args.sens_samples, "seqlen": args.sens_seqlen},
        "evaluation": {"windows": args.windows}})


def _candidate_table(name: str, search: dict[str, Any]) -> list[str]:
    verify = search["goal"]["verify_windows"]
    rows = [f"\nCandidates of goal '{name}' (verified on the first {verify} windows; ratios "
            "to the dense fp32 model on the same windows)\n",
            "| # | family | round | predicted ratio | measured ratio | predicted MB | "
            "measured MB | meets | full-eval ratio |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for index, c in enumerate(search["candidates"]):
        m, f = c["measured"] or {}, c.get("final") or {}
        full = f"{f['perplexity_ratio']:.4f}" if f.get("perplexity_ratio") else "-"
        p = c["predicted"]
        rows.append(f"| {index + 1} | {c['family']} | {c['round']} | "
                    f"{p['perplexity_ratio']:.4f} | {m.get('perplexity_ratio', 0):.4f} | "
                    f"{p['size_bytes'] / MB:.1f} | {m.get('size_bytes', 0) / MB:.1f} | "
                    f"{m.get('meets')} | {full} |")
    return rows


def main() -> None:
    args = _arguments()
    torch.set_num_threads(args.threads)
    from compressors.assets import smollm2_path
    from compressors.search.run import GoalNotMet, SearchCache, run_search

    source = args.model or smollm2_path()
    cache = SearchCache()
    lines: list[str] = []
    results: dict[str, Any] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        for name in args.goals:
            goal = _goal(name, args)
            start = time.perf_counter()
            try:
                result = run_search(source, goal, work / f"goal-{name}", overwrite=True,
                                    cache=cache, progress=_printer(name))
                search, report = result.search, result.report
                chosen = search["candidates"][search["chosen"]]["final"]
                results[name] = {"final": chosen, "recipe": result.recipe,
                                 "seconds": time.perf_counter() - start,
                                 "pareto_svg": (work / f"goal-{name}" / "pareto.svg").is_file()}
                lines += _candidate_table(name, search)
                lines.append(f"\nchosen recipe ({name}): {json.dumps(result.recipe['steps'])}, "
                             f"dtype {result.recipe['dtype']}")
                keep = Path("bench/results") / f"search-{name}"
                keep.mkdir(parents=True, exist_ok=True)
                svg = (work / f"goal-{name}" / "pareto.svg").read_bytes()
                (keep / "pareto.svg").write_bytes(svg)
                (keep / "search.json").write_text(json.dumps(report["search"], indent=1))
            except GoalNotMet as error:
                results[name] = {"error": str(error), "seconds": time.perf_counter() - start}
                lines += _candidate_table(name, error.search)
                lines.append(f"\n{name}: {error}")
        reference = None if args.no_reference else _reference_int8(source, args.windows, work)
    lines = _headline(results, reference, cache, args) + lines
    lines.append(f"\ntotal {time.perf_counter() - began:.0f} s; load average "
                 f"{os.getloadavg()}; torch threads {torch.get_num_threads()}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


def _printer(name: str):
    last = [0.0]

    def show(event) -> None:
        now = time.perf_counter()
        if now - last[0] > 20:
            last[0] = now
            print(f"[{name}] {event.progress:5.1%} {event.stage}: {event.message}", flush=True)

    return show


def _headline(results: dict[str, Any], reference: dict[str, Any] | None, cache,
              args: argparse.Namespace) -> list[str]:
    dense = cache.dense.get(args.windows)
    lines = [f"SmolLM2-135M, evaluation {args.windows} x 512 (SOTU 2000-), sensitivity "
             f"{args.sens_samples} x {args.sens_seqlen} calibration windows, verification on "
             f"{args.verify_windows} windows; dense fp32 perplexity {dense}; load average "
             f"{os.getloadavg()}\n",
             "| goal | searched perplexity | ratio | size MB | search s | best hand-written "
             "(README) | its ratio | its MB | bar met |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    ref_ratio = (reference["perplexity"] / reference["dense"] if reference
                 else README_ROWS[0][1] / README_ROWS[0][2])
    ref_mb = reference["size_bytes"] / MB if reference else README_ROWS[0][4]
    ref_label = (f"int8, re-run on {args.windows} windows" if reference
                 else "int8 (README, 10 windows)")
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | not met | - | - | {result['seconds']:.0f} | {ref_label} | "
                         f"{ref_ratio:.4f} | {ref_mb:.1f} | no |")
            continue
        final = result["final"]
        mb, ratio = final["size_bytes"] / MB, final["perplexity_ratio"]
        # size goal: within 1.1x and smaller than int8; perplexity goal: the search already
        # checked the 50% size limit, so the bar is beating int8's ratio
        met = (ratio <= 1.1 and mb < ref_mb) if name == "size" else ratio < ref_ratio
        lines.append(f"| {name} | {final['perplexity']:.3f} | {ratio:.4f} | {mb:.1f} | "
                     f"{result['seconds']:.0f} | {ref_label} | {ref_ratio:.4f} | {ref_mb:.1f} | "
                     f"{'yes' if met else 'no'} |")
    return lines


if __name__ == "__main__":
    main()
