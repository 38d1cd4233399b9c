"""What a person needs to know to serve a compressed-tensors scheme: each tensor's precision at
inference and the GPU generation whose kernels run it.

Read from the scheme's own `QuantizationArgs` (weights, input activations), the very objects
written to `quantization_config`, so the model card, the report and the checkpoint cannot
disagree, whichever method made the scheme. The GPU facts are vLLM's kernels: FP8 matmuls need
FP8 tensor cores (Ada Lovelace / Hopper, compute capability 8.9+), NVFP4's FP4 ones Blackwell
(10.0+), INT8 activations Turing (7.5+); weight-only schemes run through Marlin-style kernels
from Ampere (8.0) on, where vLLM also serves FP8 and NVFP4 weights with 16-bit activations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

KV_CACHE = "unquantized (the serving dtype)"
WEIGHTS_ONLY = "16-bit (not quantized)"


def _strategy(args: Any) -> str:
    return str(getattr(args.strategy, "value", args.strategy))


def _name(args: Any) -> str:
    kind = str(getattr(args.type, "value", args.type))
    if kind == "float":
        return {8: "FP8 E4M3", 4: "FP4 E2M1"}.get(args.num_bits, f"FP{args.num_bits}")
    return f"INT{args.num_bits}"


def weights_precision(args: Any) -> str:
    """The stored weights, e.g. "FP8 E4M3, one scale per output channel"; an asymmetric
    integer grid also says so (vLLM reads its packed zero points: uint4 / uint8 kernels)."""
    grid = _weights_grid(args)
    return grid if args.symmetric in (True, None) else f"{grid} and a zero point (asymmetric)"


def _weights_grid(args: Any) -> str:
    strategy = _strategy(args)
    if strategy == "tensor_group":
        return (f"{_name(args)} in groups of {args.group_size}, FP8 E4M3 group scales and a "
                "float32 global scale per tensor (NVFP4)")
    if strategy == "block":
        rows, cols = args.block_structure
        return f"{_name(args)}, one scale per {rows}×{cols} block"
    if strategy == "group":
        return f"{_name(args)}, one scale per group of {args.group_size} inputs"
    if strategy == "channel":
        return f"{_name(args)}, one scale per output channel"
    return f"{_name(args)}, one scale per tensor"


def inputs_precision(args: Any | None) -> str:
    """The layers' input activations at inference."""
    if args is None:
        return WEIGHTS_ONLY
    strategy = _strategy(args)
    if strategy == "tensor_group":
        return (f"{_name(args)} in groups of {args.group_size} per token, FP8 E4M3 scales from "
                "each group's values and a static float32 global scale from calibration "
                "(NVFP4)")
    if strategy == "token":
        return f"{_name(args)}, dynamic: one scale per token from its own values"
    if strategy == "group":
        return (f"{_name(args)}, dynamic: one scale per group of {args.group_size} values of "
                "each token")
    how = "dynamic: one scale per forward" if args.dynamic else "static: one scale from calibration"
    return f"{_name(args)}, {how}"


def gpu_needs(weights: Any, inputs: Any | None) -> str:
    """The GPU generation vLLM's kernels for this scheme need."""
    kind = str(getattr(weights.type, "value", weights.type))
    if kind == "float" and weights.num_bits == 4:
        if inputs is not None:
            return ("NVIDIA Blackwell (compute capability 10.0+) for FP4 tensor cores; on older "
                    "GPUs vLLM falls back to FP4 weight-only Marlin kernels (Ampere 8.0+), "
                    "activations 16-bit")
        return ("NVIDIA Blackwell (compute capability 10.0+) natively; vLLM's FP4 Marlin "
                "kernel serves the weights on Ampere (8.0) and newer")
    if kind == "float" and weights.num_bits == 8:
        return ("NVIDIA Ada Lovelace or Hopper (compute capability 8.9+) or newer for FP8 "
                "tensor cores; on Ampere (8.0) vLLM falls back to FP8 weight-only Marlin "
                "kernels, activations 16-bit")
    if inputs is not None and str(getattr(inputs.type, "value", inputs.type)) == "int":
        return "NVIDIA Turing (compute capability 7.5) or newer for INT8 tensor cores"
    return "NVIDIA Ampere (compute capability 8.0) or newer (vLLM's Marlin / Machete kernels)"


def serving_notes(schemes: Iterable[tuple[Any, Any | None]]) -> str:
    """One sentence per distinct (weights, input activations) scheme: precision of weights,
    activations and KV cache at inference, and the GPU it needs."""
    notes: list[str] = []
    for weights, inputs in schemes:
        note = (f"At inference: weights {weights_precision(weights)}; input activations "
                f"{inputs_precision(inputs)}; KV cache {KV_CACHE}. GPU: "
                f"{gpu_needs(weights, inputs)}.")
        if note not in notes:
            notes.append(note)
    return " ".join(notes)
