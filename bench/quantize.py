"""Quantization of SmolLM2-135M per the evaluation protocol, as markdown tables.

bitsandbytes rows: fp32, int8, nf4, fp4, nf4 + double quant, nf4 + LoRC at several ranks,
wanda 50% + nf4. Columns: perplexity (SOTU 2000-, 512-token windows), size on disk (the
checkpoint's weight files as saved), in-memory footprint, quantize seconds (the step alone),
forward tokens/s (one [1, 128] batch, median of 3). A second table is the LoRC rank / extra
bytes / perplexity curve, so users can choose a rank.

`--table int` is the integer-weight table (issue 17): fp32, bnb int8, bnb nf4, nf4 + LoRC r32,
rtn int4 g64, gptq int4 g64, gptq int4 per channel, gptq int8 per channel, sparsegpt 50% +
gptq int4, sparsegpt 2:4 + gptq int4, with perplexity on the evaluation text and on a second
text of another kind (pydoc:topics), size on disk, bits per weight and the step's seconds;
calibration is the protocol's (32 windows of 512). The gptq int4 g64 checkpoint is reloaded
with stock `AutoModelForCausalLM.from_pretrained` in a fresh process and its perplexity
compared; the sparse rows check from the saved files that every pruned weight has code 0.

    .venv/bin/python bench/quantize.py                    # protocol: 40 eval windows of 512
    .venv/bin/python bench/quantize.py --windows 10 --ranks 4 8
    .venv/bin/python bench/quantize.py --only fp32 fp4 dq     # a subset of rows
    .venv/bin/python bench/quantize.py --table int            # the GPTQ / RTN table
    .venv/bin/python bench/quantize.py --table int --only gptq4 rtn4 --samples 8

`--table deploy` is the serving-scheme table (issue 27; `bench/quantize_deploy.py`): fp8, w8a8,
awq and nvfp4 beside fp32, GPTQ int4 / int8 and bnb, each row in a fresh process, with
llm-compressor 0.14's own implementation of each scheme run in its venv on the same windows in
the same run (`bash bench/peer/setup-llmcompressor.sh` once first; `--no-peer` skips it).

    .venv/bin/python bench/quantize.py --table deploy --out /tmp/deploy
    .venv/bin/python bench/quantize.py --table deploy --only fp32 fp8 --windows 4 --samples 4
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

import quantize_deploy  # beside this file
import torch

MB = 1e6
DEPLOY_ROWS = tuple(quantize_deploy.OURS)
ROWS = ("fp32", "int8", "nf4", "lorc", "fp4", "dq", "wanda")
INT_ROWS = ("rtn4", "gptq4", "gptq4ch", "gptq8", "sgpt50", "sgpt24")


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
    from compressors.engine.layers import memory_footprint
    from compressors.evaluate import forward_latency, perplexity
    from compressors.io.loading import save_checkpoint, size_on_disk

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
    from compressors.methods.quantize.config import QuantizeConfig
    from compressors.methods.quantize.step import run as run_quantize

    config = QuantizeConfig(**options)
    result = run_quantize(model, config, context)
    section = result.section.model_dump(mode="json")
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
    parser.add_argument("--table", choices=("bnb", "int", "deploy"), default="bnb")
    parser.add_argument("--second-windows", type=int, default=None, help="--table int: "
                        "windows of the second text (default: --windows)")
    parser.add_argument("--fresh-windows", type=int, default=None, help="--table int: "
                        "evaluation windows for the fresh-process reload check (default: all)")
    parser.add_argument("--samples", type=int, default=32, help="--table int: calibration "
                        "windows of 512 (protocol: 32)")
    parser.add_argument("--only", nargs="*", choices=sorted({*ROWS, *INT_ROWS, *DEPLOY_ROWS}),
                        default=None, help="rows to run (a long run can be split over processes)")
    parser.add_argument("--out", type=Path, default=None, help="--table deploy: folder for the "
                        "windows file, the peer's checkpoints and results.json")
    parser.add_argument("--no-peer", action="store_true",
                        help="--table deploy: our rows only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.table == "deploy":
        args.fresh_windows = args.fresh_windows or 8
        quantize_deploy.main(args)
        return
    if args.table == "int":
        main_int(args)
        return
    args.only = args.only or list(ROWS)

    import transformers

    transformers.logging.set_verbosity_error()
    from compressors.engine.context import StepContext
    from compressors.io.loading import load_model
    from compressors.methods.wanda.config import WandaConfig
    from compressors.methods.wanda.step import run as run_wanda
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    loaded = load_model("smollm2-135m")
    evaluation = EvaluationConfig(windows=args.windows)
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=CalibrationConfig(), evaluation=evaluation)
    windows = context.evaluation_tokens()
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

        sparsity = sparsity_report(model).total
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


@dataclass
class IntRow:
    name: str
    perplexity: float
    second: float
    size_bytes: int
    bits_per_weight: float | None
    seconds: float | None
    note: str = ""


INT_SCHEMES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "rtn4": ("rtn int4 g64", [{"method": "rtn", "bits": 4, "group_size": 64}]),
    "gptq4": ("gptq int4 g64", [{"method": "gptq", "bits": 4, "group_size": 64}]),
    "gptq4ch": ("gptq int4 per channel", [{"method": "gptq", "bits": 4, "group_size": -1}]),
    "gptq8": ("gptq int8 per channel", [{"method": "gptq", "bits": 8, "group_size": -1}]),
    "sgpt50": ("sparsegpt 50% + gptq int4 g64",
               [{"method": "sparsegpt", "sparsity": 0.5},
                {"method": "gptq", "bits": 4, "group_size": 64}]),
    "sgpt24": ("sparsegpt 2:4 + gptq int4 g64",
               [{"method": "sparsegpt", "pattern": "2:4"},
                {"method": "gptq", "bits": 4, "group_size": 64}]),
}
BNB_IN_INT = {"int8": ("bnb int8", {"bits": 8}), "nf4": ("bnb nf4", {"quant_type": "nf4"}),
              "lorc": ("bnb nf4 + LoRC r32", {"quant_type": "nf4", "lorc_rank": 32})}


def _run_steps(model, steps: list[dict[str, Any]], context) -> tuple[Any, dict, dict]:
    """Run recipe steps on `model` in place; returns (model, seconds per method, sections).

    Each step's module and compressed-tensors are imported before its timer starts, as a
    worker has them imported after its first job and as the peer benchmark imports
    llm-compressor (and its modifiers) before its own timer: the seconds are the step's work,
    not a fresh interpreter's imports."""
    import compressed_tensors.quantization  # noqa: F401

    from compressors.methods import get_method, import_object
    from compressors.recipe import parse_recipe

    recipe = parse_recipe({"steps": steps})
    seconds: dict[str, float] = {}
    sections: dict[str, Any] = {}
    for index, step in enumerate(recipe.steps):
        context.keep_masks = any(get_method(s.method).uses_masks for s in recipe.steps[index + 1:])
        import_object(get_method(step.method).step)
        began = time.perf_counter()
        result = get_method(step.method).run(model, step, context)
        seconds[step.method] = time.perf_counter() - began
        model = result.model or model
        if result.section is not None:
            sections[step.method] = result.section.model_dump(mode="json")
    return model, seconds, sections


def _files_keep_zeros(folder: Path, zeros: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(pruned weights, those whose stored code is 0) read back from the safetensors files."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in folder.glob("*.safetensors"):
        state.update(load_file(str(path)))
    pruned = kept = 0
    for name, zero in zeros.items():
        shape = torch.Size(state[f"{name}.weight_shape"].tolist())
        bits = 4 if state[f"{name}.weight_packed"].numel() * 32 == shape.numel() * 4 else 8
        codes = unpack_from_int32(state[f"{name}.weight_packed"], bits, shape)
        pruned += int(zero.sum())
        kept += int((codes[zero] == 0).sum())
    return pruned, kept


FRESH_LOAD = """
import math, sys, torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM
torch.set_num_threads(int(sys.argv[3]))
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True).eval()
windows = torch.load(sys.argv[2])
nll = tokens = 0
with torch.no_grad():
    for w in windows:
        logits = model(input_ids=w.unsqueeze(0)).logits[0, :-1].float()
        nll += float(F.cross_entropy(logits, w[1:], reduction="sum")); tokens += w.numel() - 1
print(math.exp(nll / tokens))
"""


def _fresh_perplexity(folder: Path, windows: torch.Tensor, threads: int) -> float:
    """Perplexity of the checkpoint loaded by stock transformers in a new process."""
    import subprocess
    import sys

    path = folder / "windows.pt"
    torch.save(windows, path)
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(folder), str(path), str(threads)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    path.unlink()
    return float(done.stdout.strip().splitlines()[-1])


def _measure_int(name: str, model, evals: dict[str, torch.Tensor], seconds: float | None,
                 section: dict | None, check: dict | None, threads: int) -> IntRow:
    from compressors.evaluate import perplexity
    from compressors.io.loading import save_checkpoint, size_on_disk

    ppl = perplexity(model, evals["evaluation"])
    second = perplexity(model, evals["second"])
    note = ""
    with tempfile.TemporaryDirectory(prefix="bench-int-") as tmp:
        folder = Path(tmp)
        save_checkpoint(model, None, folder)
        size = size_on_disk(folder)
        if check and check.get("fresh"):
            count = check.get("fresh_windows") or len(evals["evaluation"])
            subset = evals["evaluation"][:count]
            fresh = _fresh_perplexity(folder, subset, threads)
            same = ppl if count == len(evals["evaluation"]) else perplexity(model, subset)
            note += (f"from_pretrained in a fresh process, first {count} windows: {fresh:.4f} "
                     f"(in memory {same:.4f}); ")
        if check and check.get("zeros"):
            pruned, kept = _files_keep_zeros(folder, check["zeros"])
            note += f"pruned weights with code 0 in the files: {kept}/{pruned}; "
    bits = (section or {}).get("bits_per_weight")
    row = IntRow(name, ppl, second, size, bits, seconds, note)
    print(f"<!-- {name}: ppl {ppl:.3f}, second {second:.3f}, size {size / MB:.1f} MB, "
          f"seconds {seconds}, {note} load {os.getloadavg()} -->", flush=True)
    return row


def int_table(rows: list[IntRow], fp32: IntRow | None) -> str:
    lines = ["| model | ppl SOTU 2000- | Δ vs fp32 | ppl pydoc:topics | Δ vs fp32 | size MB | "
             "bits/weight (quantized layers) | step s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bits = "-" if r.bits_per_weight is None else f"{r.bits_per_weight:.3f}"
        secs = "-" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(
            f"| {r.name} | {r.perplexity:.3f} | "
            f"{delta(r.perplexity, fp32.perplexity if fp32 else None)} | {r.second:.3f} | "
            f"{delta(r.second, fp32.second if fp32 else None)} | {r.size_bytes / MB:.1f} | "
            f"{bits} | {secs} |")
    return "\n".join(lines)


def main_int(args: argparse.Namespace) -> None:
    """The integer-weight table (see the module docstring)."""
    import transformers

    transformers.logging.set_verbosity_error()
    from compressors.engine.context import StepContext
    from compressors.engine.windows import text_sequential_windows
    from compressors.io.loading import load_model
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
    from compressors.recipe.text import PYDOC_TOPICS

    only = args.only or ["fp32", "int8", "nf4", "lorc", *INT_ROWS]
    loaded = load_model("smollm2-135m")
    evaluation = EvaluationConfig(windows=args.windows)
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=CalibrationConfig(samples=args.samples),
                          evaluation=evaluation)
    evals = {"evaluation": context.evaluation_tokens(),
             "second": text_sequential_windows(loaded.tokenizer, PYDOC_TOPICS,
                                               args.second_windows or args.windows,
                                               evaluation.seqlen)}
    context.calibration_tokens()
    print(f"<!-- {machine()}; eval {tuple(evals['evaluation'].shape)} + second text "
          f"{tuple(evals['second'].shape)}; calibration {args.samples}x512; "
          f"load {os.getloadavg()} -->", flush=True)
    dense = loaded.model
    from compressors.engine.modules import select_layers

    block = sum(m.weight.numel() * 4 for m in select_layers(dense).values())
    total = sum(p.numel() * 4 for p in dense.parameters())
    print(f"<!-- fp32 block Linear weights {block / MB:.1f} MB, the rest {(total - block) / MB:.1f}"
          f" MB: size bar (35% of blocks + rest) = {(0.35 * block + total - block) / MB:.1f} MB"
          " -->", flush=True)
    rows: list[IntRow] = []
    fp32 = None
    if "fp32" in only:
        fp32 = _measure_int("fp32", dense, evals, None, None, None, args.threads)
        rows.append(fp32)
    for key, (name, options) in BNB_IN_INT.items():
        if key in only:
            model, seconds, _ = quantize(dense, context, **options)
            rows.append(_measure_int(name, model, evals, seconds, None, None, args.threads))
            del model
    for key in INT_ROWS:
        if key not in only:
            continue
        name, steps = INT_SCHEMES[key]
        model = copy.deepcopy(dense)
        context.masks.clear()
        model, seconds, sections = _run_steps(model, steps, context)
        check: dict[str, Any] = {"fresh": key == "gptq4", "fresh_windows": args.fresh_windows}
        if len(steps) > 1:
            check["zeros"] = {n: ~m for n, m in context.masks.items()}
            print(f"<!-- {name}: sparsegpt {seconds['sparsegpt']:.1f} s, gptq "
                  f"{seconds['gptq']:.1f} s in the same run (ratio "
                  f"{seconds['gptq'] / seconds['sparsegpt']:.2f}) -->", flush=True)
        quant = sections.get("gptq") or sections.get("rtn")
        rows.append(_measure_int(name, model, evals, seconds.get("gptq", seconds.get("rtn")),
                                 quant, check, args.threads))
        del model
    print()
    print(int_table(rows, fp32))
    print(f"\nload average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
