"""PERP on SmolLM2-135M: perplexity after pruning and after each retraining mode.

Rows: magnitude 50%, wanda 50%, wanda 2:4 (protocol calibration for wanda). Columns: perplexity
of the dense model, of the pruned model, and after biases+norms, masklora, scalelora (objective
lm) and masklora with the reconstruct objective; each on the evaluation text (SOTU 2000-) and,
after the slash, on the second text (the Python language reference, `pydoc:topics`), plus the
trainable share of the model, training seconds and peak RSS of the process that trained.

Each row prunes once in this process and saves the pruned model; every mode then runs in its own
subprocess that loads that checkpoint, so its peak RSS is its own. Masks are checked exactly.

    .venv/bin/python bench/perp.py                     # the issue's budget: 300 x 512 tokens
    .venv/bin/python bench/perp.py --steps 12 --seqlen 256 --eval-windows 8   # what fits today

Prints a markdown table; `--out FILE` also writes it with the settings that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS = {
    "magnitude 50%": {"method": "magnitude", "sparsity": 0.5},
    "wanda 50%": {"method": "wanda", "sparsity": 0.5},
    "wanda 2:4": {"method": "wanda", "pattern": "2:4"},
}
MODES = {
    "norms": {"mode": "norms"},
    "masklora": {"mode": "masklora"},
    "scalelora": {"mode": "scalelora"},
    "reconstruct": {"mode": "masklora", "objective": "reconstruct"},
}


def _settings(args: argparse.Namespace) -> dict:
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    return {
        "calibration": CalibrationConfig(samples=args.calib_samples,
                                         seqlen=args.calib_seqlen).model_dump(),
        "evaluation": EvaluationConfig(windows=args.eval_windows,
                                       seqlen=args.eval_seqlen).model_dump(),
    }


def _context(source: Path, tokenizer, settings: dict):
    from compressors.engine.context import StepContext
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    return StepContext(model_source=source, tokenizer=tokenizer,
                       calibration=CalibrationConfig(**settings["calibration"]),
                       evaluation=EvaluationConfig(**settings["evaluation"]))


def _ppl_pair(model, context, second_text: str) -> tuple[float, float]:
    from compressors.engine.windows import text_sequential_windows
    from compressors.evaluate import perplexity

    second = text_sequential_windows(context.tokenizer, second_text, context.evaluation.windows,
                                     context.evaluation.seqlen)
    return perplexity(model, context.evaluation_tokens()), perplexity(model, second)


def run_mode(job: dict) -> dict:
    """In a subprocess: load the pruned checkpoint, retrain, check masks, measure."""
    from compressors.io.loading import load_model
    from compressors.methods.perp.config import PerpConfig
    from compressors.methods.perp.step import current_masks
    from compressors.methods.perp.step import run as run_perp
    from compressors.peak_memory import peak_rss_bytes

    loaded = load_model(job["pruned"])
    context = _context(Path(job["dense"]), loaded.tokenizer, job["settings"])
    masks = current_masks(loaded.model, context)
    config = PerpConfig(**job["perp"], evaluate=False)
    result = run_perp(loaded.model, config, context)
    after = current_masks(loaded.model, context)
    assert all(torch.equal(masks[n], after[n]) for n in masks), "masks changed"
    ppl, second = _ppl_pair(loaded.model, context, config.second_text)
    section = result.section.model_dump(mode="json")
    train = section["train"]
    return {"ppl": ppl, "second": second, "trainable_percent": section["trainable_percent"],
            "seconds": section["seconds"], "steps": section["steps"],
            "tokens": section["tokens"], "first_loss": train["loss_first"]["total"],
            "last_loss": train["loss_last"]["total"], "peak_rss": peak_rss_bytes()}


def _spawn_mode(job: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, __file__, "--_mode-job", json.dumps(job)], env=env, text=True,
        capture_output=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mode {job['perp']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _perp_settings(args: argparse.Namespace, mode: str) -> dict:
    common = {"rank": args.rank, "alpha": args.alpha, "lr": args.lr, "warmup": args.warmup,
              "schedule": args.schedule, "seqlen": args.seqlen, "seed": 0}
    if mode == "reconstruct":
        return {**MODES[mode], **common, "steps": args.recon_steps,
                "batch_size": args.recon_batch, "samples": args.recon_samples}
    return {**MODES[mode], **common, "train_steps": args.steps, "batch_size": args.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=300, help="lm optimizer steps")
    parser.add_argument("--seqlen", type=int, default=512, help="training tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--recon-steps", type=int, default=64, help="reconstruct steps per block")
    parser.add_argument("--recon-samples", type=int, default=32)
    parser.add_argument("--recon-batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--_mode-job", dest="mode_job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode_job:
        print(json.dumps(run_mode(json.loads(args.mode_job))))
        return

    from compressors.assets import smollm2_path
    from compressors.io.loading import load_model, save_checkpoint
    from compressors.methods import get_method
    from compressors.peak_memory import peak_rss_bytes
    from compressors.recipe import parse_recipe

    started = time.perf_counter()
    settings = _settings(args)
    dense_path = smollm2_path()
    loaded = load_model(dense_path)
    context = _context(dense_path, loaded.tokenizer, settings)
    dense_ppl = _ppl_pair(loaded.model, context, "pydoc:topics")
    print(f"dense: {dense_ppl[0]:.2f} / {dense_ppl[1]:.2f}", file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="perp-bench-") as tmp:
        for row in args.rows:
            model = load_model(dense_path).model
            step = parse_recipe({"steps": [ROWS[row]], **settings}).steps[0]
            began = time.perf_counter()
            get_method(step.method).run(model, step, context)
            prune_seconds = time.perf_counter() - began
            pruned_ppl = _ppl_pair(model, context, "pydoc:topics")
            folder = Path(tmp) / row.replace(" ", "-").replace("%", "").replace(":", "-")
            save_checkpoint(model, loaded.tokenizer, folder)
            del model
            print(f"{row}: pruned {pruned_ppl[0]:.2f} / {pruned_ppl[1]:.2f} "
                  f"({prune_seconds:.0f} s)", file=sys.stderr, flush=True)
            cells = {}
            for mode in args.modes:
                job = {"pruned": str(folder), "dense": str(dense_path), "settings": settings,
                       "perp": _perp_settings(args, mode)}
                cells[mode] = _spawn_mode(job, args.threads)
                print(f"  {mode}: {json.dumps(cells[mode])}", file=sys.stderr, flush=True)
            rows.append((row, pruned_ppl, cells))
            if args.out:  # a partial table survives an interrupted run
                args.out.write_text(_table(dense_ppl, rows, args.modes) + "\n(partial)\n",
                                    encoding="utf-8")
    table = _table(dense_ppl, rows, args.modes)
    footer = (f"\nsettings: {json.dumps(vars(args), default=str)}\n"
              f"total {time.perf_counter() - started:.0f} s; bench process peak RSS "
              f"{peak_rss_bytes() / 2**30:.2f} GiB; torch threads {args.threads}\n")
    print(table + footer)
    if args.out:
        args.out.write_text(table + footer, encoding="utf-8")


def _table(dense: tuple[float, float], rows: list, modes: list[str]) -> str:
    head = ["pruning", "ppl dense", "ppl pruned"] + [f"after {m}" for m in modes]
    head += ["trainable % (" + "/".join(modes) + ")", "seconds (" + "/".join(modes) + ")",
             "peak RSS GiB (" + "/".join(modes) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row, pruned, cells in rows:
        values = [row, f"{dense[0]:.2f} / {dense[1]:.2f}", f"{pruned[0]:.2f} / {pruned[1]:.2f}"]
        values += [f"{cells[m]['ppl']:.2f} / {cells[m]['second']:.2f}" for m in modes]
        values.append(" / ".join(f"{cells[m]['trainable_percent']:.2f}" for m in modes))
        values.append(" / ".join(f"{cells[m]['seconds']:.0f}" for m in modes))
        values.append(" / ".join(f"{cells[m]['peak_rss'] / 2**30:.2f}" for m in modes))
        lines.append("| " + " | ".join(values) + " |")
    lines.append("\nperplexity cells: evaluation text (SOTU 2000-) / second text (pydoc:topics)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
