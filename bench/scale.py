"""Scale: random Llama models of ~0.5B, ~1.5B and ~4B parameters and a random Qwen3-MoE-shaped
model of ~2.4B compressed in memory-capped processes, held in memory, onloaded and streamed.

    .venv/bin/python bench/scale.py   # dense sizes (wanda, sparsegpt), the 2.4B MoE (wanda, gptq)
    .venv/bin/python bench/scale.py --sizes 0.5b --methods wanda --out bench/results/scale.md
    .venv/bin/python bench/scale.py --sizes qwen3moe-2.4b --placements in_memory streamed

Models are built from a config with random weights (quality is not measured here, memory and
time are), written once as bf16 safetensors shards into `~/.cache/compressors/bench-scale/`,
block by block, so writing them never needs the whole model in RAM. All dense sizes share one
width (hidden 2048, MLP 5632, 16 heads, SmolLM2's tokenizer) and differ in depth, so the work
per parameter is the same at every size and seconds per billion parameters shows whether the
engine adds anything that grows faster than the model.

The MoE models have Qwen3-30B-A3B's block (hidden 2048, 32 query and 4 key-value heads of 128
with q/k norms, experts of width 768, 8 per token) with fewer blocks: `qwen3moe-2.4b` has 7
blocks of 64 experts, `qwen3moe-3.3b` 5 blocks of Qwen3's 128. They are written as transformers
saves Qwen3-MoE (one matrix per expert, `mlp.experts.<e>.gate_proj.weight`), so a streamed run
converts every block on the way in and out. Their default methods are wanda (routed tokens, one
pass per block) and gptq (every token through every expert for the Hessians, in passes of at
most 1 GiB of sums: `ops.hessian_passes`); gptq rows publish dense weights holding the int4
values (group 128).

Each run is a child process placed in a cgroup of its own whose memory limit is the cap
(cgroup v1 `memory.limit_in_bytes` or v2 `memory.max`, under this process's cgroup); the
child also gets `COMPRESSORS_WORKER_MEMORY_LIMIT` = the cap, which is what the memory estimate
plans against. A placement that cannot fit is reported as the estimate's refusal, not run.
Peak RSS is the child's high-water mark (`compressors.peak_memory`). The calibration budget is
small (8 windows of 256 tokens) and evaluation is off: at these sizes the full protocol would
take hours on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDTH = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16,
         "num_key_value_heads": 8}
# Qwen3-30B-A3B's block (its config.json), the number of experts and blocks aside
MOE_WIDTH = {"hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
             "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
             "num_experts_per_tok": 8, "norm_topk_prob": True}


@dataclass(frozen=True)
class Spec:
    """A benchmark model: a dense Llama, or with `experts` a Qwen3-MoE."""

    layers: int
    experts: int = 0
    width: dict[str, Any] = field(default_factory=dict)  # default: WIDTH or MOE_WIDTH

    @property
    def methods(self) -> list[str]:
        return ["wanda", "gptq"] if self.experts else ["wanda", "sparsegpt"]

    def config(self, vocab: int) -> Any:
        from transformers import LlamaConfig, Qwen3MoeConfig

        common = {"vocab_size": vocab, "num_hidden_layers": self.layers,
                  "tie_word_embeddings": False, "dtype": "bfloat16"}
        if not self.experts:
            return LlamaConfig(architectures=["LlamaForCausalLM"], **common,
                               **(self.width or WIDTH))
        return Qwen3MoeConfig(architectures=["Qwen3MoeForCausalLM"], num_experts=self.experts,
                              **common, **(self.width or MOE_WIDTH))


SIZES = {"0.5b": Spec(6), "1.5b": Spec(25), "4b": Spec(74),
         "qwen3moe-2.4b": Spec(7, experts=64), "qwen3moe-3.3b": Spec(5, experts=128)}
DEFAULT_SIZES = ["0.5b", "1.5b", "4b", "qwen3moe-2.4b"]
GB = 1e9

CHILD = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(2)
import compressors
from compressors.peak_memory import peak_rss_bytes
from compressors.memory import DoesNotFit
from compressors.recipe import parse_recipe
recipe = parse_recipe(json.loads(sys.argv[2]))
began = time.perf_counter()
try:
    report = compressors.compress(sys.argv[1], recipe, Path(sys.argv[3]), device="cpu")
except DoesNotFit as refused:
    print(json.dumps({"refused": str(refused)}))
    sys.exit(0)
print(json.dumps({"seconds": time.perf_counter() - began,
                  "peak": peak_rss_bytes(),
                  "placement": report.memory.placement,
                  "estimate": report.memory.estimated_peak_bytes,
                  "perplexity": report.metrics.after.perplexity}))
"""

# Outside the cap: the published checkpoint must load with stock transformers (bf16, so the
# 4B model's 8 GB fit this machine) and be pruned (or quantized) where it says: the last
# block's down projection (every expert's, in a MoE), its zeros, and the most distinct values
# in a 128-wide group of its first rows (at most 16 on gptq's int4 grid).
LOADS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
mlp = model.model.layers[-1].mlp
experts = getattr(mlp, "experts", None)
weight = experts.down_proj if experts is not None else mlp.down_proj.weight
rows = (weight[0] if weight.ndim == 3 else weight)[:8].float()
levels = max(int(group.unique().numel()) for row in rows for group in row.split(128))
print(json.dumps({"zeros": float((weight == 0).float().mean()), "levels": levels}))
"""


def model_folder(size: str) -> Path:
    return Path.home() / ".cache" / "compressors" / "bench-scale" / size


def build_model(size: str) -> Path:
    """Write a random bf16 model of `size` block by block (skipped when already there), in
    the layout transformers saves it in (a MoE's experts one matrix each)."""
    folder = model_folder(size)
    if (folder / "config.json").is_file():
        return folder
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.core_model_loading import revert_weight_conversion

    from compressors.assets import smollm2_path
    from compressors.io.stream import ShardWriter

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path(), local_files_only=True)
    config = SIZES[size].config(len(tokenizer))
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    staging = folder.with_name(folder.name + f".building-{uuid.uuid4().hex[:6]}")
    writer = ShardWriter(staging)
    generator = torch.Generator().manual_seed(0)
    groups: dict[str, dict[str, tuple]] = {}
    for name, param in skeleton.state_dict().items():
        key = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else "outer"
        groups.setdefault(key, {})[name] = tuple(param.shape)
    for names in groups.values():
        tensors = {}
        for name, shape in names.items():
            if len(shape) == 1:  # norms start at one
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shape, generator=generator) * 0.02).bfloat16()
        writer.write(revert_weight_conversion(skeleton, tensors))
    writer.close()
    config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def _cgroup_parent() -> tuple[Path, str] | None:
    """This process's memory cgroup and its version, if we may create children in it."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return (base, "v1") if os.access(base, os.W_OK) else None
        if controllers == "":
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            if (base / "memory.max").exists() and os.access(base, os.W_OK):
                return base, "v2"
    return None


def capped_run(model: Path | str, recipe: dict, out: Path, cap: int) -> dict:
    """Run the child in a fresh cgroup limited to `cap` bytes; its JSON result."""
    parent = _cgroup_parent()
    env = {**os.environ, "COMPRESSORS_WORKER_MEMORY_LIMIT": str(cap), "OMP_NUM_THREADS": "2",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    group = None
    if parent is not None:
        base, version = parent
        group = base / f"bench-scale-{uuid.uuid4().hex[:8]}"
        group.mkdir()
        limit = "memory.limit_in_bytes" if version == "v1" else "memory.max"
        (group / limit).write_text(str(cap))
    command = [sys.executable, "-c", CHILD, str(model), json.dumps(recipe), str(out)]
    try:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=ROOT,
                                 preexec_fn=(lambda: (group / "cgroup.procs").write_text(
                                     str(os.getpid()))) if group else None)
        stdout, stderr = child.communicate()
    finally:
        if group is not None:
            group.rmdir()
    if child.returncode != 0:
        killed = child.returncode in (-9, 137)
        return {"error": "killed (out of memory)" if killed else stderr.strip()[-300:]}
    return json.loads(stdout.strip().splitlines()[-1])


def loads_pruned(out: Path, method: str) -> str:
    """`from_pretrained` on the output, uncapped: the last block's down_proj zero share (or,
    quantized, its most distinct values in a group of 128)."""
    done = subprocess.run([sys.executable, "-c", LOADS, str(out)], capture_output=True,
                          text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        return "fails: " + done.stderr.strip()[-120:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if method == "gptq":
        return f"yes, {found['levels']} values per group of 128"
    return f"yes, {found['zeros']:.0%} zeros"


def step_of(method: str) -> dict:
    """The benchmark's step: 50% unstructured for the pruning methods, int4 in groups of 128
    for gptq."""
    if method == "gptq":
        return {"method": "gptq", "group_size": 128}
    return {"method": method, "sparsity": 0.5}


def smollm2_rows(cap: int) -> list[dict]:
    """SmolLM2 wanda 50%: held in memory without a cap, then with placement auto under `cap`
    (below what holding it in memory needs); the perplexities must agree."""
    rows = []
    for label, limit, placement in (("uncapped", 64 * 2**30, "in_memory"),
                                    ("capped", cap, "auto")):
        recipe = {"steps": [{"method": "wanda", "sparsity": 0.5}], "placement": placement,
                  "calibration": {"samples": 8, "seqlen": 256},
                  "evaluation": {"windows": 4, "seqlen": 512}}
        out = Path("/tmp") / f"bench-scale-{uuid.uuid4().hex[:8]}"
        result = capped_run("smollm2-135m", recipe, out, limit)
        subprocess.run(["rm", "-rf", str(out)], check=False)
        rows.append({"run": label, "cap": limit, **result})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def render_smollm2(rows: list[dict]) -> str:
    lines = ["\nSmolLM2-135M wanda 50% (calibration 8x256, evaluation 4x512):\n",
             "| run | cap MB | placement | estimate MB | peak RSS MB | perplexity | seconds |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        cap = "none" if row["run"] == "uncapped" else f"{row['cap'] / 1e6:.0f}"
        if "seconds" not in row:
            lines.append(f"| {row['run']} | {cap} | refused or failed: "
                         f"{(row.get('refused') or row.get('error', ''))[:80]} | | | | |")
            continue
        lines.append(f"| {row['run']} | {cap} | {row['placement']} | "
                     f"{row['estimate'] / 1e6:.0f} | {row['peak'] / 1e6:.0f} | "
                     f"{row['perplexity']:.4f} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def streamed_need(folder: Path, methods: list[str]) -> int:
    """1.1 × the largest streamed estimate of the methods: the smallest cap every streamed
    run fits. At 0.5B the embeddings and LM head (49k × 2048, untied) and the runtime
    outweigh 0.4 × fp32, so a fixed fraction would refuse every placement there."""
    from compressors.memory import estimate_source
    from compressors.recipe import parse_recipe

    peaks = [estimate_source(folder, parse_recipe(
        {"steps": [step_of(method)], "placement": "streamed",
         "calibration": {"samples": 8, "seqlen": 256}, "evaluation": {"windows": 0}}))
        .peak("streamed") for method in methods]
    return int(1.1 * max(peaks))


def bar_bytes(folder: Path, samples: int, seqlen: int) -> int:
    """Issue 15's bar for a streamed run: 1.5 × (one block + embeddings + LM head, fp32) +
    the calibration activations (a block's inputs and outputs, fp32) + a 0.5 GB runtime."""
    from compressors.memory import read_shape

    shape = read_shape(folder)
    held = 4 * (shape.block_parameters + shape.outer_parameters)
    return int(1.5 * held + 2 * samples * seqlen * shape.hidden * 4 + 0.5 * GB)


def fp32_bytes(folder: Path) -> int:
    from compressors.memory import read_shape

    return read_shape(folder).parameters * 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, choices=list(SIZES))
    parser.add_argument("--methods", nargs="+",
                        help="default: wanda and sparsegpt on the dense sizes, wanda and gptq "
                        "on the MoE")
    parser.add_argument("--placements", nargs="+",
                        default=["in_memory", "onloaded", "streamed"])
    parser.add_argument("--cap-fraction", type=float, default=0.4,
                        help="memory cap as a fraction of the model's fp32 size (default "
                        "0.4), raised to 1.1 x the largest streamed estimate where that is more")
    parser.add_argument("--smollm2-cap-mb", type=int, default=800,
                        help="also run SmolLM2 wanda under this cap (0: skip; default 800)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    small = smollm2_rows(args.smollm2_cap_mb * 10**6) if args.smollm2_cap_mb else []
    rows = []
    for size in args.sizes:
        folder = build_model(size)
        methods = args.methods or SIZES[size].methods
        full = fp32_bytes(folder)
        cap = max(int(full * args.cap_fraction), streamed_need(folder, methods))
        disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        for method in methods:
            for placement in args.placements:
                recipe = {"steps": [step_of(method)],
                          "placement": placement,
                          "calibration": {"samples": 8, "seqlen": 256},
                          "evaluation": {"windows": 0}}
                out = Path("/tmp") / f"bench-scale-{uuid.uuid4().hex[:8]}"
                began = time.perf_counter()
                result = capped_run(folder, recipe, out, cap)
                if "seconds" in result:
                    result["loads"] = loads_pruned(out, method)
                subprocess.run(["rm", "-rf", str(out)], check=False)
                rows.append({"size": size, "experts": SIZES[size].experts,
                             "parameters": full // 4, "fp32": full, "disk": disk,
                             "bar": bar_bytes(folder, 8, 256),
                             "cap": cap, "method": method, "placement": placement,
                             "wall": time.perf_counter() - began, **result})
                print(json.dumps(rows[-1]), flush=True)
    table = render(rows) + (render_smollm2(small) if small else "")
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


def render(rows: list[dict]) -> str:
    load = os.getloadavg()
    lines = [f"load average before/after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
             f"{os.cpu_count()} CPUs, cgroup memory cap = run limit\n",
             "| model | parameters | fp32 GB | on disk GB | method | placement | cap GB "
             "| peak RSS GB | streamed bar GB | seconds | s / B params | from_pretrained |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        if "seconds" in row:
            result = (f"{row['peak'] / GB:.2f} | {row['bar'] / GB:.2f} | {row['seconds']:.0f} | "
                      f"{row['seconds'] / (row['parameters'] / 1e9):.0f} | {row['loads']}")
        else:
            reason = row.get("refused") or row.get("error", "")
            result = f"— | {row['bar'] / GB:.2f} | — | — | refused: {reason[:80]}"
        lines.append(f"| {row['size']} | {row['parameters'] / 1e9:.2f}B | {row['fp32'] / GB:.1f} "
                     f"| {row['disk'] / GB:.1f} | {row['method']} | {row['placement']} | "
                     f"{row['cap'] / GB:.1f} | {result} |")
    per_b: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row.get("placement") == "streamed" and "seconds" in row:
            family = f"MoE, {row['experts']} experts" if row["experts"] else "dense"
            per_b.setdefault((row["method"], family), []).append(
                row["seconds"] / (row["parameters"] / 1e9))
    for (method, family), values in per_b.items():
        lines.append(f"\n{method} streamed ({family}): seconds per billion parameters from "
                     f"smallest to largest {' / '.join(f'{v:.0f}' for v in values)} "
                     f"(max/min {max(values) / min(values):.2f}, median "
                     f"{statistics.median(values):.0f})")
    for row in rows:
        if row["experts"] and row.get("placement") == "streamed" and "seconds" in row:
            lines.append(f"\n{row['size']} {row['method']} streamed: fp32 weights "
                         f"{row['fp32'] / row['cap']:.1f} x the cap, peak RSS "
                         f"{row['peak'] / row['cap']:.0%} of it")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
