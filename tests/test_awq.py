"""AWQ (`awq`): the search keeps the function and never ends worse than no scaling, its cheap
objective is the exact output error, the checkpoints reload with stock transformers in a fresh
process to the evaluated logits (asymmetric ones decompressed while loading),
pruned zeros stay zero, MoE experts are rounded unscaled, the output-error clipping rounds
on the ranges it measured,
order rules, and on the real SmolLM2 the scales lower the block error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError

import compressors
from compressors.engine.context import StepContext
from compressors.engine.folding import EXPERT_REASON, FoldFinder
from compressors.engine.modules import select_layers
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.io.loading import save_checkpoint
from compressors.methods.awq.config import AWQConfig
from compressors.methods.awq.scales import scale_block
from compressors.methods.awq.step import run as run_awq
from compressors.methods.wanda.config import WandaConfig
from compressors.methods.wanda.step import run as run_wanda
from compressors.ops.clipping import group_grams, output_clip
from compressors.ops.int_grid import Grid, rtn_quantize
from compressors.ops.smoothing import output_error, search_points
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_CALIBRATION, tiny_model
from tests.test_w8a8 import fresh_logits


def _context() -> StepContext:
    gen = torch.Generator().manual_seed(0)
    return StepContext(model_source=None, tokenizer=None,
                       calibration_windows=torch.randint(0, 256, (4, 32), generator=gen))


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("objective", ["module", "layers"])
def test_scales_keep_the_function_and_never_lose_to_no_scaling(objective):
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    finder, results = FoldFinder(), []
    grids = {n: Grid(4, 32) for n in select_layers(model)}

    def scale(block: BlockContext) -> None:
        found, _ = scale_block(block, finder.folds(block), grids, search_points(8, "both"),
                               objective, clip=False)
        results.extend(found)

    run_sequential(model, _context().calibration_tokens(), select_layers(model), scale)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-5), (after - before).abs().max()
    assert len(results) == 2 * 3
    assert all(r.loss_best <= r.loss_unscaled for r in results)
    assert any(r.loss_best < r.loss_unscaled for r in results)


def test_the_layers_objective_is_the_exact_output_error():
    gen = torch.Generator().manual_seed(0)
    weight, inputs = torch.randn(16, 64, generator=gen), torch.randn(200, 64, generator=gen)
    approx = rtn_quantize(weight, Grid(4, 32), search=False).dense()
    direct = float(((inputs @ (approx - weight).T) ** 2).sum())
    assert output_error(weight, approx, inputs.T @ inputs) == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_rounds_on_the_ranges_it_measured_and_never_raises_their_error(symmetric):
    """Min-max rounding of the clamped weight is the rounding the clip measured (its error,
    recomputed here from the inputs themselves, is the one reported), no worse than min-max
    ranges; zeros stay zero; inputs no token reached change nothing."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 64, generator=gen)
    weight[:, 5] *= 8  # an outlier column: its groups want a narrower range
    weight[0, :7] = 0
    inputs = torch.randn(300, 64, generator=gen) * torch.linspace(0.2, 3, 64)
    grid = Grid(4, 32, symmetric=symmetric)
    clamped, clip = output_clip(weight, grid, group_grams(inputs, 32))
    rounded = rtn_quantize(clamped, grid, search=False).dense()

    def group_error(approx: torch.Tensor) -> float:
        diff = approx - weight
        return sum(float(((diff[:, g:g + 32] @ inputs[:, g:g + 32].T) ** 2).sum())
                   for g in (0, 32))

    assert clip.error_clipped == pytest.approx(group_error(rounded), rel=1e-4)
    assert clip.error_minmax == pytest.approx(
        group_error(rtn_quantize(weight, grid, search=False).dense()), rel=1e-4)
    assert clip.error_clipped < clip.error_minmax
    assert 0 < clip.shrunk < 1
    assert bool((rounded[0, :7] == 0).all())
    untouched, nothing = output_clip(weight, grid, torch.zeros(2, 32, 32))
    assert torch.equal(untouched, weight) and nothing.shrunk == 0


def test_checkpoints_reload_with_stock_transformers_to_the_evaluated_logits(tmp_path):
    """AWQ + RTN and AWQ + GPTQ, int4 g32: pack-quantized, the scales folded into the norms
    and Linear rows the checkpoint stores, so stock transformers needs nothing else."""
    ids = _ids()
    expected, folders = {}, []
    for quantizer in ("rtn", "gptq"):
        model = tiny_model("llama")
        result = run_awq(model, AWQConfig(group_size=32, quantizer=quantizer, grid=6), _context())
        section = result.section.model_dump(mode="json")
        assert section["method"] == "awq" and section["quantizer"] == quantizer
        assert section["precision"]["input_activations"].startswith("16-bit")
        assert [c.id for c in result.charts] == ["quantization-error", "awq-search"]
        with torch.no_grad():
            expected[quantizer] = model(input_ids=ids).logits
        folder = tmp_path / quantizer
        info = save_checkpoint(model, None, folder)
        assert "Ampere" in info.how_to_serve
        quant = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert quant["format"] == "pack-quantized"
        folders.append(str(folder))
    reloaded = fresh_logits(folders, ids)
    for quantizer, folder in zip(expected, folders, strict=True):
        assert torch.allclose(reloaded[folder], expected[quantizer], atol=1e-5, rtol=0)


STOCK_LOAD = """
import sys
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True)
except Exception as error:
    print("refused:", type(error).__name__)
else:
    print("loaded")
"""


@pytest.mark.parametrize("quantizer", ["rtn", "gptq"])
def test_asymmetric_checkpoints_reload_decompressed_to_the_evaluated_logits(tmp_path, quantizer):
    """Asymmetric int4: zero points packed `[out/8, groups]` int32, the layout vLLM and
    compressed-tensors' own decompression read. transformers 5.25 with compressed-tensors
    0.20.1 gives a packed layer an unpacked `[out, groups]` zero point, so the checkpoint asks
    it to decompress while loading (`dequantize: true`): stock transformers and
    `compressors.load` then give back the evaluated logits in a fresh process. Canary: the
    same files without the flag are still refused (size mismatch); when that fails, the
    loader is fixed and the flag can go (`io.compressed_tensors.ZERO_POINT_BLOCKER`)."""
    from safetensors import safe_open

    model = tiny_model("llama")
    result = run_awq(model, AWQConfig(group_size=32, symmetric=False, quantizer=quantizer,
                                      grid=6), _context())
    grids = result.section.model_dump(mode="json")
    assert grids["symmetric"] is False
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    folder = tmp_path / "asym"
    info = save_checkpoint(model, None, folder)
    assert "dequantize: true" in info.how_to_load and "asymmetric" in info.how_to_load
    with safe_open(str(next(folder.glob("*.safetensors"))), "pt") as files:
        names = list(files.keys())
        zeros = [k for k in names if k.endswith("weight_zero_point")]
        assert zeros and all(k.replace("zero_point", "scale") in names for k in zeros)
        for key in zeros:
            scale = files.get_slice(key.replace("zero_point", "scale")).get_shape()
            assert files.get_slice(key).get_shape() == [scale[0] // 8, scale[1]]
            assert files.get_slice(key).get_dtype() == "I32"
    reloaded = fresh_logits([str(folder)], ids)[str(folder)]
    assert torch.allclose(reloaded, expected, atol=1e-5, rtol=0), (reloaded - expected).abs().max()
    with torch.no_grad():
        ours = compressors.load(folder)(input_ids=ids).logits
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)

    canary = tmp_path / "packed"
    shutil.copytree(folder, canary)
    config = json.loads((canary / "config.json").read_text())
    del config["quantization_config"]["dequantize"]
    (canary / "config.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-c", STOCK_LOAD, str(canary)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.stdout.strip().splitlines()[-1] == "refused: RuntimeError", done.stderr[-2000:]


def test_pruned_zeros_stay_zero():
    model = tiny_model("llama")
    context = _context()
    run_wanda(model, WandaConfig(sparsity=0.5), context)
    pruned = {n: (layer.weight.data == 0).clone() for n, layer in select_layers(model).items()}
    result = run_awq(model, AWQConfig(group_size=32, grid=6), context)
    for name, layer in select_layers(model).items():
        assert bool((layer.weight.data[pruned[name]] == 0).all()), name
    section = result.section.model_dump(mode="json")
    assert section["zeros_kept"] == section["zeros_before"] == sum(
        int(z.sum()) for z in pruned.values())


def test_mixture_of_experts_experts_are_rounded_unscaled(tmp_path):
    model = tiny_model("qwen3_moe")
    result = run_awq(model, AWQConfig(group_size=32, grid=6), _context())
    section = result.section.model_dump(mode="json")
    experts = [n for n, why in section["unscaled_layers"].items() if why == EXPERT_REASON]
    assert len(experts) == 2 * 8 * 3
    assert set(experts) <= set(section["relative_error"]["per_layer"])
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    folder = tmp_path / "moe"
    save_checkpoint(model, None, folder)
    reloaded = fresh_logits([str(folder)], ids)[str(folder)]
    assert torch.allclose(reloaded, expected, atol=1e-5, rtol=0), (reloaded - expected).abs().max()


def test_order_rules_name_both_steps():
    with pytest.raises(ValidationError, match=r"steps.1 \(awq\) cannot follow steps.0 "
                                              r"\(lowrank\)"):
        parse_recipe({"steps": [{"method": "lowrank", "rank": 8}, {"method": "awq"}]})
    parse_recipe({"steps": [{"method": "lowrank", "rank": 8, "export_dense": True},
                            {"method": "awq"}]})
    parse_recipe({"steps": [{"method": "sparsegpt", "pattern": "2:4"},
                            {"method": "perp", "train_steps": 1},
                            {"method": "awq", "quantizer": "gptq"}]})
    with pytest.raises(ValidationError, match="put awq last"):
        parse_recipe({"steps": [{"method": "awq"}, {"method": "rtn"}]})
    for bad, field in (({"method": "awq", "grid": 1}, "grid"),
                       ({"method": "awq", "quantizer": "hqq"}, "quantizer"),
                       ({"method": "awq", "objective": "block"}, "objective"),
                       ({"method": "awq", "group_size": 48}, "group_size")):
        with pytest.raises(ValidationError, match=field):
            parse_recipe({"steps": [bad]})


@pytest.mark.real_model
def test_smollm2_awq_scales_and_clipping_lower_the_block_error(smollm2_path, smollm2_tokenizer):
    """On the real model (small budgets), blocks 0-2: the output error of the block rounded
    to int4 g64 (min-max, no clipping, to isolate the scales) is lower with AWQ's scales
    folded than without, and in block 0 (the same inputs either way) lower again once each
    group's range is clipped by its output error (the clamped weights rounded min-max)."""
    from compressors.io.loading import load_model

    context = StepContext(model_source=smollm2_path, tokenizer=smollm2_tokenizer,
                          calibration=SMALL_CALIBRATION)
    grids = {n: Grid(4, 64) for n in select_layers(load_model(smollm2_path).model)}
    finder = FoldFinder()
    errors: dict[bool, list[tuple[float, float]]] = {False: [], True: []}

    def rounded_error(block: BlockContext, reference: list[torch.Tensor]) -> float:
        saved = {n: layer.weight.data.clone() for n, layer in block.layers.items()}
        for name, layer in block.layers.items():
            layer.weight.data.copy_(rtn_quantize(layer.weight.data, grids[name],
                                                 search=False).dense())
        error = sum(float((out - ref).pow(2).sum())
                    for out, ref in zip(block.outputs(), reference, strict=True))
        for name, layer in block.layers.items():
            layer.weight.data.copy_(saved[name])
        return error

    def compare(clip: bool) -> Callable[[BlockContext], None]:
        @torch.no_grad()
        def measure(block: BlockContext) -> None:
            if block.index > 2:
                return
            reference = block.outputs()
            plain = rounded_error(block, reference)
            scale_block(block, finder.folds(block), grids, search_points(20, "both"),
                        "module", clip)
            errors[clip].append((plain, rounded_error(block, reference)))

        return measure

    for clip in (False, True):
        model = load_model(smollm2_path).model
        targets = select_layers(model)
        run_sequential(model, context.calibration_tokens(), targets, compare(clip))
    assert len(errors[False]) == len(errors[True]) == 3
    assert all(awq < plain for plain, awq in errors[False]), errors
    # block 0 reads the same inputs in both runs (later blocks read clamped blocks' outputs):
    # the same scales, then each group's range clipped by its output error
    assert errors[True][0][0] == errors[False][0][0]
    assert errors[True][0][1] < errors[False][0][1], errors


def test_search_operation_writes_steps_that_parse_and_predicts_their_bytes():
    from compressors.methods import import_object, search_spaces

    space = search_spaces()["awq"]
    assert space.levels == ("int4-awq",)
    choices = {f"model.layers.{i}.mlp.down_proj": ("int4-awq" if i % 2 else "dense")
               for i in range(4)}
    step = import_object(space.step)(choices)
    parsed = parse_recipe({"steps": [step.model_dump(mode="json")]}).steps[0]
    assert parsed.method == "awq" and parsed.bits == 4 and parsed.include
    # 576 inputs: 9 groups of 64, one float16 scale each
    assert import_object(space.layer_bytes)("int4-awq", 10, 576, "float32") == (
        10 * 576 / 2 + 10 * 9 * 2)
    weight = torch.randn(32, 576, generator=torch.Generator().manual_seed(0))
    error = float((import_object(space.perturb)(weight, "int4-awq", None) - weight).norm()
                  / weight.norm())
    assert 0.01 < error < 0.2
