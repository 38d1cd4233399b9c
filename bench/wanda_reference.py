"""Our Wanda against a line-by-line port of the paper's reference code, on SmolLM2.

The reference (Sun et al., `lib/prune.py: prune_wanda` with `WrappedGPT`) runs each calibration
window through each block one at a time and keeps a running mean of squared input norms. This
port keeps that structure (only adapted to today's transformers, whose blocks want rotary
embeddings as keyword arguments) and shares no code with `compressors` beyond the model loader
and the perplexity function, so the two can be compared on the same windows.

    .venv/bin/python bench/wanda_reference.py                # protocol: 32x512 calib, 40x512 eval
    .venv/bin/python bench/wanda_reference.py --pattern 2:4

Each implementation runs in its own process so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import torch


def reference_windows(tokenizer, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Protocol windows, drawn here independently of compressors.engine.windows."""
    from compressors.recipe.text import load_text

    ids = tokenizer(load_text("sotu:1900-1999"), add_special_tokens=False)["input_ids"]
    tokens = torch.tensor(ids)
    torch.manual_seed(seed)
    starts = [int(torch.randint(0, tokens.numel() - seqlen, (1,)).item()) for _ in range(samples)]
    return torch.stack([tokens[s : s + seqlen] for s in starts])


class _Catcher(torch.nn.Module):
    def __init__(self, module, store):
        super().__init__()
        self.module, self.store = module, store

    def forward(self, hidden, *args, **kwargs):
        self.store.append((hidden, kwargs))
        raise ValueError


@torch.no_grad()
def reference_prune_wanda(model, windows, sparsity: float, prune_n: int, prune_m: int) -> None:
    layers = model.model.layers
    store: list = []
    layers[0] = _Catcher(layers[0], store)
    for window in windows:
        with contextlib.suppress(ValueError):
            model(window.unsqueeze(0), use_cache=False)
    layers[0] = layers[0].module
    inps = [h for h, _ in store]
    kwargs = store[0][1]
    kwargs.pop("past_key_values", None)
    for layer in layers:
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        scaler = {n: torch.zeros(m.weight.shape[1]) for n, m in subset.items()}
        seen = dict.fromkeys(subset, 0)

        def add_batch(name, scaler=scaler, seen=seen):
            def hook(_module, inputs, _out):
                x = inputs[0].data.reshape(-1, inputs[0].shape[-1]).t().float()
                scaler[name] *= seen[name] / (seen[name] + 1)
                seen[name] += 1
                scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / seen[name]
            return hook

        handles = [m.register_forward_hook(add_batch(n)) for n, m in subset.items()]
        for inp in inps:
            layer(inp, **kwargs)
        for handle in handles:
            handle.remove()
        for name, module in subset.items():
            metric = torch.abs(module.weight.data) * torch.sqrt(scaler[name].reshape(1, -1))
            mask = torch.zeros_like(metric) == 1
            if prune_n:
                for start in range(0, metric.shape[1], prune_m):
                    tmp = metric[:, start : start + prune_m].float()
                    idx = torch.topk(tmp, prune_n, dim=1, largest=False)[1]
                    mask.scatter_(1, start + idx, True)
            else:
                order = torch.sort(metric, dim=-1, stable=True)[1]
                mask.scatter_(1, order[:, : int(metric.shape[1] * sparsity)], True)
            module.weight.data[mask] = 0
        inps = [layer(inp, **kwargs) for inp in inps]
        inps = [out[0] if isinstance(out, tuple) else out for out in inps]


def child(args: argparse.Namespace) -> None:
    from compressors.engine.context import StepContext
    from compressors.engine.windows import calibration_windows, evaluation_windows
    from compressors.evaluate import perplexity
    from compressors.io.loading import load_model
    from compressors.methods.wanda.config import WandaConfig
    from compressors.methods.wanda.step import run as run_wanda
    from compressors.peak_memory import peak_rss_bytes
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    torch.set_num_threads(2)
    loaded = load_model("smollm2-135m")
    rss_loaded = peak_rss_bytes()
    if args.impl == "reference":
        windows = reference_windows(loaded.tokenizer, args.samples, args.seqlen, 0)
    else:
        windows = calibration_windows(loaded.tokenizer,
                                      CalibrationConfig(samples=args.samples, seqlen=args.seqlen))
    n, m = (int(x) for x in args.pattern.split(":")) if args.pattern else (0, 0)
    start = time.perf_counter()
    if args.impl == "reference":
        # the reference prunes prune_n of every prune_m: for N:M (keep N) that is M - N
        reference_prune_wanda(loaded.model, windows, args.sparsity, m - n if m else 0, m)
    else:
        context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                              calibration_windows=windows)
        config = (WandaConfig(pattern=args.pattern) if args.pattern
                  else WandaConfig(sparsity=args.sparsity))
        run_wanda(loaded.model, config, context)
    seconds = time.perf_counter() - start
    rss_peak = peak_rss_bytes()
    eval_windows = evaluation_windows(loaded.tokenizer, EvaluationConfig(windows=args.windows))
    ppl = perplexity(loaded.model, eval_windows)
    print(json.dumps({"impl": args.impl, "perplexity": ppl, "seconds": seconds,
                      "rss_loaded_mb": rss_loaded / 2**20, "rss_prune_peak_mb": rss_peak / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=["ours", "reference"])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pattern", default="", help="N:M (keep N of M), default unstructured")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=40)
    args = parser.parse_args()
    if args.impl:
        child(args)
        return
    rows = []
    for impl in ("reference", "ours"):
        cmd = [sys.executable, __file__, "--impl", impl, *sys.argv[1:]]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    label = args.pattern or f"{args.sparsity:.0%}"
    print(f"Wanda {label} on SmolLM2-135M, {args.samples}x{args.seqlen} calibration, "
          f"{args.windows}x512 evaluation, 2 threads\n")
    print("| implementation | perplexity | prune s | RSS loaded MB | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['impl']} | {row['perplexity']:.3f} | {row['seconds']:.1f} | "
              f"{row['rss_loaded_mb']:.0f} | {row['rss_prune_peak_mb']:.0f} |")
    ref, ours = rows
    print(f"\nperplexity difference: {abs(ours['perplexity'] / ref['perplexity'] - 1):.3%}; "
          f"speed-up: {ref['seconds'] / ours['seconds']:.2f}x")


if __name__ == "__main__":
    main()
