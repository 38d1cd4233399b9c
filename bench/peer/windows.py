"""The protocol's token windows, written to one safetensors file for a peer implementation.

Runs in OUR venv (it uses `compressors.engine.windows`, the protocol's own window code): the
peer (bench/peer/llmcompressor_run.py, in its own venv) reads the file and never tokenizes or
draws anything itself, so both sides calibrate and evaluate on the very same token ids.

    .venv/bin/python bench/peer/windows.py /tmp/peer/windows.safetensors
    # prints the file and the model folder to hand to the peer

The file holds two int64 tensors, `calibration` [32, 512] (SOTU 1900-1999, seeded random starts)
and `evaluation` [40, 512] (SOTU 2000-, the first non-overlapping windows), and metadata naming
the model folder, the protocol settings and a digest of each tensor. `write_windows` is what a
benchmark (bench/quantize.py) calls to produce the same file within its own run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

# this checkout's packages, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def digest(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's int64 bytes (the peer prints the same for the windows it read)."""
    return hashlib.sha256(tensor.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def write_windows(path: Path | str, model: str | Path = "smollm2-135m", calibration=None,
                  evaluation=None, tokenizer=None, second=None) -> dict[str, str]:
    """Write the protocol's calibration and evaluation windows of `model`'s tokenizer to `path`.

    `calibration` / `evaluation`: a `CalibrationConfig` / `EvaluationConfig` (default: the
    protocol, 32 x 512 and 40 x 512). `tokenizer`: one already loaded (a benchmark's), else
    the model folder's. `second`: windows of a second text, evaluated by the peer too.
    Returns the metadata written (model folder, settings, digests).
    """
    from safetensors.torch import save_file

    from compressors.engine.windows import calibration_windows, evaluation_windows
    from compressors.io.loading import resolve_model
    from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig

    calibration = calibration or CalibrationConfig()
    evaluation = evaluation or EvaluationConfig()
    folder = resolve_model(model)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tensors = {"calibration": calibration_windows(tokenizer, calibration).to(torch.int64),
               "evaluation": evaluation_windows(tokenizer, evaluation).to(torch.int64)}
    metadata = {
        "model_folder": str(folder),
        "calibration": json.dumps(calibration.model_dump(mode="json")),
        "evaluation": json.dumps(evaluation.model_dump(mode="json")),
        "calibration_sha256": digest(tensors["calibration"]),
        "evaluation_sha256": digest(tensors["evaluation"]),
    }
    if second is not None:
        tensors["second"] = second.to(torch.int64)
        metadata["second_sha256"] = digest(tensors["second"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--model", default="smollm2-135m",
                        help="a bundled model name or an HF folder (default smollm2-135m)")
    args = parser.parse_args()
    metadata = write_windows(args.out, args.model)
    print(json.dumps({"windows": str(args.out), **metadata}, indent=1))


if __name__ == "__main__":
    main()
