"""Low-rank factorization of SmolLM2-135M (and MiniLM): plain SVD vs whitened SVD, uniform vs
loss allocation, the least-squares refit, then PELA training (protocol: DESIGN.md).

Rows, for each kept fraction of the factorized layers' parameters (80% / 66.7% / 50%):

- `svd`: plain truncated SVD of the weights, uniform ranks (the old init)
- `white-uniform`: activation-whitened SVD (`weighting: activations`), block by block,
  uniform ranks, no refit
- `white-loss`: the same, ranks allocated by the truncation loss relative to each layer's
  output energy, no refit
- `refit`: + the least-squares refit of `up` (off in the step by default: it measured worse)
- `fisher-uniform`, `fisher-loss`: the SVD weighted by the loss gradients' Gram matrix at each
  layer's output as well (`weighting: fisher`), uniform ranks / ranks allocated in loss units
- `pela`: `fisher-loss` (the step's defaults) + PELA training for `--steps` steps on fresh
  windows of the calibration text

Each row runs in its own process (its peak RSS is its own), one at a time (the machine is
shared). Perplexity on the evaluation text (SOTU 2000-) and the second text (pydoc:topics),
the first `--eval-windows` windows of 512 tokens each; parameters; size on disk of the saved
checkpoint; seconds; peak RSS; with `--latency` the CPU forward latency of the factorized and
the dense model at batch 1 and 8 x 512 tokens, measured interleaved in one process
(`bench/latency.py`).

    .venv/bin/python bench/lowrank.py --rows fisher-loss --keeps 0.8 0.667  # no-training bars
    .venv/bin/python bench/lowrank.py --rows pela --keeps 0.8 --steps 300
    .venv/bin/python bench/lowrank.py --only minilm
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

# this checkout's packages, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = {
    "svd": {"init": "svd", "allocation": "uniform", "train": False},
    "white-uniform": {"init": "whitened", "allocation": "uniform", "refit": False,
                      "train": False},
    "white-loss": {"init": "whitened", "allocation": "loss", "refit": False, "train": False},
    "refit": {"init": "whitened", "allocation": "loss", "refit": True, "train": False},
    "fisher-uniform": {"init": "whitened", "allocation": "uniform", "refit": False,
                       "weighting": "fisher", "train": False},
    "fisher-loss": {"init": "whitened", "allocation": "loss", "refit": False,
                    "weighting": "fisher", "train": False},
    "pela": {"init": "whitened", "allocation": "loss", "refit": False, "weighting": "fisher",
             "train": True},
}
SECOND_TEXT = "pydoc:topics"


def _log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _ppl_pair(model, tokenizer, windows: int, second_windows: int) -> tuple[float, float]:
    from compressors.engine.windows import evaluation_windows, text_sequential_windows
    from compressors.evaluate import perplexity
    from compressors.recipe.protocol import EvaluationConfig

    first = evaluation_windows(tokenizer, EvaluationConfig(windows=windows))
    ppl = perplexity(model, first)
    if not second_windows:
        return ppl, float("nan")
    second = text_sequential_windows(tokenizer, SECOND_TEXT, second_windows, 512)
    return ppl, perplexity(model, second)


def run_dense(args: argparse.Namespace) -> dict:
    from compressors.io.loading import load_model, size_on_disk
    from compressors.peak_memory import peak_rss_bytes

    loaded = load_model("smollm2-135m")
    began = time.perf_counter()
    ppl, second = _ppl_pair(loaded.model, loaded.tokenizer, args.eval_windows,
                                args.second_windows)
    return {"perplexity": ppl, "perplexity_second": second,
            "size_bytes": size_on_disk(loaded.source),
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "seconds": time.perf_counter() - began, "peak_rss_bytes": peak_rss_bytes()}


def _config(args: argparse.Namespace, row: dict, keep: float, encoder: bool):
    from compressors.methods.lowrank.config import LowRankConfig

    steps = (args.encoder_steps if encoder else args.steps) if row["train"] else 0
    extra = {key: row[key] for key in ("refit", "weighting") if key in row}
    if encoder or "weighting" not in row:  # the rows before the fisher weighting; encoders
        extra["weighting"] = "activations"  # have no next-token loss to weight by
    return LowRankConfig(
        target_params=keep, init=row["init"], allocation=row["allocation"], **extra,
        max_layer_keep=args.max_layer_keep, train_steps=steps, lr=args.lr,
        batch_size=args.batch_size, seqlen=args.encoder_seqlen if encoder else args.seqlen,
        lm_weight=0.0 if encoder else args.lm_weight, distill_alpha=args.alpha,
        perturbation_lambda=args.lam, warmup=min(steps, args.warmup), evaluate=encoder,
        cosine_sentences=64,
    )


def run_one(args: argparse.Namespace, model_name: str, row_name: str, keep: float) -> dict:
    """One row: factorize (+ train), measure, save, reload; everything as JSON."""
    import compressors
    from compressors.engine.context import StepContext
    from compressors.io.loading import load_model, save_checkpoint, size_on_disk
    from compressors.methods.lowrank.step import run as run_lowrank
    from compressors.peak_memory import peak_rss_bytes
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    loaded = load_model(model_name)
    encoder = not loaded.is_causal_lm
    context = StepContext(
        model_source=loaded.source, tokenizer=loaded.tokenizer,
        calibration=CalibrationConfig(samples=args.calib_samples, seqlen=args.calib_seqlen),
        evaluation=EvaluationConfig(windows=args.eval_windows),
        progress=lambda f, m: _log(f"[{f:5.1%}] {m}")
        if not m.startswith("step") or m.split()[1].split("/")[0] in args.log_steps else None,
    )
    config = _config(args, ROWS[row_name], keep, encoder)
    began = time.perf_counter()
    section = run_lowrank(loaded.model, config, context).section.model_dump(mode="json")
    seconds = time.perf_counter() - began
    result = {"row": row_name, "keep": keep, "seconds": seconds,
              "seconds_train": (section["train"] or {}).get("seconds", 0.0)}
    if not encoder:
        _log("perplexity on both texts")
        result["perplexity"], result["perplexity_second"] = _ppl_pair(
            loaded.model, loaded.tokenizer, args.eval_windows, args.second_windows)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        save_checkpoint(loaded.model, loaded.tokenizer, out)
        result["size_bytes"] = size_on_disk(out)
        reloaded = compressors.load(out)
        ids = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            key = "last_hidden_state" if encoder else "logits"
            result["reload_identical"] = torch.equal(getattr(loaded.model(input_ids=ids), key),
                                                     getattr(reloaded(input_ids=ids), key))
        if args.latency and not encoder:
            _log("latency, interleaved with the dense model")
            result["latency"] = _latency(args, loaded.source, reloaded)
    result["dense_size_bytes"] = size_on_disk(loaded.source)
    result["peak_rss_bytes"] = peak_rss_bytes()
    keys = ("kept_fraction_targeted", "params_model_after", "params_targeted_before",
            "params_model_before", "targeted_share_of_model", "layers_factorized",
            "layers_targeted", "ranks", "predicted_error_mean", "measured_error_mean",
            "error_vs_original_mean", "error_after_refit_mean", "refit_kept",
            "embedding_cosine_svd", "embedding_cosine_trained", "seconds_svd")
    result.update({k: section.get(k) for k in keys})
    return result


def _latency(args: argparse.Namespace, dense_source: Path, factorized) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from latency import interleaved_latency

    from compressors.io.loading import load_model

    dense = load_model(dense_source).model
    return {str(batch): interleaved_latency({"dense": dense, "factorized": factorized},
                                            batch, 512, args.latency_repeats)
            for batch in (1, 8)}


def _child(*names: str) -> list[dict]:
    """One child process per row, one after another; their JSON results."""
    results = []
    for name in names:
        process = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name],
                                 stdout=subprocess.PIPE, text=True, check=False)
        if process.returncode:
            raise RuntimeError(f"child {name} failed with exit code {process.returncode}")
        results.append(json.loads(process.stdout.strip().splitlines()[-1]))
        _log(f"{name}: {json.dumps({k: v for k, v in results[-1].items() if k != 'ranks'})}")
    return results


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def _latency_cells(row: dict) -> str:
    lat = row.get("latency")
    if not lat:
        return "- | -"
    cells = []
    for batch in ("1", "8"):
        f, d = lat[batch]["factorized"], lat[batch]["dense"]
        cells.append(f"{f['tokens_per_second']:.0f} vs {d['tokens_per_second']:.0f} "
                     f"({d['latency_ms'] / f['latency_ms']:.2f}x)")
    return " | ".join(cells)


def _print_smollm2(dense: dict | None, rows: list[dict]) -> None:
    print("| row | kept (factorized layers) | layers factorized | params | ppl SOTU | "
          "ppl pydoc | x dense | size MB | err predicted / measured / vs orig / refit | "
          "tok/s b1 (vs dense) | tok/s b8 (vs dense) | seconds | peak RSS MB | reload |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if dense:
        print(f"| dense | 100% | 0 | {dense['parameters']:,} | {dense['perplexity']:.2f} | "
              f"{dense['perplexity_second']:.2f} | 1.00 | {_mb(dense['size_bytes'])} | - | - | "
              f"- | {dense['seconds']:.0f} | {_mb(dense['peak_rss_bytes'])} | - |")
    for row in rows:
        ratio = f"{row['perplexity'] / dense['perplexity']:.2f}" if dense else "-"
        errors = " / ".join("-" if row.get(k) is None else f"{row[k]:.3f}" for k in (
            "predicted_error_mean", "measured_error_mean", "error_vs_original_mean",
            "error_after_refit_mean"))
        print(f"| {row['row']} {row['keep']:g} | {row['kept_fraction_targeted']:.1%} | "
              f"{row['layers_factorized']}/{row['layers_targeted']} | "
              f"{row['params_model_after']:,} | {row['perplexity']:.2f} | "
              f"{row['perplexity_second']:.2f} | {ratio} | {_mb(row['size_bytes'])} | "
              f"{errors} | {_latency_cells(row)} | {row['seconds']:.0f} "
              f"(train {row['seconds_train']:.0f}) | {_mb(row['peak_rss_bytes'])} | "
              f"{row['reload_identical']} |")
    print(flush=True)


def _print_ranks(rows: list[dict]) -> None:
    """Per-layer ranks of the loss allocation, summarized per layer kind."""
    for row in rows:
        if ROWS[row["row"]]["allocation"] != "loss" or not row.get("ranks"):
            continue
        by_kind: dict[str, list[int]] = {}
        for name, rank in row["ranks"].items():
            by_kind.setdefault(name.rsplit(".", 1)[-1], []).append(rank)
        print(f"ranks, {row['row']} {row['keep']:g} ({row['layers_factorized']} of "
              f"{row['layers_targeted']} layers factorized): " + "; ".join(
                  f"{kind} n={len(r)} min {min(r)} median {sorted(r)[len(r) // 2]} max {max(r)}"
                  for kind, r in by_kind.items()))
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.8, 0.667, 0.5])
    parser.add_argument("--steps", type=int, default=300, help="PELA steps on SmolLM2")
    parser.add_argument("--encoder-steps", type=int, default=60, help="PELA steps on MiniLM")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=256, help="training tokens per window")
    parser.add_argument("--encoder-seqlen", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--max-layer-keep", type=float, default=0.9)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--second-windows", type=int, default=40,
                        help="windows of the second text (0: skip it)")
    parser.add_argument("--latency", action="store_true", help="CPU latency vs dense")
    parser.add_argument("--latency-repeats", type=int, default=3)
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--only", choices=["smollm2", "minilm"], default="smollm2")
    parser.add_argument("--log-steps", nargs="*", default=["1", "10", "50", "100", "200",
                                                            "300"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        model, _, rest = args.child.partition(":")
        row, _, keep = rest.partition(":")
        result = run_dense(args) if model == "dense" else run_one(
            args, "smollm2-135m" if model == "smollm2" else "all-minilm-l6-v2", row,
            float(keep))
        print(json.dumps(result))
        return

    print(f"# Low-rank factorization ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
          f"rows={args.rows} keeps={args.keeps}; PELA steps={args.steps} (MiniLM "
          f"{args.encoder_steps}), batch={args.batch_size}, seqlen={args.seqlen}, lr={args.lr}, "
          f"warmup={args.warmup}, lm_weight={args.lm_weight}, alpha={args.alpha}, "
          f"lambda={args.lam}, max_layer_keep={args.max_layer_keep}; calibration "
          f"{args.calib_samples}x{args.calib_seqlen}, evaluation {args.eval_windows}x512 "
          f"(second text {args.second_windows}x512); "
          f"torch threads={args.threads}; load average at start {os.getloadavg()}\n", flush=True)
    names = [f"{args.only}:{row}:{keep}" for keep in args.keeps for row in args.rows]
    if args.only == "smollm2":
        dense = None if args.no_dense else _child("dense:")[0]
        rows = _child(*names)
        _print_smollm2(dense, rows)
        _print_ranks(rows)
    else:
        rows = _child(*names)
        print("| row | kept | params | cos init (mean/min) | cos PELA (mean/min) | size MB |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            init, pela = row["embedding_cosine_svd"], row.get("embedding_cosine_trained")
            trained = f"{pela['mean']:.4f} / {pela['min']:.4f}" if pela else "-"
            print(f"| {row['row']} {row['keep']:g} | {row['kept_fraction_targeted']:.1%} | "
                  f"{row['params_model_after']:,} | {init['mean']:.4f} / {init['min']:.4f} | "
                  f"{trained} | {_mb(row['size_bytes'])} |")
    print(f"\nload average at end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
