"""Magnitude, Wanda and SparseGPT on SmolLM2-135M per the evaluation protocol (docs/evaluation.md).

    .venv/bin/python bench/pruning.py                        # all rows: 32x512 calib, 40x512 eval
    .venv/bin/python bench/pruning.py --rows wanda-50,sparsegpt-50 --samples 8 --windows 8

Every row runs in a fresh subprocess so its memory numbers are its own. The library's
functions are called directly (load_model, run_*, perplexity), not `compress()`, so that
saving the checkpoint is not measured. Memory columns:

- *model MB*: the fp32 parameters (the yardstick of the bar "peak under 2x model + one block's
  activations");
- *RSS loaded MB*: resident memory once the model is loaded and the windows are tokenized;
- *prune peak MB*: the peak resident memory while pruning (the kernel's high-water mark is reset
  just before pruning starts where /proc allows it; otherwise it is the process's lifetime peak).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROWS: dict[str, tuple[str, dict]] = {
    "dense": ("dense", {}),
    "magnitude-50": ("magnitude", {"sparsity": 0.5}),
    "wanda-50": ("wanda", {"sparsity": 0.5}),
    "magnitude-2:4": ("magnitude", {"pattern": "2:4"}),
    "wanda-2:4": ("wanda", {"pattern": "2:4"}),
    "wanda-4:8": ("wanda", {"pattern": "4:8"}),
    "sparsegpt-50": ("sparsegpt", {"sparsity": 0.5}),
    "sparsegpt-2:4": ("sparsegpt", {"pattern": "2:4"}),
    "sparsegpt-4:8": ("sparsegpt", {"pattern": "4:8"}),
}


def _prune(model, method: str, params: dict, windows: torch.Tensor, loaded) -> None:
    from compressors.engine.context import StepContext
    from compressors.methods import get_method

    entry = get_method(method)
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration_windows=windows)
    entry.run(model, entry.config(method=method, **params), context)


def child(args: argparse.Namespace) -> None:
    from compressors.engine.windows import calibration_windows, evaluation_windows
    from compressors.evaluate import perplexity
    from compressors.io.loading import load_model
    from compressors.peak_memory import current_rss_bytes, peak_rss_bytes, reset_peak
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    torch.set_num_threads(args.threads)
    method, params = ROWS[args.row]
    loaded = load_model("smollm2-135m")
    model_mb = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20
    windows = calibration_windows(loaded.tokenizer,
                                  CalibrationConfig(samples=args.samples, seqlen=args.seqlen))
    gc.collect()
    rss_loaded = (current_rss_bytes() or 0) / 2**20
    reset = reset_peak()
    start = time.perf_counter()
    if method != "dense":
        _prune(loaded.model, method, params, windows, loaded)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes() / 2**20
    eval_windows = evaluation_windows(loaded.tokenizer, EvaluationConfig(windows=args.windows))
    ppl = perplexity(loaded.model, eval_windows)
    print(json.dumps({"row": args.row, "perplexity": ppl, "seconds": seconds,
                      "model_mb": model_mb, "rss_loaded_mb": rss_loaded,
                      "prune_peak_mb": peak, "peak_reset": reset}))


def _table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"SmolLM2-135M, calibration {args.samples}x{args.seqlen} (SOTU 1900-1999), evaluation "
        f"{args.windows}x512 (SOTU 2000-), fp32, torch {args.threads} threads\n",
        "| row | perplexity | prune s | model MB | RSS loaded MB | prune peak MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['row']} | {r['perplexity']:.3f} | {r['seconds']:.1f} | "
                     f"{r['model_mb']:.0f} | {r['rss_loaded_mb']:.0f} | "
                     f"{r['prune_peak_mb']:.0f} |")
    lines.extend(_comparisons({r["row"]: r for r in results}))
    return "\n".join(lines)


def _comparisons(by_row: dict[str, dict]) -> list[str]:
    """The issue's bars, stated where both rows were run."""
    out = []
    for label in ("50", "2:4", "4:8"):
        ours, base = by_row.get(f"sparsegpt-{label}"), by_row.get(f"wanda-{label}")
        if ours and base:
            verdict = "lower" if ours["perplexity"] < base["perplexity"] else "NOT lower"
            out.append(
                f"\nsparsegpt vs wanda {label}: perplexity {ours['perplexity']:.3f} vs "
                f"{base['perplexity']:.3f} ({verdict}); "
                f"time ratio {ours['seconds'] / base['seconds']:.2f}x (bar: < 3x)"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of: {', '.join(ROWS)}")
    parser.add_argument("--samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    parser.add_argument("--windows", type=int, default=40, help="evaluation windows of 512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the table here after every row")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row and exit
    args = parser.parse_args()
    if args.row:
        child(args)
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    results = []
    for row in rows:
        cmd = [sys.executable, __file__, "--row", row, "--samples", str(args.samples),
               "--seqlen", str(args.seqlen), "--windows", str(args.windows),
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"row {row} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if args.out:  # partial tables survive an interrupted run
            args.out.write_text(_table(results, args) + "\n")
    print(_table(results, args))


if __name__ == "__main__":
    main()
