#!/usr/bin/env bash
# A separate virtual environment holding llm-compressor 0.14, the peer of bench/quantize.py's
# quantization schemes (issue 27). It lives OUTSIDE the repo and never sees our `compressors`
# package: bench/peer/llmcompressor_run.py runs inside it.
#
#   bash bench/peer/setup-llmcompressor.sh [VENV]        # default /work/peer-llmc
#
# Versions: llmcompressor 0.14.0.1 pins torch >=2.10,<=2.14.0, transformers >=5.15,<=5.17.0 and
# compressed-tensors ==0.19.0. torch 2.13.0 (CPU) is installed FIRST, by itself, so that pip
# takes the CPU wheel on this machine's disk and never a multi-GB CUDA build; every later
# install sees torch already satisfied. transformers 5.17.0 is the newest it admits.
set -euo pipefail

VENV="${1:-/work/peer-llmc}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# 1. the CPU torch (the machine's local wheel); nothing else may pull another torch
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
# 2. llm-compressor and its pinned stack, torch held where it is
"$VENV/bin/python" -m pip install -q "llmcompressor==0.14.0.1" "transformers==5.17.0" \
    "compressed-tensors==0.19.0" "torch==2.13.0"
# 3. what llmcompressor_run.py itself uses beyond that (safetensors comes with transformers)
"$VENV/bin/python" -m pip install -q "torch==2.13.0" psutil

"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
import torch
assert not torch.version.cuda, f"a CUDA torch was installed ({torch.__version__}); expected CPU"
for name in ("llmcompressor", "compressed-tensors", "transformers", "torch", "accelerate"):
    print(f"{name}=={m.version(name)}")
PY
