"""`bench/quantize.py --table deploy`: the serving schemes beside llm-compressor's, one table.

Our rows (fp32, bnb int8 / nf4, GPTQ int4 g64 / int8, fp8, w8a8, awq, nvfp4) each run in a
fresh process of our venv, so each row's peak RSS is its own; llm-compressor 0.14's rows run
in its own venv (`bench/peer/llmcompressor_run.py`, set up by
`bench/peer/setup-llmcompressor.sh`), in the same benchmark run, on the very same token ids:
this script writes the protocol's calibration (32 × 512), evaluation (40 × 512) and
second-text windows to one file first, and both sides read it.

Columns: perplexity on the evaluation text and on the second text, measured on the model in
memory right after the step, with activations quantized where the scheme quantizes them
(ours: `engine.activations`; the peer's forward fake-quantizes them), size of the saved
`*.safetensors`, bits per quantized weight (scales included; ours from the step's section),
the step's seconds (the peer's: the `oneshot` call), peak RSS while the step ran (model
included), and our checkpoint's perplexity on the first `--fresh-windows` windows once
reloaded by stock `AutoModelForCausalLM.from_pretrained` in a fresh process (compressed-tensors'
forward fake-quantizes activations where the checkpoint says so), beside the same windows in
memory, and in memory with weights alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MB = 1e6
PEER_VENV = Path("/work/peer-llmc")
PEER_SCRIPT = Path(__file__).resolve().parent / "peer" / "llmcompressor_run.py"

# key -> (row name, recipe steps); the run order
OURS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "fp32": ("fp32", []),
    "bnb8": ("bnb int8 (W8A16)", [{"method": "quantize", "bits": 8}]),
    "nf4": ("bnb nf4 (W4A16)", [{"method": "quantize", "quant_type": "nf4"}]),
    "gptq4": ("gptq int4 g64 (W4A16)", [{"method": "gptq", "bits": 4, "group_size": 64}]),
    "gptq8": ("gptq int8 per channel (W8A16)", [{"method": "gptq", "bits": 8,
                                                 "group_size": -1}]),
    "fp8": ("fp8 channel, dynamic per-token fp8 acts", [{"method": "fp8"}]),
    "fp8static": ("fp8 channel, static per-tensor fp8 acts",
                  [{"method": "fp8", "activations": "static"}]),
    "w8a8": ("w8a8 smoothquant 0.8 + gptq", [{"method": "w8a8"}]),
    "w8a8rtn": ("w8a8 smoothquant 0.8 + rtn", [{"method": "w8a8", "quantizer": "rtn"}]),
    "nvfp4": ("nvfp4 a16", [{"method": "nvfp4"}]),
    "nvfp4a4": ("nvfp4 a4 (fp4 acts)", [{"method": "nvfp4", "activations": "fp4"}]),
    "awq": ("awq w4 g64 sym + rtn", [{"method": "awq", "group_size": 64}]),
    "awqgptq": ("awq w4 g64 sym + gptq", [{"method": "awq", "group_size": 64,
                                           "quantizer": "gptq"}]),
    "awqasym": ("awq w4 g64 asym + rtn", [{"method": "awq", "group_size": 64,
                                           "symmetric": False}]),
    "awqasymgptq": ("awq w4 g64 asym + gptq", [{"method": "awq", "group_size": 64,
                                                "symmetric": False, "quantizer": "gptq"}]),
}
# llm-compressor's scheme -> the row of ours it stands beside
PEER: dict[str, str] = {"dense": "fp32", "gptq_w4a16_g64": "gptq4", "fp8_dynamic": "fp8",
                        "w8a8": "w8a8", "nvfp4a16": "nvfp4", "nvfp4": "nvfp4a4",
                        "awq_w4a16_asym_g64": "awqasym"}  # the longest last
ACTIVATION_SCHEMES = {"fp8", "fp8static", "w8a8", "w8a8rtn", "nvfp4a4"}
# compressed-tensors decompresses NVFP4 to bfloat16: stock transformers loads it in that dtype
RELOAD_DTYPE = {"nvfp4": "bfloat16", "nvfp4a4": "bfloat16"}
FRESH_LOAD = """
import json, math, sys, torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM
torch.set_num_threads(int(sys.argv[3]))
dtype = getattr(torch, sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True,
                                             dtype=dtype).eval()
windows = torch.load(sys.argv[2])
nll = tokens = 0
with torch.no_grad():
    for w in windows:
        logits = model(input_ids=w.unsqueeze(0)).logits[0, :-1].float()
        nll += float(F.cross_entropy(logits, w[1:], reduction="sum")); tokens += w.numel() - 1
print(math.exp(nll / tokens))
"""


def _vm_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Restart the kernel's high-water mark of this process's RSS, so a row's peak is the
    step's (model included), as the peer measures its `oneshot`."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def fresh_perplexity(folder: Path, windows, threads: int, dtype: str) -> float | str:
    """Perplexity of the checkpoint loaded by stock transformers in a new process, or why it
    did not load."""
    import torch

    path = folder / "windows.pt"
    torch.save(windows, path)
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(folder), str(path),
                           str(threads), dtype], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    path.unlink()
    if done.returncode:
        return (done.stderr.strip().splitlines() or ["?"])[-1][:300]
    return float(done.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    """One row of ours in this process; prints one JSON line."""
    import torch
    from safetensors import safe_open

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    from quantize import _run_steps  # bench/quantize.py, beside this file

    from compressors.engine.activations import remove_input_quantization
    from compressors.engine.context import StepContext
    from compressors.evaluate import perplexity
    from compressors.io.loading import load_model, save_checkpoint, size_on_disk
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    with safe_open(str(args.windows_file), framework="pt") as handle:
        names = list(handle.keys())  # safe_open is not iterable
        windows = {key: handle.get_tensor(key) for key in names}
    name, steps = OURS[args.row]
    loaded = load_model("smollm2-135m")
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=CalibrationConfig(samples=len(windows["calibration"])),
                          evaluation=EvaluationConfig(windows=len(windows["evaluation"])))
    context.calibration_windows = windows["calibration"]
    model = loaded.model
    _reset_peak()
    seconds: float | None = None
    section: dict[str, Any] = {}
    if steps:
        model, step_seconds, sections = _run_steps(model, steps, context)
        seconds = sum(step_seconds.values())
        section = sections.get(steps[-1]["method"], {})
    peak = _vm_bytes("VmHWM")
    result: dict[str, Any] = {
        "row": args.row, "name": name, "seconds": seconds, "peak_rss_bytes": peak,
        "perplexity": perplexity(model, windows["evaluation"]),
        "second": perplexity(model, windows["second"]),
        "bits_per_weight": section.get("bits_per_weight"),
        "precision": section.get("precision")}
    fresh = windows["evaluation"][:args.fresh_windows]
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        folder = Path(tmp)
        save_checkpoint(model, None, folder)
        result["size_bytes"] = size_on_disk(folder)
        if steps:
            dtype = RELOAD_DTYPE.get(args.row, "float32")
            result["reload_dtype"] = dtype
            result["fresh_perplexity"] = fresh_perplexity(folder, fresh, args.threads, dtype)
            result["in_memory_same_windows"] = (
                result["perplexity"] if len(fresh) == len(windows["evaluation"])
                else perplexity(model, fresh))
            remove_input_quantization(model)
            result["weights_only_perplexity"] = perplexity(model, fresh)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result), flush=True)


def _ours(keys: list[str], windows_file: Path, args: argparse.Namespace) -> list[dict]:
    results = []
    for key in keys:
        began = time.perf_counter()
        command = [sys.executable, __file__, "--row", key, "--windows-file", str(windows_file),
                   "--threads", str(args.threads), "--fresh-windows", str(args.fresh_windows)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            tail = done.stderr.strip().splitlines()
            results.append({"row": key, "name": OURS[key][0],
                            "error": (tail or ["?"])[-1][:300]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"<!-- ours {key}: {time.perf_counter() - began:.0f} s; "
              f"{json.dumps(results[-1])} -->", flush=True)
    return results


def _peer(schemes: list[str], windows_file: Path, out: Path, model_folder: str) -> list[dict]:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"<!-- no peer venv at {PEER_VENV}: bash bench/peer/setup-llmcompressor.sh -->")
        return []
    results = []
    for scheme in schemes:
        began = time.perf_counter()
        folder = out / scheme
        command = [str(python), str(PEER_SCRIPT), "--model", model_folder, "--windows",
                   str(windows_file), "--scheme", scheme, "--out", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()
            results.append({"scheme": scheme, "error": (tail or ["?"])[-1][:300]})
        else:
            results.append(json.loads((folder / "result.json").read_text()))
        print(f"<!-- peer {scheme}: {time.perf_counter() - began:.0f} s -->", flush=True)
    return results


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(ours: list[dict], peers: list[dict]) -> str:
    """One table: each of our rows, then the peer's row for the same scheme beside it."""
    fp32 = next((r for r in ours if r["row"] == "fp32" and "error" not in r), None)
    lines = ["| scheme | by | ppl SOTU 2000- | Δ vs fp32 | ppl pydoc:topics | size MB | "
             "bits/weight | step s | peak RSS MB | stock reload, fresh process: ppl on the "
             "first windows (in memory) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def delta(value: float) -> str:
        return "-" if fp32 is None else f"{100 * (value / fp32['perplexity'] - 1):+.2f}%"

    by_row = {PEER[p["scheme"]]: p for p in peers}
    for row in ours:
        if "error" in row:
            lines.append(f"| {row['name']} | ours | failed: {row['error']} |||||||||")
            continue
        reloaded = row.get("fresh_perplexity")
        fresh = ("-" if reloaded is None else f"did not load: {reloaded}"
                 if isinstance(reloaded, str) else
                 f"{reloaded:.3f} in {row['reload_dtype']} ({row['in_memory_same_windows']:.3f}"
                 f"; weights only {row['weights_only_perplexity']:.3f})")
        lines.append(
            f"| {row['name']} | ours | {row['perplexity']:.3f} | {delta(row['perplexity'])} | "
            f"{row['second']:.3f} | {row['size_bytes'] / MB:.1f} | "
            f"{_cell(row['bits_per_weight'], '.3f')} | {_cell(row['seconds'], '.1f')} | "
            f"{row['peak_rss_bytes'] / MB:.0f} | {fresh} |")
        peer = by_row.get(row["row"])
        if peer is None:
            continue
        if "error" in peer:
            lines.append(f"| {peer['scheme']} | llm-compressor | failed: {peer['error']} "
                         "|||||||||")
            continue
        peak = peer.get("oneshot_peak_rss_bytes") or peer["peak_rss_bytes"]
        lines.append(
            f"| {peer['label']} | llm-compressor | {peer['perplexity']:.3f} | "
            f"{delta(peer['perplexity'])} | {_cell(peer.get('second_perplexity'), '.3f')} | "
            f"{peer['size_bytes'] / MB:.1f} | - | {_cell(peer['seconds'], '.1f')} | "
            f"{peak / MB:.0f} | - |")
    return "\n".join(lines)


def bars(ours: list[dict], peers: list[dict]) -> str:
    """The issue's bars, each with the two numbers it compares."""
    mine = {r["row"]: r for r in ours if "error" not in r}
    theirs = {PEER[p["scheme"]]: p for p in peers if "error" not in p}
    lines = []
    for key, slack in (("fp8", 1.002), ("w8a8", 1.0), ("awqasym", 1.0), ("nvfp4", 1.0),
                       ("nvfp4a4", 1.0)):
        if key in mine and key in theirs:
            a, b = mine[key], theirs[key]
            lines.append(
                f"- {key}: perplexity {a['perplexity']:.3f} vs {b['perplexity']:.3f} "
                f"({'met' if a['perplexity'] <= b['perplexity'] * slack else 'NOT met'}); "
                f"size {a['size_bytes'] / MB:.1f} vs {b['size_bytes'] / MB:.1f} MB "
                f"({'met' if a['size_bytes'] <= b['size_bytes'] else 'NOT met'}); seconds "
                f"{_cell(a['seconds'], '.1f')} vs {_cell(b['seconds'], '.1f')} "
                f"({'met' if (a['seconds'] or 0) <= (b['seconds'] or 0) else 'NOT met'})")
    four = [mine[k]["perplexity"] for k in ("awq", "awqgptq", "awqasym", "awqasymgptq")
            if k in mine]
    if four and "gptq4" in mine:
        lines.append(f"- best awq 4-bit {min(four):.3f} vs our gptq int4 g64 "
                     f"{mine['gptq4']['perplexity']:.3f} (and 26.90 recorded)")
    for key, row in mine.items():
        if isinstance(row.get("fresh_perplexity"), str):
            lines.append(f"- {key}: stock transformers did not load it: {row['fresh_perplexity']}")
        elif "fresh_perplexity" in row:
            change = row["fresh_perplexity"] / row["in_memory_same_windows"] - 1
            kind = "activations quantized" if key in ACTIVATION_SCHEMES else "weight-only"
            lines.append(f"- {key} ({kind}) reloaded by stock transformers in a fresh process: "
                         f"{100 * change:+.3f}% against the model in memory "
                         f"({'within' if abs(change) <= 0.005 else 'OUTSIDE'} ±0.5%)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """Write the windows, run our rows and the peer's, print the table and the bars."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent / "peer"))
    from windows import write_windows  # bench/peer/windows.py

    from compressors.engine.windows import text_sequential_windows
    from compressors.io.loading import load_model
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
    from compressors.recipe.text import PYDOC_TOPICS

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-deploy-"))
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model("smollm2-135m")
    evaluation = EvaluationConfig(windows=args.windows)
    second = text_sequential_windows(loaded.tokenizer, PYDOC_TOPICS,
                                     args.second_windows or args.windows, evaluation.seqlen)
    windows_file = out / "windows.safetensors"
    metadata = write_windows(windows_file, "smollm2-135m", CalibrationConfig(samples=args.samples),
                             evaluation, loaded.tokenizer, second=second)
    del loaded
    print(f"<!-- windows {windows_file}: calibration {args.samples}x512, evaluation "
          f"{args.windows}x512, second text {tuple(second.shape)}; {args.threads} threads; "
          f"load {os.getloadavg()} -->", flush=True)
    keys = [k for k in OURS if not args.only or k in args.only]
    ours = _ours(keys, windows_file, args)
    schemes = [s for s, k in PEER.items() if k in keys] if not args.no_peer else []
    peers = _peer(schemes, windows_file, out / "peer", metadata["model_folder"])
    print()
    print(table(ours, peers))
    print()
    print(bars(ours, peers))
    (out / "results.json").write_text(json.dumps({"ours": ours, "peer": peers}, indent=1))
    print(f"\n{out / 'results.json'}; load average (1, 5, 15 min): {os.getloadavg()}")


def child_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--row", choices=list(OURS), required=True)
    parser.add_argument("--windows-file", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh-windows", type=int, default=8)
    child(parser.parse_args())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    child_main()
