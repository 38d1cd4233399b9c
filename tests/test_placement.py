"""Models held three ways give one result: streamed and onloaded runs equal the in-memory run
(same weights bit for bit, same perplexity), on tiny models of three architectures and on
SmolLM2; the recipe's dtype is the run's and the checkpoint's; a streamed run of a model
several times the memory it may use stays under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import compressors
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS, save_tiny_with_tokenizer

TINY_BUDGETS = {"calibration": {"samples": 4, "seqlen": 64},
                "evaluation": {"windows": 2, "seqlen": 64}}
RECIPES = {
    "sparsegpt": [{"method": "sparsegpt", "sparsity": 0.5}],
    "magnitude-then-wanda-2:4": [{"method": "magnitude", "sparsity": 0.3},
                                 {"method": "wanda", "pattern": "2:4"}],
}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _run(model, steps, out: Path, placement: str, budgets=TINY_BUDGETS, **extra):
    recipe = parse_recipe({"steps": steps, "placement": placement, **budgets, **extra})
    return compressors.compress(model, recipe, out, device="cpu")


@pytest.fixture(scope="module", params=["llama", "gpt2", "opt"])
def tiny_folder(request, tmp_path_factory, smollm2_tokenizer) -> Path:
    return save_tiny_with_tokenizer(request.param, tmp_path_factory.mktemp(request.param),
                                    smollm2_tokenizer)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_streamed_and_onloaded_equal_in_memory(tiny_folder, recipe, tmp_path):
    steps = RECIPES[recipe]
    reports = {mode: _run(tiny_folder, steps, tmp_path / mode, mode)
               for mode in ("in_memory", "onloaded", "streamed")}
    reference = _weights(tmp_path / "in_memory")
    for mode in ("onloaded", "streamed"):
        assert reports[mode].memory.placement == mode
        weights = _weights(tmp_path / mode)
        assert weights.keys() == reference.keys(), mode
        assert all(torch.equal(weights[k], reference[k]) for k in reference), mode
        for side in ("before", "after"):
            ours = getattr(reports[mode].metrics, side)
            theirs = getattr(reports["in_memory"].metrics, side)
            assert ours.perplexity == pytest.approx(theirs.perplexity, rel=1e-5), (mode, side)
            assert (ours.parameters, ours.nonzero_parameters) == (
                theirs.parameters, theirs.nonzero_parameters), (mode, side)
        assert reports[mode].sparsity == reports["in_memory"].sparsity
    streamed = tmp_path / "streamed"
    assert compressors.load(streamed) is not None  # stock from_pretrained reads the shards
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(reference)
    assert not list(streamed.glob(".*")), "scratch files were published"


@pytest.fixture(scope="module")
def tiny_moe_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    return save_tiny_with_tokenizer("qwen3_moe", tmp_path_factory.mktemp("qwen3-moe"),
                                    smollm2_tokenizer)


@pytest.mark.parametrize("method", ["wanda", "gptq"])
def test_streamed_moe_publishes_what_in_memory_does(tiny_moe_folder, method, tmp_path):
    """A Qwen3-MoE checkpoint stores its experts one by one, the model holds them fused: a
    streamed run converts each block as `from_pretrained` would, and publishes transformers'
    saved layout again, with the in-memory run's weights (gptq: dense weights holding the
    quantized values; transformers decompresses the in-memory run's packed experts in
    float16, so ours are compared rounded to that)."""
    steps = ([{"method": "wanda", "sparsity": 0.5}] if method == "wanda"
             else [{"method": "gptq", "group_size": 32}])
    reports = {mode: _run(tiny_moe_folder, steps, tmp_path / mode, mode)
               for mode in ("in_memory", "streamed")}
    assert reports["streamed"].memory.placement == "streamed"
    assert reports["streamed"].metrics.after.perplexity == pytest.approx(
        reports["in_memory"].metrics.after.perplexity, rel=1e-5)
    published = _weights(tmp_path / "streamed")
    assert published.keys() == _weights(tiny_moe_folder).keys()
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in published
    if method == "wanda":
        reference = _weights(tmp_path / "in_memory")
        assert all(torch.equal(published[k], reference[k]) for k in reference)
    theirs = compressors.load(tmp_path / "in_memory").state_dict()
    ours = compressors.load(tmp_path / "streamed").state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name].to(tensor.dtype), tensor), name
    experts = ours["model.layers.1.mlp.experts.down_proj"]
    if method == "wanda":
        assert float((experts == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    else:  # on the int4 grid: at most 16 values per group of 32 inputs of an expert's row
        assert all(row[:32].unique().numel() <= 16 for row in experts[0])


def test_streaming_refuses_steps_that_need_the_whole_model():
    with pytest.raises(ValueError, match=r"steps.1 \(perp\) needs the whole model"):
        parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5}, {"method": "perp"}],
                      "placement": "streamed"})


def test_dtype_auto_keeps_the_checkpoints_and_a_recipe_dtype_overrides_it(
        tmp_path, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_with_tokenizer("llama", tmp_path / "fp32", smollm2_tokenizer)
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(bf16)
    smollm2_tokenizer.save_pretrained(bf16)
    steps = [{"method": "wanda", "sparsity": 0.5}]
    for placement in ("in_memory", "streamed"):
        kept = _run(bf16, steps, tmp_path / f"auto-{placement}", placement)
        assert kept.memory.dtype == "bfloat16"
        assert {t.dtype for t in _weights(tmp_path / f"auto-{placement}").values()} == {
            torch.bfloat16}
        widened = _run(bf16, steps, tmp_path / f"fp32-{placement}", placement, dtype="float32")
        assert widened.memory.dtype == "float32"
        assert {t.dtype for t in _weights(tmp_path / f"fp32-{placement}").values()} == {
            torch.float32}
        config = json.loads((tmp_path / f"fp32-{placement}" / "config.json").read_text())
        assert config["dtype"] == "float32"


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
def test_auto_placement_streams_when_the_model_does_not_fit(kind, tmp_path, smollm2_tokenizer):
    """Eight blocks that outweigh the embeddings, so streaming (two blocks held) needs less
    than holding the model; a limit between the two estimates must pick streaming."""
    from compressors.memory import Limits, estimate_source

    folder = save_tiny_with_tokenizer(kind, tmp_path / "model", smollm2_tokenizer,
                                      blocks=8, hidden=256)
    recipe = parse_recipe({"steps": RECIPES["sparsegpt"], **TINY_BUDGETS})
    estimate = estimate_source(folder, recipe)
    whole, streamed = estimate.peak("in_memory"), estimate.peak("streamed")
    assert streamed < whole
    roomy = compressors.compress(folder, recipe, tmp_path / "roomy", device="cpu",
                                 memory_limits=Limits(64 * 2**30))
    tight = compressors.compress(folder, recipe, tmp_path / "tight", device="cpu",
                                 memory_limits=Limits((whole + streamed) // 2))
    assert (roomy.memory.placement, tight.memory.placement) == ("in_memory", "streamed")
    assert roomy.memory.estimated_peak_bytes == whole
    assert tight.memory.estimated_peak_bytes == streamed
    assert tight.metrics.after.perplexity == pytest.approx(roomy.metrics.after.perplexity,
                                                           rel=1e-5)


@pytest.mark.real_model
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_streamed_smollm2_equals_in_memory(method, tmp_path):
    steps = [{"method": method, "sparsity": 0.5}]
    memory = _run("smollm2-135m", steps, tmp_path / "memory", "in_memory", SMALL_BUDGETS)
    streamed = _run("smollm2-135m", steps, tmp_path / "streamed", "streamed", SMALL_BUDGETS)
    reference, weights = _weights(tmp_path / "memory"), _weights(tmp_path / "streamed")
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k] == 0, reference[k] == 0) for k in reference)  # masks
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    assert streamed.metrics.after.perplexity == pytest.approx(
        memory.metrics.after.perplexity, rel=1e-4)
    assert streamed.memory.measured_peak_bytes > 0


CAPPED = """
import json, sys
from pathlib import Path
import compressors
from compressors.peak_memory import peak_rss_bytes
from compressors.recipe import parse_recipe
recipe = parse_recipe(json.loads(sys.argv[2]))
report = compressors.compress(sys.argv[1], recipe, Path(sys.argv[3]), device="cpu")
print(json.dumps({"placement": report.memory.placement,
                  "peak": peak_rss_bytes()}))
"""


def _random_llama(folder: Path, tokenizer) -> int:
    """A random bf16 Llama of 56 blocks, 1.4 GB on disk (2.7 GB in fp32); returns fp32 bytes.

    Deep enough that a third of it clears the fixed part of a streamed run (the runtime's
    ~0.45 GB, the 100 MB embedding, two blocks) by more than run-to-run noise: at 44 blocks
    the cap was 729 MB against streamed peaks of 666-730 MB; at 56 it is 909 MB against
    733-741 MB."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816,
                         num_hidden_layers=56, num_attention_heads=16, num_key_value_heads=4,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"],
                         dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="300MB")
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters()) * 4


def test_streamed_wanda_stays_under_a_third_of_the_fp32_size(tmp_path, smollm2_tokenizer):
    """The run's own memory limit (WORKER_MEMORY_LIMIT) is a third of the model's fp32 size:
    the estimate must choose streaming, and the peak RSS must stay under the limit."""
    fp32_bytes = _random_llama(tmp_path / "model", smollm2_tokenizer)
    cap = fp32_bytes // 3
    recipe = {"steps": [{"method": "wanda", "sparsity": 0.5}], **TINY_BUDGETS}
    env = {**os.environ, "COMPRESSORS_WORKER_MEMORY_LIMIT": str(cap), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", CAPPED, str(tmp_path / "model"),
                           json.dumps(recipe), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["placement"] == "streamed"
    assert result["peak"] < cap, (result["peak"], cap)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    layer = model.model.layers[-1].mlp.down_proj.weight
    assert float((layer == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
