"""CUDA smoke benchmark: every method, and a three-step recipe, on SmolLM2 on the GPU.

    .venv/bin/python bench/gpu_smoke.py                   # a few minutes on one GPU
    .venv/bin/python bench/gpu_smoke.py --only wanda gptq --out bench/results/gpu_smoke.md

Each recipe runs three ways: on CUDA in bfloat16 (what users' bf16 checkpoints get), on CUDA
in float32, and on the CPU in float32 (the reference), at a small budget (16 calibration and
8 evaluation windows of 256 tokens). One table: perplexity after the step, seconds, peak CUDA
memory, and agreement with the CPU run: the relative perplexity difference, and for pruning
the share of pruned positions the two runs agree on. A registered method without a row here is
an error, so a new method cannot be left out of the GPU check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROWS: dict[str, list[dict]] = {
    "magnitude": [{"method": "magnitude", "sparsity": 0.5}],
    "wanda": [{"method": "wanda", "sparsity": 0.5}],
    "sparsegpt": [{"method": "sparsegpt", "pattern": "2:4"}],
    "perp": [{"method": "wanda", "sparsity": 0.5},
             {"method": "perp", "train_steps": 20, "seqlen": 256}],
    "quantize": [{"method": "quantize", "quant_type": "nf4"}],
    "lowrank": [{"method": "lowrank", "target_params": 0.8, "train_steps": 20, "seqlen": 256}],
    "gptq": [{"method": "gptq", "bits": 4, "group_size": 64}],
    "rtn": [{"method": "rtn", "bits": 4, "group_size": 64}],
    "three-step": [{"method": "sparsegpt", "sparsity": 0.5},
                   {"method": "perp", "train_steps": 20, "seqlen": 256},
                   {"method": "quantize", "quant_type": "nf4"}],
}
BUDGETS = {"calibration": {"samples": 16, "seqlen": 256},
           "evaluation": {"windows": 8, "seqlen": 256}}
RUNS = (("cuda", "bfloat16"), ("cuda", "float32"), ("cpu", "float32"))


def run_one(steps: list[dict], device: str, dtype: str, out: Path) -> dict:
    import torch

    import compressors
    from compressors.recipe import parse_recipe

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    recipe = parse_recipe({"steps": steps, "dtype": dtype, **BUDGETS})
    began = time.perf_counter()
    report = compressors.compress("smollm2-135m", recipe, out, device=device)
    seconds = time.perf_counter() - began
    return {"perplexity": report.metrics.after.perplexity, "seconds": seconds,
            "peak_cuda": torch.cuda.max_memory_allocated() if device == "cuda" else None,
            "placement": report.memory.placement, "pruned": report.sparsity.total}


def zero_agreement(a: Path, b: Path) -> float | None:
    """Share of weight positions pruned in either run that both runs pruned."""
    from safetensors.torch import load_file

    def zeros(folder: Path) -> dict:
        tensors = {}
        for path in folder.glob("*.safetensors"):
            tensors.update({k: v == 0 for k, v in load_file(str(path)).items()
                            if v.dim() == 2 and "layers" in k})
        return tensors

    left, right = zeros(a), zeros(b)
    if not left or left.keys() != right.keys():
        return None
    both = sum(int((left[k] & right[k]).sum()) for k in left)
    either = sum(int((left[k] | right[k]).sum()) for k in left)
    return both / either if either else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="rows to run (default: all)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    import torch

    from compressors.methods import METHODS

    missing = sorted(set(METHODS) - set(ROWS))
    if missing:
        raise SystemExit(f"bench/gpu_smoke.py has no row for {missing}: add one")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    rows = []
    for name, steps in ROWS.items():
        if args.only and name not in args.only:
            continue
        if any(s["method"] not in METHODS for s in steps):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            for device, dtype in RUNS:
                out = Path(tmp) / f"{device}-{dtype}"
                try:
                    results[(device, dtype)] = run_one(steps, device, dtype, out)
                except Exception as error:  # one broken row must not hide the others
                    results[(device, dtype)] = {"error": f"{type(error).__name__}: {error}"}
            cpu = results[("cpu", "float32")]
            for device, dtype in RUNS[:2]:
                result = results[(device, dtype)]
                agree = zero_agreement(Path(tmp) / f"{device}-{dtype}", Path(tmp) / "cpu-float32")
                rows.append({"row": name, "device": device, "dtype": dtype, **result,
                             "cpu_perplexity": cpu.get("perplexity"), "mask_agreement": agree})
                print(json.dumps(rows[-1]), flush=True)
    table = render(rows, torch.cuda.get_device_name())
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


def render(rows: list[dict], device_name: str) -> str:
    load = os.getloadavg()
    lines = [f"{device_name}; load average {load[0]:.2f}; budgets {json.dumps(BUDGETS)}\n",
             "| recipe | run | perplexity | CPU fp32 | Δ vs CPU | pruned agree | seconds "
             "| peak CUDA MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['row']} | {row['device']} {row['dtype']} | "
                         f"error: {row['error'][:90]} | | | | | |")
            continue
        cpu = row["cpu_perplexity"]
        delta = f"{100 * (row['perplexity'] / cpu - 1):+.2f}%" if cpu else "—"
        agree = f"{100 * row['mask_agreement']:.2f}%" if row["mask_agreement"] else "—"
        cpu_cell = f"{cpu:.3f}" if cpu else "—"
        lines.append(f"| {row['row']} | {row['device']} {row['dtype']} | "
                     f"{row['perplexity']:.3f} | {cpu_cell} | {delta} | {agree} | "
                     f"{row['seconds']:.1f} | {row['peak_cuda'] / 1e6:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
