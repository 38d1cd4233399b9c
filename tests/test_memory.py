"""The memory estimate: read from headers without torch, right about the shape, picking the
placement that fits, refusing with the step and the bytes when none does, and within 25% of
the peak a real run measures on SmolLM2 for every method."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressors import memory
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS, save_tiny_with_tokenizer, tiny_model

WANDA = {"steps": [{"method": "wanda", "sparsity": 0.5}]}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    return save_tiny_with_tokenizer("llama", tmp_path_factory.mktemp("tiny"), smollm2_tokenizer)


def test_shape_from_headers_matches_the_model(tiny_folder, smollm2_tokenizer):
    shape = memory.read_shape(tiny_folder)
    model = tiny_model("llama", vocab_size=len(smollm2_tokenizer))
    assert shape.parameters == sum(p.numel() for p in model.parameters())  # tied head once
    assert shape.blocks == 2 and shape.hidden == 64 and shape.intermediate == 128
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    assert shape.block_parameters == block
    assert shape.outer_parameters == shape.parameters - 2 * block
    assert sorted(set(shape.block_inputs)) == [64, 128]  # q/k/v/o/gate/up read 64, down 128
    linears = [m for m in model.model.layers[0].modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(shape.block_outputs) == sorted(m.out_features for m in linears)


def test_estimating_never_imports_torch(tiny_folder):
    code = ("import sys; from pathlib import Path; from compressors import memory; "
            "from compressors.recipe import parse_recipe; "
            f"e = memory.estimate_source(Path({str(tiny_folder)!r}), "
            "parse_recipe({'steps': [{'method': 'sparsegpt', 'sparsity': 0.5}]})); "
            "assert e.peak('streamed') > 0; assert 'torch' not in sys.modules, 'torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def blocky_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    """Eight blocks that outweigh the embeddings: streaming them must save memory."""
    return save_tiny_with_tokenizer("llama", tmp_path_factory.mktemp("blocky"),
                                    smollm2_tokenizer, blocks=8, hidden=256)


def test_the_first_placement_that_fits_is_chosen(blocky_folder):
    recipe = parse_recipe(WANDA)
    estimate = memory.estimate_source(blocky_folder, recipe)
    whole, streamed = estimate.peak("in_memory"), estimate.peak("streamed")
    assert streamed < whole
    pick = memory.choose_placement
    assert pick(estimate, recipe, memory.Limits(whole), "cpu").mode == "in_memory"
    assert pick(estimate, recipe, memory.Limits(whole - 1), "cpu").mode == "streamed"
    gpu = memory.Limits(10 * whole, device_bytes=estimate.device_peak("onloaded"),
                        device_type="cuda")
    assert pick(estimate, recipe, gpu, "cuda").mode == "onloaded"
    with pytest.raises(memory.DoesNotFit, match=r"step 'wanda' needs about .* GiB of RAM"):
        pick(estimate, recipe, memory.Limits(streamed - 1), "cpu")
    forced = parse_recipe({**WANDA, "placement": "in_memory"})
    with pytest.raises(memory.DoesNotFit, match=r"placement 'in_memory': .* GiB of RAM"):
        pick(memory.estimate_source(blocky_folder, forced), forced, memory.Limits(whole - 1),
             "cpu")


def test_a_step_that_needs_the_whole_model_is_never_streamed(tiny_folder):
    recipe = parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5},
                                     {"method": "perp", "train_steps": 2}]})
    estimate = memory.estimate_source(tiny_folder, recipe)
    with pytest.raises(memory.DoesNotFit, match="needs the whole model at once"):
        memory.choose_placement(estimate, recipe, memory.Limits(estimate.peak("in_memory") - 1),
                                "cpu")


def test_auto_placement_skips_placements_a_step_refuses(blocky_folder):
    """Low-rank's default fisher weighting back-propagates through the whole model: on a GPU
    that holds only one block at a time, `auto` must not pick `onloaded` for it (the job would
    fail after loading); with `weighting: activations` a GPU that fits one block is used
    onloaded."""
    step = {"method": "lowrank", "target_params": 0.6, "train_steps": 0}
    inputs_only = parse_recipe({"steps": [{**step, "weighting": "activations"}]})
    fisher = parse_recipe({"steps": [step]})
    fisher_estimate = memory.estimate_source(blocky_folder, fisher)
    onloaded = fisher_estimate.device_peak("onloaded")  # fits, but the step refuses it
    assert onloaded < fisher_estimate.device_peak("in_memory")
    gpu = memory.Limits(10**12, device_bytes=onloaded, device_type="cuda")
    with pytest.raises(memory.DoesNotFit, match="needs the whole model at once"):
        memory.choose_placement(fisher_estimate, fisher, gpu, "cuda")
    estimate = memory.estimate_source(blocky_folder, inputs_only)
    small_gpu = memory.Limits(10**12, device_bytes=estimate.device_peak("onloaded"),
                              device_type="cuda")
    assert estimate.device_peak("onloaded") < estimate.device_peak("in_memory")
    assert memory.choose_placement(estimate, inputs_only, small_gpu, "cuda").mode == "onloaded"


def test_limits_are_the_smallest_of_ram_cgroup_and_setting(monkeypatch, tmp_path):
    assert memory.parse_bytes("1.5G") == int(1.5 * 2**30)
    assert memory.parse_bytes("512MiB") == 512 * 2**20 and memory.parse_bytes("7") == 7
    with pytest.raises(ValueError, match="memory limit"):
        memory.parse_bytes("lots")
    unlimited = memory.ram_limit_bytes()
    monkeypatch.setenv("COMPRESSORS_WORKER_MEMORY_LIMIT", "300M")
    assert memory.ram_limit_bytes() == min(unlimited, 300 * 2**20)
    for text, expected in (("max\n", None), ("123456\n", 123456),
                           ("9223372036854771712\n", None)):
        path = tmp_path / "limit"
        path.write_text(text)
        assert memory.read_limit(path) == expected


CHILD = """
import json, sys, tempfile
from pathlib import Path
import compressors
from compressors.recipe import parse_recipe
with tempfile.TemporaryDirectory() as tmp:
    report = compressors.compress("smollm2-135m", parse_recipe(json.loads(sys.argv[1])),
                                  Path(tmp) / "out", device="cpu")
print(json.dumps({"estimate": report.memory.estimated_peak_bytes,
                  "measured": report.memory.measured_peak_bytes,
                  "placement": report.memory.placement}))
"""
CASES = {
    "magnitude": [{"method": "magnitude", "sparsity": 0.5}],
    "wanda-streamed": [{"method": "wanda", "sparsity": 0.5}],
    "sparsegpt": [{"method": "sparsegpt", "sparsity": 0.5}],
    "perp": [{"method": "magnitude", "sparsity": 0.5},
             {"method": "perp", "train_steps": 2, "seqlen": 128}],
    "quantize": [{"method": "quantize"}],
    "lowrank": [{"method": "lowrank", "target_params": 0.6, "train_steps": 2, "seqlen": 128}],
}


@pytest.mark.real_model
@pytest.mark.parametrize("case", list(CASES))
def test_estimate_is_within_a_quarter_of_the_measured_peak(case):
    recipe = {"steps": CASES[case], **SMALL_BUDGETS,
              "placement": "streamed" if case.endswith("streamed") else "auto"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = result["estimate"] / result["measured"]
    assert 0.75 <= ratio <= 1.25, result


def _random_moe(folder: Path, tokenizer) -> Path:
    """A random Qwen3-MoE, fp32: 2 blocks of 32 experts (hidden 1024, expert width 256), whose
    per-expert Hessians (16.5 MiB each, 528 MiB a block) outweigh a pass of 128 MiB."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2048,
                            moe_intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                            num_key_value_heads=4, head_dim=128, num_experts=32,
                            num_experts_per_tok=4, tie_word_embeddings=True,
                            architectures=["Qwen3MoeForCausalLM"])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    return _random_moe(tmp_path_factory.mktemp("moe"), smollm2_tokenizer)


def test_the_shape_counts_experts_and_their_hessians_a_pass_at_a_time(moe_folder, monkeypatch):
    """Experts stored one by one are counted as experts, not as dense layers; their Hessians
    count one pass's worth (`ops.hessian_passes`), as the engine holds them."""
    from compressors.ops import hessian_passes

    shape = memory.read_shape(moe_folder)
    assert (shape.experts, sorted(shape.expert_inputs)) == (32, [256, 1024, 1024])
    assert sorted(shape.expert_outputs) == [256, 256, 1024]
    assert sorted(set(shape.block_inputs)) == [1024]  # q/k/v/o and the router
    recipe = parse_recipe({"steps": [{"method": "sparsegpt", "sparsity": 0.5}]})
    whole = memory.estimate(shape, recipe, 4).peak("streamed")
    monkeypatch.setattr(hessian_passes, "PASS_BYTES", 128 * 2**20)
    chunked = memory.estimate(shape, recipe, 4).peak("streamed")
    # all 32 experts' sums and float32 factors at once (708 MiB with the dense layers')
    # against the largest pass's (the dense layers and 5 experts: 148 MiB)
    assert whole - chunked == (708 - 147.75) * 2**20


@pytest.mark.parametrize("transposed", [False, True])
def test_fused_experts_are_read_from_3d_tensors(tmp_path, transposed):
    """Experts saved fused (`[E, out, in]`, or `[E, in, out]` as GPT-OSS stores them): one
    matrix per expert and tensor, whose input is the hidden states on the MLP's input side."""
    from safetensors.torch import save_file

    def fused(out: int, inp: int) -> torch.Tensor:
        return torch.zeros(4, inp, out) if transposed else torch.zeros(4, out, inp)

    save_file({"model.embed_tokens.weight": torch.zeros(32, 8),
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8),
               "model.layers.0.mlp.router.weight": torch.zeros(4, 8),
               "model.layers.0.mlp.experts.gate_up_proj": fused(12, 8),
               "model.layers.0.mlp.experts.down_proj": fused(8, 6),
               "model.layers.0.conv.weight": torch.zeros(8, 1, 4)},  # no expert: one column
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "vocab_size": 32}))
    shape = memory.read_shape(tmp_path)
    assert shape.experts == 4
    assert sorted(zip(shape.expert_inputs, shape.expert_outputs, strict=True)) == [(6, 8), (8, 12)]
    assert shape.block_inputs == (8, 8) and shape.block_parameters == 64 + 32 + 384 + 192 + 32


MOE_CHILD = """
import json, sys, tempfile
from pathlib import Path
from compressors.ops import hessian_passes
hessian_passes.PASS_BYTES = int(sys.argv[3])
import compressors
from compressors.recipe import parse_recipe
with tempfile.TemporaryDirectory() as tmp:
    report = compressors.compress(sys.argv[2], parse_recipe(json.loads(sys.argv[1])),
                                  Path(tmp) / "out", device="cpu")
print(json.dumps({"estimate": report.memory.estimated_peak_bytes,
                  "measured": report.memory.measured_peak_bytes,
                  "placement": report.memory.placement}))
"""


@pytest.mark.parametrize("method", ["sparsegpt", "gptq"])
def test_a_moe_estimate_is_within_a_quarter_of_the_measured_peak(moe_folder, method):
    """Streamed, with passes of 128 MiB of Hessian sums (5 passes a block): the estimate
    counts the largest pass (holding all 32 experts' sums would add ~0.5 GB)."""
    step = {"method": method, **({"sparsity": 0.5} if method == "sparsegpt" else {})}
    recipe = {"steps": [step], "calibration": SMALL_BUDGETS["calibration"],
              "evaluation": {"windows": 0}, "placement": "streamed"}
    done = subprocess.run([sys.executable, "-c", MOE_CHILD, json.dumps(recipe), str(moe_folder),
                           str(128 * 2**20)], capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["placement"] == "streamed"
    ratio = result["estimate"] / result["measured"]
    assert 0.75 <= ratio <= 1.25, result
    print(method, result, f"estimate / measured {ratio:.2f}")


@pytest.mark.parametrize("content", [b"\xff" * 4096, b"\x05",
                                     b"\x10" + b"\0" * 7 + b"[1,2]" + b" " * 11])
def test_a_damaged_weight_file_is_named_in_plain_words(tmp_path, content):
    from compressors.io.model_files import DamagedWeights, header

    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(DamagedWeights, match=r"model\.safetensors: .*look damaged"):
        header(path)
