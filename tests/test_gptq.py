"""GPTQ and RTN: grid math, the sweep against RTN on the Hessian metric, act order, group edges,
zeros kept through joint sparsify + quantize, the compressed-tensors checkpoint loaded by stock
transformers in a fresh process and by `compressors.load`, order rules, and the real SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

import compressors
from compressors.engine.context import StepContext
from compressors.engine.modules import select_layers
from compressors.io.compressed_tensors import QUANT_ATTR
from compressors.io.loading import save_checkpoint
from compressors.methods.gptq.config import GPTQConfig
from compressors.methods.gptq.step import run as run_gptq
from compressors.methods.gptq.sweep import gptq_quantize
from compressors.methods.rtn.config import RTNConfig
from compressors.methods.rtn.step import run as run_rtn
from compressors.methods.sparsegpt.config import SparseGPTConfig
from compressors.methods.sparsegpt.step import run as run_sparsegpt
from compressors.ops.hessian import activation_order, factor_hessian
from compressors.ops.int_grid import (
    Grid,
    relative_error,
    resolve_group_size,
    rtn_quantize,
)
from compressors.ops.masks import nm_groups_valid
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_CALIBRATION, SMALL_EVALUATION, tiny_model


def _correlated_layer(rows: int = 48, cols: int = 128, tokens: int = 2048, seed: int = 0):
    """Weights and correlated inputs with very uneven input scales (what makes GPTQ pay)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 12, generator=gen)
    scales = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=gen)]
    inputs = (latent @ torch.randn(12, cols, generator=gen)
              + 0.3 * torch.randn(tokens, cols, generator=gen)) * scales
    weight = torch.randn(rows, cols, generator=gen)
    return weight, 2 * inputs.T.double() @ inputs.double() / tokens


def _groups_on_grid(dense: torch.Tensor, width: int, levels: int) -> bool:
    """Every (row, group) holds at most `levels` distinct values."""
    for start in range(0, dense.shape[1], width):
        for row in dense[:, start : start + width]:
            if row.unique().numel() > levels:
                return False
    return True


@pytest.mark.parametrize(("bits", "group", "symmetric"),
                         [(4, 32, True), (4, -1, False), (8, 64, True), (8, -1, False)])
def test_rtn_codes_stay_on_their_group_grid_and_keep_zeros(bits, group, symmetric):
    weight, _ = _correlated_layer()
    weight[torch.rand_like(weight) < 0.3] = 0.0
    keep = weight != 0
    grid = Grid(bits, group, symmetric)
    quantized = rtn_quantize(weight, grid, keep)
    dense = quantized.dense()
    assert int(quantized.codes.min()) >= grid.qmin and int(quantized.codes.max()) <= grid.qmax
    assert bool((dense[~keep] == 0).all())
    assert _groups_on_grid(dense, grid.width(weight.shape[1]), 2**bits)
    assert quantized.scale.shape == (weight.shape[0], weight.shape[1] // grid.width(128))
    assert relative_error(weight, dense) < (0.2 if bits == 4 else 0.02)


def test_group_size_edges():
    assert resolve_group_size(576, None) == 64  # SmolLM2's hidden width
    assert resolve_group_size(1536, None) == 128
    assert resolve_group_size(96, None) == 32
    assert resolve_group_size(100, None) == -1  # no power-of-two group >= 32 divides
    assert resolve_group_size(576, -1) == -1
    assert resolve_group_size(576, 64) == 64
    with pytest.raises(ValueError, match="group_size: 128 does not divide in_features 576"):
        resolve_group_size(576, 128)


def test_explicit_group_that_does_not_divide_fails_before_changing_anything():
    model = tiny_model("llama")  # in_features 64 and 128
    before = {n: p.clone() for n, p in model.named_parameters()}
    context = StepContext(model_source=None, tokenizer=None,
                          calibration_windows=torch.randint(0, 256, (2, 16)))
    with pytest.raises(ValueError, match=r"group_size: 128 does not divide .*layer model\."):
        run_rtn(model, RTNConfig(group_size=128), context)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("group", [32, -1])
def test_gptq_beats_rtn_on_the_hessian_metric(group):
    weight, hessian = _correlated_layer()
    grid = Grid(4, group)
    importance = torch.diagonal(hessian).float()
    rtn = relative_error(weight, rtn_quantize(weight, grid, search=False).dense(), hessian)
    rtn_clip = relative_error(weight, rtn_quantize(weight, grid, importance=importance).dense(),
                              hessian)
    plain, _ = gptq_quantize(weight, factor_hessian(hessian), grid, search=False)
    ordered, _ = gptq_quantize(weight, factor_hessian(hessian, order=activation_order(hessian)),
                               grid, importance=importance)
    gptq = relative_error(weight, plain.dense(), hessian)
    best = relative_error(weight, ordered.dense(), hessian)
    assert rtn_clip <= rtn
    assert gptq < 0.75 * rtn
    assert best < gptq
    assert _groups_on_grid(ordered.dense(), grid.width(128), 16)  # static groups: no g_idx


def test_act_order_is_invariant_to_the_input_order():
    """Per channel, act order visits inputs by Hessian diagonal whatever their stored order:
    permuting inputs (columns of W, rows and columns of H) permutes the result exactly."""
    weight, hessian = _correlated_layer(rows=16, cols=64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    grid = Grid(4, -1)

    def quantize(w, h):
        factor = factor_hessian(h, order=activation_order(h))
        return gptq_quantize(w, factor, grid, importance=torch.diagonal(h).float())[0]

    base = quantize(weight, hessian)
    moved = quantize(weight[:, perm], hessian[perm][:, perm])
    assert torch.equal(base.codes[:, perm], moved.codes)
    assert torch.equal(base.scale, moved.scale)


def test_act_order_on_an_already_sorted_hessian_is_plain_gptq():
    weight, hessian = _correlated_layer(rows=16, cols=64)
    order = activation_order(hessian)
    weight, hessian = weight[:, order], hessian[order][:, order]  # diagonal now descending
    grid = Grid(4, -1)
    plain, _ = gptq_quantize(weight, factor_hessian(hessian), grid)
    ordered, _ = gptq_quantize(weight, factor_hessian(hessian, order=activation_order(hessian)),
                               grid)
    assert torch.equal(plain.codes, ordered.codes)


def _context(model_windows: int = 4, keep_masks: bool = True) -> StepContext:
    gen = torch.Generator().manual_seed(0)
    return StepContext(model_source=None, tokenizer=None, keep_masks=keep_masks,
                       calibration_windows=torch.randint(0, 256, (model_windows, 32),
                                                         generator=gen))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_then_gptq_keeps_every_pruned_zero(pattern):
    model = tiny_model("llama")
    context = _context()
    prune = SparseGPTConfig(pattern=pattern, blocksize=32,
                            sparsity=0.5 if pattern == "unstructured" else None)
    run_sparsegpt(model, prune, context)
    pruned = {n: (layer.weight.data == 0).clone() for n, layer in select_layers(model).items()}
    result = run_gptq(model, GPTQConfig(group_size=32), context)
    for name, layer in select_layers(model).items():
        assert bool((layer.weight.data[pruned[name]] == 0).all()), name
        if pattern == "2:4":
            assert nm_groups_valid(layer.weight.data, 2, 4), name
    section = result.section.model_dump(mode="json")
    assert section["zeros_kept"] == section["zeros_before"] == sum(
        int(z.sum()) for z in pruned.values())
    assert section["bits_per_weight"] == pytest.approx(4 + 16 / 32)
    assert set(section["relative_error"]["per_layer"]) == set(pruned)
    assert result.charts[0].id == "quantization-error"


FRESH = """
import json, sys, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor(json.loads(sys.argv[2]))
out = {}
for folder in sys.argv[1].split(","):
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        out[folder] = model(input_ids=ids).logits.tolist()
print(json.dumps(out))
"""


def test_checkpoint_loads_with_stock_transformers_in_a_fresh_process(tmp_path):
    """Symmetric int4 g32 (GPTQ) and int8 per channel (RTN):
    stock `from_pretrained` in a new process and `compressors.load` give back exactly the
    model that was evaluated, and the files are smaller."""
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    cases = {"gptq4": (run_gptq, GPTQConfig(group_size=32)),
             "rtn8": (run_rtn, RTNConfig(bits=8, group_size=-1))}
    expected, folders = {}, []
    for name, (run, config) in cases.items():
        model = tiny_model("llama")
        dense_bytes = sum(layer.weight.numel() * 4 for layer in select_layers(model).values())
        run(model, config, _context())
        with torch.no_grad():
            expected[name] = model(input_ids=ids).logits
        folder = tmp_path / name
        info = save_checkpoint(model, None, folder)
        assert not info.needs_compressors_load and "vllm serve" in info.how_to_serve
        quant = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert quant["quant_method"] == "compressed-tensors"
        assert quant["format"] == "pack-quantized" and quant["ignore"] == ["lm_head"]
        reloaded = compressors.load(folder)
        for layer_name, layer in select_layers(model).items():
            again = reloaded.get_submodule(layer_name)
            assert torch.equal(again.weight, layer.weight), layer_name
            assert not hasattr(again, QUANT_ATTR)
            assert [n for n, _ in again.named_parameters()] == ["weight"]
        saved = (folder / "model.safetensors").stat().st_size
        plain_bytes = sum(t.numel() * 4 for t in model.state_dict().values()) - dense_bytes
        assert saved < plain_bytes + dense_bytes * (0.35 if config.bits == 4 else 0.6)
        folders.append(str(folder))
    command = [sys.executable, "-c", FRESH, ",".join(folders), json.dumps(ids.tolist())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    logits = json.loads(done.stdout.strip().splitlines()[-1])
    for name, folder in zip(cases, folders, strict=True):
        assert torch.allclose(torch.tensor(logits[folder]), expected[name], atol=1e-5, rtol=0)


def test_conv1d_models_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="Conv1D"):
        run_rtn(tiny_model("gpt2"), RTNConfig(), _context())


def test_order_rules_and_field_errors():
    parse_recipe({"steps": [{"method": "sparsegpt", "pattern": "2:4"},
                            {"method": "perp", "train_steps": 1}, {"method": "gptq"}]})
    for later in ({"method": "wanda", "sparsity": 0.5}, {"method": "quantize"},
                  {"method": "rtn"}, {"method": "perp"}):
        with pytest.raises(ValidationError, match="put gptq last"):
            parse_recipe({"steps": [{"method": "gptq"}, later]})
    for bad, field in (({"method": "gptq", "group_size": 48}, "group_size"),
                       ({"method": "gptq", "bits": 3}, "bits"),
                       ({"method": "rtn", "act_order": True}, "act_order"),
                       ({"method": "gptq", "dampening": -1.0}, "dampening"),
                       ({"method": "rtn", "scale_dtype": "float8"}, "scale_dtype")):
        with pytest.raises(ValidationError, match=field):
            parse_recipe({"steps": [bad]})


@pytest.mark.real_model
def test_smollm2_gptq_int4_g64_beats_rtn(smollm2_path, smollm2_tokenizer):
    """On the real model and text (small budgets), GPTQ int4 g64 has lower perplexity than
    round-to-nearest at the same settings (min-max scales for both, to keep the test cheap;
    `bench/quantize.py --table int` compares the defaults at the full protocol)."""
    from compressors.evaluate import perplexity
    from compressors.io.loading import load_model

    loaded = load_model(smollm2_path)
    context = StepContext(model_source=smollm2_path, tokenizer=smollm2_tokenizer,
                          calibration=SMALL_CALIBRATION, evaluation=SMALL_EVALUATION)
    windows = context.evaluation_tokens()
    dense = perplexity(loaded.model, windows)
    rtn_model = load_model(smollm2_path).model
    run_rtn(rtn_model, RTNConfig(group_size=64, clip_search=False), context)
    rtn = perplexity(rtn_model, windows)
    del rtn_model
    result = run_gptq(loaded.model, GPTQConfig(group_size=64, clip_search=False), context)
    gptq = perplexity(loaded.model, windows)
    assert dense < gptq < rtn, (dense, gptq, rtn)
    assert result.section.bits_per_weight == pytest.approx(4.25)
    assert result.section.quantized_layers == 30 * 7


def test_streamed_run_equals_in_memory(tiny_llama_folder, tmp_path):
    """Blockwise on the shared engine: a streamed run publishes the very weights of the
    in-memory run (dense there: see the section's note)."""
    budgets = {"calibration": {"samples": 4, "seqlen": 64}, "evaluation": {"windows": 2,
                                                                          "seqlen": 64}}
    steps = [{"method": "sparsegpt", "sparsity": 0.5}, {"method": "gptq", "group_size": 32}]
    for mode in ("in_memory", "streamed"):
        recipe = parse_recipe({"steps": steps, "placement": mode, **budgets})
        compressors.compress(tiny_llama_folder, recipe, tmp_path / mode, device="cpu")
    reference = compressors.load(tmp_path / "in_memory")
    streamed = compressors.load(tmp_path / "streamed")
    for name, layer in select_layers(reference).items():
        assert torch.equal(streamed.get_submodule(name).weight, layer.weight), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_save_and_reload_bit_for_bit(tmp_path, dtype):
    """In bfloat16 the cast rounds the float16 scales, so codes must be recovered with the cast
    scale (int8 codes near 127 came back off by one and saving refused the weights)."""
    for bits, group in ((8, -1), (4, 32)):
        model = tiny_model("llama").to(dtype)
        run_gptq(model, GPTQConfig(bits=bits, group_size=group), _context())
        folder = tmp_path / f"{dtype}-w{bits}"
        save_checkpoint(model, None, folder)
        reloaded = compressors.load(folder)
        for name, layer in select_layers(model).items():
            again = reloaded.get_submodule(name).weight
            assert again.dtype == dtype and torch.equal(again, layer.weight), (bits, name)


def test_hessian_passes_change_nothing_for_dense_blocks_and_independent_experts(monkeypatch):
    """GPTQ in several Hessian passes per block: a dense block is one pass whatever the budget
    (the same weights bit for bit, and the same report), and experts, which read the same
    inputs whichever pass they are in, quantize exactly as in one pass when nothing before
    them changes (only experts selected); the default selection ends fully quantized."""
    from compressors.ops import hessian_passes

    for kind, include in (("llama", None), ("qwen3_moe", ["experts"]), ("qwen3_moe", None)):
        results = []
        for budget in (hessian_passes.PASS_BYTES, 64 * 1024):
            monkeypatch.setattr(hessian_passes, "PASS_BYTES", budget)
            model = tiny_model(kind)
            result = run_gptq(model, GPTQConfig(group_size=32, include=include), _context())
            results.append((model.state_dict(), result.section))
        (first, section), (second, chunked) = results
        assert chunked.quantized_layers == section.quantized_layers
        if include is None and kind == "qwen3_moe":  # the experts saw quantized attention
            assert chunked.quantized_layers == 2 * (4 + 8 * 3)
            continue
        assert all(torch.equal(first[k], second[k]) for k in first), kind
        assert chunked.relative_error == section.relative_error, kind
