"""Which tokens should an expert's statistics come from? Routed ones, or every token?

Issue 28: an expert's Hessian (or input norms) can come from the tokens its router sends it
(`calibration.experts: routed`) or from every calibration token run through every expert for
statistics only (`all`, llm-compressor's `calibrate_all_experts`). This measures both on a
mixture-of-experts model whose perplexity means something: SmolLM2-135M *upcycled* into a
Mixtral-architecture MoE (Komatsuzaki et al.'s sparse upcycling): attention, norms and
embeddings are SmolLM2's, each of `--experts` experts is SmolLM2's MLP plus a little noise
(so experts differ), and a random router sends each token to its top 2 (normalised weights:
the MoE computes close to the dense model). The router's logits are scaled so routing is
uneven, as in trained MoE models: some experts see few tokens, where the two choices differ.
The model is written once to a cache folder; no hub download.

Rows: dense (the upcycled model), then per method (sparsegpt 50%, gptq int4 g64) both
choices: perplexity on the protocol's evaluation text, seconds, the fewest and most
calibration tokens an expert saw, and how many expert matrices fell back to data-free
statistics (fewer than `MIN_EXPERT_TOKENS`). Each row runs in a fresh process.

    .venv/bin/python bench/moe.py                       # protocol: 32x512 calibration, 40x512 eval
    .venv/bin/python bench/moe.py --samples 8 --windows 8 --seqlen 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "dense": None,
    "sparsegpt-routed": ({"method": "sparsegpt", "sparsity": 0.5}, "routed"),
    "sparsegpt-all": ({"method": "sparsegpt", "sparsity": 0.5}, "all"),
    "gptq-routed": ({"method": "gptq", "bits": 4, "group_size": 64}, "routed"),
    "gptq-all": ({"method": "gptq", "bits": 4, "group_size": 64}, "all"),
}


def upcycled(folder: Path, experts: int, noise: float, skew: float) -> Path:
    """SmolLM2-135M as a Mixtral-architecture MoE, written to `folder` once."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    from compressors.io.loading import load_model

    dense = load_model("smollm2-135m").model
    source = dense.config
    config = MixtralConfig(
        vocab_size=source.vocab_size, hidden_size=source.hidden_size,
        intermediate_size=source.intermediate_size, num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        num_key_value_heads=source.num_key_value_heads, head_dim=source.head_dim,
        max_position_embeddings=source.max_position_embeddings, rms_norm_eps=source.rms_norm_eps,
        rope_parameters=source.rope_parameters, tie_word_embeddings=source.tie_word_embeddings,
        num_local_experts=experts, num_experts_per_tok=2, architectures=["MixtralForCausalLM"])
    moe = MixtralForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    state = dense.state_dict()
    with torch.no_grad():
        for name, param in moe.named_parameters():
            if name in state and state[name].shape == param.shape:
                param.copy_(state[name])
        for index, layer in enumerate(moe.model.layers):
            mlp = dense.model.layers[index].mlp
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            for e in range(experts):
                spread = noise * gate_up.std()
                layer.mlp.experts.gate_up_proj[e] = gate_up + spread * torch.randn(
                    gate_up.shape, generator=generator)
                down = mlp.down_proj.weight
                layer.mlp.experts.down_proj[e] = down + noise * down.std() * torch.randn(
                    down.shape, generator=generator)
            router = torch.randn(layer.mlp.gate.weight.shape, generator=generator)
            scale = torch.logspace(0, skew, experts).unsqueeze(1)  # some experts rarely win
            layer.mlp.gate.weight.copy_(router * scale / source.hidden_size ** 0.5)
    moe.save_pretrained(folder)
    AutoTokenizer.from_pretrained(load_model("smollm2-135m").source,
                                  local_files_only=True).save_pretrained(folder)
    return folder


def child(args: argparse.Namespace) -> None:
    """One row in this process: compress (or not), report perplexity and statistics."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    from compressors import compress
    from compressors.recipe import parse_recipe

    step, choice = ROWS[args.row] or ({"method": "magnitude", "sparsity": 0.0}, "routed")
    recipe = parse_recipe({
        "steps": [step] if ROWS[args.row] else [],
        "calibration": {"samples": args.samples, "seqlen": args.seqlen, "experts": choice},
        "evaluation": {"windows": args.windows, "seqlen": 512},
    }) if ROWS[args.row] else None
    with tempfile.TemporaryDirectory() as scratch:
        if recipe is None:
            from compressors.engine.windows import evaluation_windows
            from compressors.evaluate import perplexity
            from compressors.io.loading import load_model
            from compressors.recipe.protocol import EvaluationConfig

            loaded = load_model(args.model)
            ppl = perplexity(loaded.model, evaluation_windows(
                loaded.tokenizer, EvaluationConfig(windows=args.windows)))
            print(json.dumps({"row": args.row, "perplexity": ppl, "seconds": 0.0}))
            return
        began = time.perf_counter()
        report = compress(args.model, recipe, Path(scratch) / "out", device="cpu")
        seconds = time.perf_counter() - began
    step_report = report.steps[0].model_dump()
    section = report.section("quantization") or {}
    thin = (step_report.get("experts_without_enough_tokens")
            or section.get("experts_without_enough_tokens") or {})
    print(json.dumps({"row": args.row, "perplexity": report.metrics.after.perplexity,
                      "seconds": seconds, "fallbacks": len(thin),
                      "fewest_tokens": min(thin.values()) if thin else None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--skew", type=float, default=1.0,
                        help="router logit scales span 10^0..10^skew across experts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "compressors")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        child(args)
        return
    folder = upcycled(args.cache / f"smollm2-upcycled-{args.experts}x-{args.noise}-{args.skew}",
                      args.experts, args.noise, args.skew)
    results = []
    for row in [r for r in args.rows.split(",") if r]:
        cmd = [sys.executable, __file__, "--row", row, "--model", str(folder),
               "--samples", str(args.samples), "--seqlen", str(args.seqlen),
               "--windows", str(args.windows), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"row {row} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    lines = [f"SmolLM2-135M upcycled to {args.experts} experts (Mixtral architecture, noise "
             f"{args.noise}, router skew 10^{args.skew}); calibration {args.samples}x"
             f"{args.seqlen}, evaluation {args.windows}x512; {platform.machine()}, "
             f"{args.threads} threads; load average {os.getloadavg()}\n",
             "| row | perplexity | seconds | expert matrices on fallback |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['row']} | {r['perplexity']:.3f} | {r['seconds']:.0f} | "
              f"{r.get('fallbacks', '') if r.get('fallbacks') is not None else ''} |"
              for r in results]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
