"""Shared fixtures: tiny random models of four architectures, and the real SmolLM2 + text.

Tiny models keep unit tests fast; every method is also exercised on the real model. Tiny causal
models reuse the real SmolLM2 tokenizer so that the full pipeline (real text in, report out)
runs on them in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist (`scripts/test` runs two processes) each process gets its share of the
# cores, so two torch thread pools never spin against each other on a 2-core machine.
_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _PROCESSES))

from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig  # noqa: E402

# Small budgets for tests on real models; the full protocol belongs to bench/.
SMALL_CALIBRATION = CalibrationConfig(samples=4, seqlen=128)
SMALL_EVALUATION = EvaluationConfig(windows=4, seqlen=128)
SMALL_BUDGETS = {
    "calibration": SMALL_CALIBRATION.model_dump(),
    "evaluation": SMALL_EVALUATION.model_dump(),
}


def tiny_config(kind: str, vocab_size: int = 256, blocks: int = 2, hidden: int = 64):
    """A small random model config of the given architecture (2 blocks of width 64 unless
    a test needs the blocks to outweigh the embeddings)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, OPTConfig

    if kind == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=blocks, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512, tie_word_embeddings=True,
                           architectures=["LlamaForCausalLM"])
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=blocks, n_head=4,
                          n_positions=512,
                          architectures=["GPT2LMHeadModel"])
    if kind == "opt":
        return OPTConfig(vocab_size=vocab_size, hidden_size=hidden, ffn_dim=2 * hidden,
                         num_hidden_layers=blocks,
                         num_attention_heads=4, max_position_embeddings=512,
                         word_embed_proj_dim=hidden, architectures=["OPTForCausalLM"])
    if kind == "qwen3_moe":  # a mixture-of-experts block: 8 experts, 2 per token
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(vocab_size=vocab_size, hidden_size=hidden,
                              intermediate_size=2 * hidden, moe_intermediate_size=hidden // 2,
                              num_hidden_layers=blocks, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=hidden // 4, num_experts=8,
                              num_experts_per_tok=2, max_position_embeddings=512,
                              tie_word_embeddings=True, architectures=["Qwen3MoeForCausalLM"])
    if kind == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=512, architectures=["BertModel"])
    raise ValueError(kind)


def tiny_model(kind: str, vocab_size: int = 256, seed: int = 0, **shape: int):
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(kind, vocab_size, **shape)
    loader = AutoModel if kind == "bert" else AutoModelForCausalLM
    model = loader.from_config(config)
    model.eval()
    return model


@pytest.fixture(params=["llama", "gpt2", "opt"])
def tiny_causal(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from compressors.assets import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path, local_files_only=True)


def save_tiny_with_tokenizer(kind: str, folder: Path, tokenizer, **shape: int) -> Path:
    """Save a tiny random model with the real tokenizer, so it runs on real text."""
    model = tiny_model(kind, vocab_size=len(tokenizer), **shape)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    return save_tiny_with_tokenizer("llama", tmp_path_factory.mktemp("tiny-llama"),
                                    smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    return save_tiny_with_tokenizer("gpt2", tmp_path_factory.mktemp("tiny-gpt2"),
                                    smollm2_tokenizer)
