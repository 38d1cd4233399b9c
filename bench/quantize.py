"""bitsandbytes quantization of SmolLM2-135M per the evaluation protocol, as a markdown table.

Rows: fp32, int8, nf4, fp4, nf4 + double quant, nf4 + LoRC at several ranks, wanda 50% + nf4.
Columns: perplexity (SOTU 2000-, 512-token windows), size on disk (the checkpoint's weight
files as saved), in-memory footprint, quantize seconds (the step alone), forward tokens/s
(one [1, 128] batch, median of 3). A second table is the LoRC rank / extra bytes / perplexity
curve, so users can choose a rank.

    .venv/bin/python bench/quantize.py                    # protocol: 40 eval windows of 512
    .venv/bin/python bench/quantize.py --windows 10 --ranks 4 8
    .venv/bin/python bench/quantize.py --only fp32 fp4 dq     # a subset of rows
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MB = 1e6
ROWS = ("fp32", "int8", "nf4", "lorc", "fp4", "dq", "wanda")


@dataclass
class Row:
    name: str
    perplexity: float
    size_bytes: int
    footprint_bytes: int
    quantize_seconds: float | None
    tokens_per_second: float
    lorc_extra_bytes: int = 0
    lorc_rank: int = 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import bitsandbytes
    import transformers

    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"bitsandbytes {bitsandbytes.__version__}")


def measure(name: str, model, windows, seconds: float | None, section: dict | None) -> Row:
    from compressors.evaluate import forward_latency, perplexity
    from compressors.model_io import save_checkpoint, size_on_disk
    from compressors.quantization.layers import memory_footprint

    started = time.perf_counter()
    ppl = perplexity(model, windows)
    speed = forward_latency(model, seqlen=128)["tokens_per_second"]
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as folder:
        save_checkpoint(model, None, Path(folder))
        size = size_on_disk(Path(folder))
    lorc = (section or {}).get("lorc", {})
    row = Row(name, ppl, size, memory_footprint(model), seconds, speed,
              lorc.get("extra_bytes", 0), lorc.get("rank", 0))
    print(f"<!-- {name}: ppl {ppl:.3f}, size {size / MB:.1f} MB, footprint "
          f"{row.footprint_bytes / MB:.1f} MB, {speed:.0f} tokens/s, quantize {seconds} s, "
          f"measured in {time.perf_counter() - started:.0f} s -->", flush=True)
    return row


def quantize(model, context, **options) -> tuple[Any, float, dict]:
    from compressors.quantization import QuantizeConfig
    from compressors.quantization.quantize import run_quantize

    config = QuantizeConfig(**options)
    result = run_quantize(model, config, context)
    section = result.sections["quantization"]
    return result.model, section["quantize_seconds"], section


def schemes(ranks: list[int]) -> list[tuple[str, str, dict[str, Any]]]:
    """(row key for --only, row name, quantize options), in the order they run."""
    return [("int8", "int8", {"bits": 8}), ("nf4", "nf4", {"quant_type": "nf4"}),
            *[("lorc", f"nf4 + LoRC r{r}", {"quant_type": "nf4", "lorc_rank": r}) for r in ranks],
            ("fp4", "fp4", {"quant_type": "fp4"}),
            ("dq", "nf4 + double quant", {"quant_type": "nf4", "double_quant": True})]


def delta(value: float, baseline: float | None) -> str:
    return "-" if baseline is None else f"{100 * (value / baseline - 1):+.2f}%"


def table(rows: list[Row], baseline: float | None) -> str:
    lines = ["| model | perplexity | Δ vs fp32 | size MB | footprint MB | quantize s | tokens/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        seconds = "-" if r.quantize_seconds is None else f"{r.quantize_seconds:.1f}"
        lines.append(
            f"| {r.name} | {r.perplexity:.3f} | {delta(r.perplexity, baseline)} | "
            f"{r.size_bytes / MB:.1f} | {r.footprint_bytes / MB:.1f} | {seconds} | "
            f"{r.tokens_per_second:.0f} |")
    return "\n".join(lines)


def lorc_curve(rows: list[Row], plain: Row) -> str:
    lines = ["| LoRC rank | extra bytes (MB) | extra vs nf4 size | perplexity | Δ vs plain nf4 |",
             "| ---: | ---: | ---: | ---: | ---: |",
             f"| 0 | 0.00 | +0.0% | {plain.perplexity:.3f} | 0.000 |"]
    for r in rows:
        lines.append(f"| {r.lorc_rank} | {r.lorc_extra_bytes / MB:.2f} | "
                     f"{100 * r.lorc_extra_bytes / plain.size_bytes:+.1f}% | "
                     f"{r.perplexity:.3f} | {r.perplexity - plain.perplexity:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=40, help="evaluation windows of 512")
    parser.add_argument("--ranks", type=int, nargs="*", default=[4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=ROWS, default=list(ROWS),
                        help="rows to run (a long run can be split over processes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    transformers.logging.set_verbosity_error()
    from compressors.calibration import CalibrationConfig, EvaluationConfig
    from compressors.context import StepContext
    from compressors.model_io import load_model
    from compressors.pruning.wanda import WandaConfig, run_wanda

    loaded = load_model("smollm2-135m")
    evaluation = EvaluationConfig(windows=args.windows)
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=CalibrationConfig(), evaluation=evaluation)
    windows = context.evaluation_windows
    print(f"<!-- {machine()}; eval {len(windows)}x{windows.shape[1]} tokens -->", flush=True)
    dense = loaded.model
    rows = [measure("fp32", dense, windows, None, None)] if "fp32" in args.only else []
    for key, name, options in schemes(args.ranks):
        if key not in args.only:
            continue
        model, seconds, section = quantize(dense, context, **options)
        rows.append(measure(name, model, windows, seconds, section))
        del model
    if "wanda" in args.only:
        pruned = copy.deepcopy(dense)
        began = time.perf_counter()
        run_wanda(pruned, WandaConfig(sparsity=0.5), context)
        prune_seconds = time.perf_counter() - began
        model, seconds, section = quantize(pruned, context, quant_type="nf4")
        from compressors.evaluate import sparsity_report

        sparsity = sparsity_report(model)["total"]
        row = measure(f"wanda 50% + nf4 (sparsity {sparsity:.3f})", model, windows,
                      seconds, section)
        rows.append(row)
        print(f"<!-- wanda took {prune_seconds:.0f} s; zeros kept "
              f"{section['zeros_kept']}/{section['zeros_before']} -->", flush=True)
    print()
    print(table(rows, rows[0].perplexity if "fp32" in args.only else None))
    summarize(rows)


def summarize(rows: list[Row]) -> None:
    """The LoRC curve and the two bars, for whichever of their rows this run measured."""
    named = {r.name: r for r in rows}
    plain, fp32, int8 = named.get("nf4"), named.get("fp32"), named.get("int8")
    curve = [r for r in rows if r.lorc_rank]
    if plain and curve:
        print()
        print(lorc_curve(curve, plain))
        below = all(r.perplexity < plain.perplexity for r in curve)
        print(f"\nnf4 + LoRC below plain nf4 at every rank: {'yes' if below else 'NO'}")
    if fp32 and int8:
        within = int8.perplexity <= fp32.perplexity * 1.03
        print(f"int8 within 3% of fp32: {'yes' if within else 'NO'} "
              f"({100 * (int8.perplexity / fp32.perplexity - 1):+.2f}%)")


if __name__ == "__main__":
    main()
