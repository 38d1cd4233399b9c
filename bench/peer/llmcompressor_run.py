"""llm-compressor 0.14 as a peer of our quantization schemes, on the protocol's own windows.

Runs INSIDE the peer venv (bench/peer/setup-llmcompressor.sh); it never imports our
`compressors` package. Inputs: the model folder (an HF folder of SmolLM2-135M), the
`windows.safetensors` written by bench/peer/windows.py in our venv (`calibration` [32, 512],
`evaluation` [40, 512], int64), a scheme name and an output folder.

    /work/peer-llmc/bin/python bench/peer/llmcompressor_run.py \
        --model ~/.cache/compressors/smollm2-135m-hf --windows /tmp/peer/windows.safetensors \
        --scheme fp8_dynamic --out /tmp/peer/fp8_dynamic
    # --scheme all: every scheme, one fresh process each, then the table

For each scheme: build llm-compressor's recipe (SCHEMES below), run `oneshot` on the
model in memory with the protocol's calibration windows as a dataset of `input_ids` (no
shuffling, llm-compressor's default batch size 1 and truncation collator), timing `oneshot`
alone; measure perplexity on the evaluation windows with the in-memory model right after
`oneshot` (its forward fake-quantizes weights and, where the scheme quantizes them,
activations): exp(mean NLL over all predicted tokens), one window at a time, float32, 2 torch
threads, the same formula as `compressors.evaluate.perplexity`; then save the compressed
checkpoint (`save_pretrained(out, save_compressed=True)`) and report its weight files' size.
Writes `OUT/result.json`: {scheme, perplexity, seconds, size_bytes, peak_rss_bytes, ...}.

Schemes whose llm-compressor examples calibrate no data (FP8_DYNAMIC, NVFP4A16: weight
observers only, activations dynamic or none) run `oneshot` without a dataset, as those
examples do; `--calibrate always` passes the windows anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

THREADS = 2
# scheme -> (label, needs calibration data per llm-compressor's own examples)
SCHEMES: dict[str, tuple[str, bool]] = {
    "dense": ("fp32 (no oneshot)", False),
    "fp8_dynamic": ("FP8_DYNAMIC (QuantizationModifier)", False),
    "w8a8": ("SmoothQuant 0.8 + GPTQ W8A8", True),
    "gptq_w4a16_g64": ("GPTQ W4A16 g64", True),
    "awq_w4a16_asym_g64": ("AWQ + RTN W4A16 asym g64", True),
    "nvfp4a16": ("NVFP4A16 (QuantizationModifier)", False),
    "nvfp4": ("NVFP4 W4A4 (QuantizationModifier)", True),
}
ORDER = list(SCHEMES)
MB = 1e6


# ---------------------------------------------------------------- memory

def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> None:
    """Restart the kernel's high-water mark of this process's RSS (VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- recipes

def _int_group(bits: int, group: int, symmetric: bool):
    """A config group: `bits`-bit integer weights in groups of `group` columns, no activations."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                               strategy="group", group_size=group)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def build_recipe(scheme: str) -> list:
    """llm-compressor's modifiers for `scheme`, as its examples write them; lm_head ignored."""
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    ignore = ["lm_head"]
    if scheme == "fp8_dynamic":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    if scheme == "w8a8":
        return [SmoothQuantModifier(smoothing_strength=0.8),
                GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore)]
    if scheme == "gptq_w4a16_g64":
        # W4A16 is symmetric int4 in groups of 128; SmolLM2's hidden size 576 is not a
        # multiple of 128, so groups of 64 (9 per row of q/k/v/gate/up, 24 per down row)
        return [GPTQModifier(config_groups=_int_group(4, 64, symmetric=True), ignore=ignore)]
    if scheme == "awq_w4a16_asym_g64":
        # W4A16_ASYM with group 64; AWQ's scale search then round-to-nearest (min-max
        # observer), duo_scaling "both" as in llm-compressor's examples/awq/llama_example.py
        return [AWQModifier(duo_scaling="both"),
                QuantizationModifier(config_groups=_int_group(4, 64, symmetric=False),
                                     ignore=ignore)]
    if scheme == "nvfp4a16":
        return [QuantizationModifier(targets="Linear", scheme="NVFP4A16", ignore=ignore)]
    if scheme == "nvfp4":
        return [QuantizationModifier(targets="Linear", scheme="NVFP4", ignore=ignore)]
    raise ValueError(f"unknown scheme {scheme!r}; one of {ORDER}")


# ---------------------------------------------------------------- measurement

def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def load_windows(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """Calibration, evaluation and (when the file has it) second-text windows, checked
    against the digests our side wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        calibration = handle.get_tensor("calibration").to(torch.int64)
        evaluation = handle.get_tensor("evaluation").to(torch.int64)
        names = list(handle.keys())  # safe_open has no __contains__
        second = handle.get_tensor("second").to(torch.int64) if "second" in names else None
    for name, tensor in (("calibration", calibration), ("evaluation", evaluation),
                         ("second", second)):
        expected = metadata.get(f"{name}_sha256")
        if tensor is not None and expected is not None and digest(tensor) != expected:
            raise SystemExit(f"{path}: the {name} windows do not match their digest")
    return calibration, evaluation, second, metadata


@torch.no_grad()
def perplexity(model, windows: torch.Tensor) -> float:
    """exp(mean NLL over every predicted token), one window at a time: the formula of
    `compressors.evaluate.perplexity` for a model held in memory."""
    total_nll, total_tokens = 0.0, 0
    for window in windows:
        ids = window.unsqueeze(0)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        total_nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        total_tokens += ids.shape[1] - 1
    return math.exp(total_nll / total_tokens)


def quantized_modules(model) -> dict[str, int]:
    """How many modules the evaluation forward fake-quantizes: weights, and input activations
    (what shows that a scheme's activations really are quantized in the measured forward)."""
    counts = {"weights": 0, "input_activations": 0}
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or not getattr(module, "quantization_enabled", True):
            continue
        counts["weights"] += scheme.weights is not None
        counts["input_activations"] += scheme.input_activations is not None
    return counts


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {"python": platform.python_version()}
    for name in ("llmcompressor", "compressed-tensors", "transformers", "torch", "accelerate",
                 "datasets"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def cpu_name() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def allow_cpu() -> None:
    """llm-compressor 0.14's AWQ pins its cached activations (`IntermediatesCache.pin_memory`,
    for non-blocking copies to a GPU), which raises "Cannot access accelerator device" on a
    machine without one. Pinning changes where the bytes live, never their values: on a CPU
    machine it is skipped, so the peer computes what it would compute on a GPU host."""
    if torch.cuda.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def run_one(scheme: str, model_dir: Path, windows_path: Path, out: Path,
            calibrate: str) -> dict:
    torch.set_num_threads(THREADS)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM

    label, needs_data = SCHEMES[scheme]
    calibration, evaluation, second, metadata = load_windows(windows_path)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"scheme": scheme, "label": label, "model": str(model_dir),
                    "windows": str(windows_path), "windows_metadata": metadata,
                    "calibration_shape": list(calibration.shape),
                    "evaluation_shape": list(evaluation.shape),
                    "calibration_sha256": digest(calibration),
                    "evaluation_sha256": digest(evaluation),
                    "threads": torch.get_num_threads(), "cpu": cpu_name(),
                    "versions": versions(), "load_before": os.getloadavg()}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 local_files_only=True)
    model.eval()
    result["rss_loaded_bytes"] = _status_bytes("VmRSS")
    peaks = [peak_rss()]
    use_data = {"auto": needs_data, "always": scheme != "dense", "never": False}[calibrate]
    result["calibration_data"] = use_data
    seconds = None
    if scheme != "dense":
        from datasets import Dataset
        from llmcompressor import oneshot

        allow_cpu()
        recipe = build_recipe(scheme)
        kwargs: dict = {}
        if use_data:
            kwargs = dict(dataset=Dataset.from_dict({"input_ids": calibration.tolist()}),
                          num_calibration_samples=len(calibration),
                          max_seq_length=calibration.shape[1],
                          shuffle_calibration_samples=False)
        reset_peak()
        began = time.perf_counter()
        oneshot(model=model, recipe=recipe, **kwargs)
        seconds = time.perf_counter() - began
        result["oneshot_peak_rss_bytes"] = peak_rss()
        peaks.append(result["oneshot_peak_rss_bytes"])
        result["recipe"] = [repr(m) for m in recipe]
    result["seconds"] = seconds
    result["quantized_modules"] = quantized_modules(model)
    began = time.perf_counter()
    result["perplexity"] = perplexity(model, evaluation)
    result["eval_seconds"] = time.perf_counter() - began
    if second is not None:
        result["second_perplexity"] = perplexity(model, second)
    checkpoint = out / "checkpoint"
    if scheme == "dense":
        model.save_pretrained(checkpoint)
    else:
        model.save_pretrained(checkpoint, save_compressed=True)
    result["size_bytes"] = weight_bytes(checkpoint)
    peaks.append(peak_rss())
    result["peak_rss_bytes"] = max(peaks)
    result["load_after"] = os.getloadavg()
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("scheme", "perplexity", "seconds", "size_bytes",
                                             "peak_rss_bytes")}), flush=True)
    return result


# ---------------------------------------------------------------- all schemes

def table(results: list[dict]) -> str:
    dense = next((r for r in results if r["scheme"] == "dense" and "perplexity" in r), None)
    lines = ["| scheme (llm-compressor 0.14) | perplexity | Δ vs fp32 | size MB | oneshot s | "
             "calibration data | oneshot peak RSS MB | load (1 min) before/after |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} | | | | | | |")
            continue
        delta = ("-" if dense is None or r is dense
                 else f"{100 * (r['perplexity'] / dense['perplexity'] - 1):+.2f}%")
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        peak = r.get("oneshot_peak_rss_bytes")
        lines.append(
            f"| {r['label']} | {r['perplexity']:.3f} | {delta} | {r['size_bytes'] / MB:.1f} | "
            f"{secs} | {'32 x 512' if r['calibration_data'] else 'none'} | "
            f"{'-' if peak is None else f'{peak / MB:.0f}'} | "
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |")
    return "\n".join(lines)


def run_all(schemes: list[str], args: argparse.Namespace) -> None:
    results = []
    for scheme in schemes:
        folder = args.out / scheme
        command = [sys.executable, __file__, "--model", str(args.model), "--windows",
                   str(args.windows), "--scheme", scheme, "--out", str(folder),
                   "--calibrate", args.calibrate]
        print(f"== {scheme}: {time.strftime('%H:%M:%S')} load {os.getloadavg()}", flush=True)
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        (args.out / f"{scheme}.log").parent.mkdir(parents=True, exist_ok=True)
        (args.out / f"{scheme}.log").write_text(done.stdout + done.stderr)
        if done.returncode == 0:
            results.append(json.loads((folder / "result.json").read_text()))
        else:
            tail = (done.stderr or done.stdout).strip().splitlines()
            error = next((line for line in reversed(tail) if line.strip()), "?")[:300]
            results.append({"scheme": scheme, "label": SCHEMES[scheme][0], "error": error})
        print(f"   {time.perf_counter() - began:.0f} s in all; "
              f"{'ok' if done.returncode == 0 else 'FAILED: ' + results[-1]['error']}",
              flush=True)
    print()
    print(table(results))
    summary = args.out / "results.json"
    summary.write_text(json.dumps(results, indent=1))
    print(f"\n{summary}; load average now {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="HF folder of the model")
    parser.add_argument("--windows", type=Path, required=True,
                        help="windows.safetensors from bench/peer/windows.py")
    parser.add_argument("--scheme", required=True, nargs="+",
                        help=f"one or more of {ORDER}, or 'all'")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--calibrate", choices=("auto", "always", "never"), default="auto",
                        help="pass the calibration windows to oneshot: auto = as "
                             "llm-compressor's example for the scheme does")
    args = parser.parse_args()
    schemes = ORDER if args.scheme == ["all"] else args.scheme
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown:
        parser.error(f"unknown scheme(s) {unknown}; choose from {ORDER} or 'all'")
    if len(schemes) == 1:
        run_one(schemes[0], args.model, args.windows, args.out, args.calibrate)
    else:
        run_all(schemes, args)


if __name__ == "__main__":
    main()
