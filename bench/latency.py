"""Forward latency and throughput of two models, measured interleaved in one process.

On a shared machine the load changes from minute to minute, so measuring the dense model in one
process and the factorized one in another compares two different machines. Here each repeat
runs every model once, in turn, on the same `[batch, seqlen]` input; the median over repeats
is reported per model, and the ratio of medians is what the bar compares.

    .venv/bin/python bench/latency.py DENSE_DIR FACTORIZED_DIR --batch 1 8 --seqlen 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# this checkout's packages, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch import nn


@torch.no_grad()
def interleaved_latency(
    models: dict[str, nn.Module], batch: int, seqlen: int, repeats: int = 3,
    vocab: int = 1000,
) -> dict[str, dict[str, float]]:
    """{name: {latency_ms, tokens_per_second}}: median of `repeats` after one warm-up each."""
    ids = torch.randint(0, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    for attempt in range(repeats + 1):
        for name, model in models.items():
            device = next(model.parameters()).device
            batch_ids = ids.to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=batch_ids, use_cache=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if attempt:
                times[name].append(time.perf_counter() - start)
    return {name: {"latency_ms": 1000 * statistics.median(values),
                   "tokens_per_second": batch * seqlen / statistics.median(values)}
            for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dense")
    parser.add_argument("factorized")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import compressors

    models = {"dense": compressors.load(args.dense).to(args.device),
              "factorized": compressors.load(args.factorized).to(args.device)}
    print(f"load average {os.getloadavg()}; threads={args.threads}; device={args.device}")
    print("| batch | model | latency ms | tokens/s |\n|---|---|---|---|")
    for batch in args.batch:
        for name, row in interleaved_latency(models, batch, args.seqlen, args.repeats).items():
            print(f"| {batch} | {name} | {row['latency_ms']:.0f} | "
                  f"{row['tokens_per_second']:.0f} |")


if __name__ == "__main__":
    main()
