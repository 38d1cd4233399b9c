"""PELA low-rank factorization on SmolLM2-135M (per the DESIGN.md protocol) and on MiniLM.

For each parameter reduction of the factorized layers (1/3 and 1/2 fewer), one process
loads the model, factorizes every Linear in the blocks by truncated SVD, measures perplexity
(SVD only), trains the factors with PELA for `--steps` steps, measures again, saves the
factorized checkpoint, reloads it with `compressors.load` and checks the logits are identical.
Each configuration runs in its own process so peak RSS is its own.

    .venv/bin/python bench/lowrank.py                       # protocol: 32x512 calib, 40x512 eval
    .venv/bin/python bench/lowrank.py --steps 40 --seqlen 256 --eval-windows 40
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

KEEPS = {"1/3 fewer": 0.667, "1/2 fewer": 0.5}


def _threads(count: int) -> None:
    torch.set_num_threads(count)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_dense(args: argparse.Namespace) -> dict:
    from compressors.calibration import EvaluationConfig, evaluation_windows
    from compressors.evaluate import peak_rss_bytes, perplexity
    from compressors.model_io import load_model, size_on_disk

    loaded = load_model("smollm2-135m")
    windows = evaluation_windows(loaded.tokenizer, EvaluationConfig(windows=args.eval_windows))
    began = time.perf_counter()
    ppl = perplexity(loaded.model, windows)
    return {"perplexity": ppl, "size_bytes": size_on_disk(loaded.source),
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "seconds": time.perf_counter() - began, "peak_rss_bytes": peak_rss_bytes()}


def run_one(args: argparse.Namespace, model_name: str, keep: float) -> dict:
    """Factorize + train one configuration; everything the tables need, as JSON."""
    import compressors
    from compressors.calibration import CalibrationConfig, EvaluationConfig
    from compressors.context import StepContext
    from compressors.evaluate import peak_rss_bytes
    from compressors.lowrank import LowRankConfig
    from compressors.lowrank.step import run_lowrank
    from compressors.model_io import load_model, save_checkpoint, size_on_disk

    loaded = load_model(model_name)
    encoder = not loaded.is_causal_lm
    context = StepContext(
        model_source=loaded.source, tokenizer=loaded.tokenizer,
        calibration=CalibrationConfig(samples=args.calib_samples, seqlen=args.calib_seqlen),
        evaluation=EvaluationConfig(windows=args.eval_windows),
        progress=lambda f, m: print(f"  {time.strftime('%H:%M:%S')} [{f:5.1%}] {m}",
                                    file=sys.stderr, flush=True)
        if not m.startswith("step") or m.split()[1].split("/")[0] in args.log_steps else None,
    )
    steps = args.encoder_steps if encoder else args.steps
    config = LowRankConfig(
        target_params=keep, steps=steps, lr=args.lr, batch_size=args.batch_size,
        seqlen=args.encoder_seqlen if encoder else args.seqlen,
        lm_weight=0.0 if encoder else args.lm_weight, distill_alpha=args.alpha,
        perturbation_lambda=args.lam, warmup=min(steps, args.warmup),
    )
    began = time.perf_counter()
    result = run_lowrank(loaded.model, config, context)
    seconds = time.perf_counter() - began
    section = result.sections["lowrank"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        save_checkpoint(loaded.model, loaded.tokenizer, out)
        size = size_on_disk(out)
        reloaded = compressors.load(out)
        ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            key = "last_hidden_state" if encoder else "logits"
            same = torch.equal(getattr(loaded.model(input_ids=ids), key),
                               getattr(reloaded(input_ids=ids), key))
    dense_size = size_on_disk(loaded.source)
    section.pop("ranks")
    section.pop("train", None)
    return {"keep": keep, "steps": steps, "seconds": seconds, "size_bytes": size,
            "dense_size_bytes": dense_size, "reload_identical": same,
            "peak_rss_bytes": peak_rss_bytes(), **section}


def _children(*names: str) -> list[dict]:
    """Run one child process per name, all at once; their JSON results in order."""
    running = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--child", name],
                                stdout=subprocess.PIPE, text=True) for name in names]
    results = []
    for name, process in zip(names, running, strict=True):
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"child {name} failed with exit code {process.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="PELA steps on SmolLM2")
    parser.add_argument("--encoder-steps", type=int, default=60, help="PELA steps on MiniLM")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=256, help="training tokens per window")
    parser.add_argument("--encoder-seqlen", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--only", choices=["smollm2", "minilm"], default=None)
    parser.add_argument("--log-steps", nargs="*", default=["1", "10", "20", "40", "60", "100"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per child; two children run at once")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _threads(args.threads)
    if args.child:
        kind, _, keep = args.child.partition(":")
        result = run_dense(args) if kind == "dense" else run_one(
            args, "smollm2-135m" if kind == "smollm2" else "all-minilm-l6-v2", float(keep))
        print(json.dumps(result))
        return

    print(f"# PELA low-rank factorization\n\nsteps={args.steps} (MiniLM {args.encoder_steps}), "
          f"batch={args.batch_size}, seqlen={args.seqlen}, lr={args.lr}, warmup={args.warmup}, "
          f"lm_weight={args.lm_weight}, alpha={args.alpha}, lambda={args.lam}; calibration "
          f"{args.calib_samples}x{args.calib_seqlen}, evaluation {args.eval_windows}x512; "
          f"torch threads={args.threads} per process, the two reductions run as two "
          f"processes at once; {os.cpu_count()} CPUs visible\n", flush=True)
    if args.only in (None, "smollm2"):
        results = _children(*[f"smollm2:{keep}" for keep in KEEPS.values()])
        rows = dict(zip(KEEPS, results, strict=True))
        dense = _children("dense:")[0]
        first = next(iter(rows.values()))
        print(f"## SmolLM2-135M\n\nFactorized layers (every Linear in the 30 blocks) hold "
              f"{first['params_targeted_before']:,} of {first['params_model_before']:,} "
              f"parameters ({first['targeted_share_of_model']:.1%}); the rest is mostly the "
              "tied embedding / LM head, which stays dense.\n")
        print("| reduction | kept (factorized layers) | params | ppl SVD only | ppl PELA "
              "| size MB | vs dense | seconds | peak RSS MB | reload identical |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| dense | 100% | {dense['parameters']:,} | {dense['perplexity']:.2f} | "
              f"{dense['perplexity']:.2f} | {_mb(dense['size_bytes'])} | 0% | - | "
              f"{_mb(dense['peak_rss_bytes'])} | - |")
        for label, row in rows.items():
            saved = 1 - row["size_bytes"] / row["dense_size_bytes"]
            print(f"| {label} | {row['kept_fraction_targeted']:.1%} | "
                  f"{row['params_model_after']:,} | {row['perplexity_svd']:.2f} | "
                  f"{row['perplexity_trained']:.2f} | {_mb(row['size_bytes'])} | "
                  f"-{saved:.1%} | {row['seconds']:.0f} (train {row['seconds_train']:.0f}) | "
                  f"{_mb(row['peak_rss_bytes'])} | {row['reload_identical']} |")
        print(flush=True)
    if args.only in (None, "minilm"):
        results = _children(*[f"minilm:{keep}" for keep in KEEPS.values()])
        rows = dict(zip(KEEPS, results, strict=True))
        print("## all-MiniLM-L6-v2 (encoder, distillation only)\n\nCosine similarity of "
              "mean-pooled sentence embeddings, factorized vs original, on 64 held-out "
              "sentences (SOTU 2000-).\n")
        print("| reduction | kept | params | cos SVD only (mean/min) | cos PELA (mean/min) "
              "| size MB | vs dense | seconds |")
        print("|---|---|---|---|---|---|---|---|")
        for label, row in rows.items():
            saved = 1 - row["size_bytes"] / row["dense_size_bytes"]
            svd, pela = row["embedding_cosine_svd"], row["embedding_cosine_trained"]
            print(f"| {label} | {row['kept_fraction_targeted']:.1%} | "
                  f"{row['params_model_after']:,} | {svd['mean']:.4f} / {svd['min']:.4f} | "
                  f"{pela['mean']:.4f} / {pela['min']:.4f} | {_mb(row['size_bytes'])} | "
                  f"-{saved:.1%} | {row['seconds']:.0f} |")
        print(flush=True)


if __name__ == "__main__":
    main()
