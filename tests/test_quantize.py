"""The `quantize` step: bitsandbytes int8 / nf4 / fp4, double quant, LoRC, save -> reload.

Tiny random models check the mechanics fast; SmolLM2 with real text checks that int8 and nf4
keep perplexity close, that checkpoints reload with stock transformers to the same logits, and
that pruned zeros survive quantization.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import compressors
from compressors.engine.context import StepContext
from compressors.engine.layers import dense_weight, is_packed, memory_footprint
from compressors.engine.modules import weight_matrix
from compressors.evaluate import parameter_counts, sparsity_report
from compressors.io.loading import save_checkpoint
from compressors.methods.quantize.config import QuantizeConfig
from compressors.methods.quantize.layers import bnb_layers, corrections
from compressors.methods.quantize.lorc import corrected, low_rank_factors, relative_error
from compressors.methods.quantize.step import run as run_quantize
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS, tiny_model

SCHEMES = {
    "int8": {"bits": 8},
    "nf4": {"bits": 4, "quant_type": "nf4"},
    "fp4": {"bits": 4, "quant_type": "fp4"},
    "nf4-double-quant": {"bits": 4, "quant_type": "nf4", "double_quant": True},
}


def quantize(model: nn.Module, **options) -> tuple[nn.Module, dict]:
    """Run the step directly, as the pipeline does, and return (new model, report section)."""
    context = StepContext(model_source=Path("."), tokenizer=None)
    result = run_quantize(model, QuantizeConfig(**options), context)
    assert result.model is not None
    return result.model, result.section.model_dump(mode="json")


def logits(model: nn.Module, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def reload_plain(folder: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)


# ---------------------------------------------------------------- LoRC math (pure tensors)


def test_lorc_factors_are_the_best_low_rank_fit():
    torch.manual_seed(0)
    error = torch.randn(48, 32)
    previous = relative_error(error, torch.zeros_like(error))
    for rank in (1, 4, 16):
        up, down = low_rank_factors(error, rank, dtype=torch.float32)
        assert up.shape == (48, rank) and down.shape == (rank, 32)
        now = relative_error(error, up @ down)
        assert now < previous
        previous = now
        # Eckart-Young: the residual is exactly the tail of the singular values.
        s = torch.linalg.svdvals(error)
        assert now == pytest.approx(float(s[rank:].norm() / s.norm()), rel=1e-4)
    up, down = low_rank_factors(error, 500, dtype=torch.float32)
    assert up.shape == (48, 32)  # clipped to min(out, in): exact
    assert relative_error(error, up @ down) < 1e-5


def test_lorc_correction_moves_weight_towards_the_original():
    torch.manual_seed(1)
    weight = torch.randn(64, 64)
    quantized = (weight * 4).round() / 4
    up, down = low_rank_factors(weight - quantized, 8)
    assert up.dtype == torch.float16
    assert relative_error(weight, corrected(quantized, up, down)) < relative_error(
        weight, quantized
    )
    with pytest.raises(ValueError, match="rank"):
        low_rank_factors(weight, 0)


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"bits": 3}, "bits"),
        ({"quant_type": "int4"}, "quant_type"),
        ({"bits": 8, "double_quant": True}, "double_quant"),
        ({"bits": 8, "quant_type": "fp4"}, "quant_type"),
        ({"blocksize": 100}, "blocksize"),
        ({"threshold": -1.0}, "threshold"),
        ({"lorc_rank": -2}, "lorc_rank"),
        ({"exclude": ["(unclosed"]}, "exclude"),
        ({"skip": ["(unclosed"]}, "exclude"),
        ({"compute_dtype": "float64"}, "compute_dtype"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_options_name_their_field(step, field):
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [{"method": "quantize", **step}]})
    assert field in str(error.value)


def test_defaults_quantize_block_layers_only():
    config = QuantizeConfig()
    assert (config.bits, config.quant_type, config.threshold, config.lorc_rank) == (4, "nf4",
                                                                                     6.0, 0)
    assert config.include is None and config.exclude is None


def test_skip_is_a_deprecated_alias_of_exclude():
    with pytest.warns(DeprecationWarning, match="skip"):
        config = QuantizeConfig.model_validate({"skip": [r"mlp\."]})
    assert config.exclude == [r"mlp\."]
    with pytest.raises(ValidationError, match="give only exclude"):
        QuantizeConfig.model_validate({"skip": ["a"], "exclude": ["b"]})


# ---------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_scheme_quantizes_and_reloads_to_same_logits(scheme, arch, tmp_path):
    dense = tiny_model(arch)
    reference = logits(dense)
    model, section = quantize(dense, **SCHEMES[scheme])

    layers = dict(bnb_layers(model))
    assert len(layers) == section["quantized_layers"] == (14 if arch == "llama" else 8)
    assert not is_packed(model.lm_head) and section["skipped_layers"] == ["lm_head"]
    expected = "Linear8bitLt" if scheme == "int8" else "Linear4bit"
    assert {type(layer).__name__ for layer in layers.values()} == {expected}
    before = logits(model)  # the first forward repacks 4-bit weights on AVX512-BF16 CPUs
    assert (before - reference).abs().max() < 0.1 * reference.abs().max()
    assert not torch.equal(before, reference)

    save_checkpoint(model, None, tmp_path)
    assert torch.equal(logits(model), before), "saving must not change the live model"
    assert torch.equal(logits(reload_plain(tmp_path)), before)
    assert torch.equal(logits(compressors.load(tmp_path)), before)


def wide_llama() -> nn.Module:
    """One block with 256/512 features: room for bigger blocks and shared code books."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         architectures=["LlamaForCausalLM"])
    return AutoModelForCausalLM.from_config(config).eval()


def test_double_quant_saves_scale_memory():
    plain, _ = quantize(wide_llama(), quant_type="nf4")
    double, _ = quantize(wide_llama(), quant_type="nf4", double_quant=True)
    assert memory_footprint(double) < memory_footprint(plain)
    assert all(layer.weight.quant_state.nested for _, layer in bnb_layers(double))


def test_counts_are_logical_and_footprint_shrinks():
    dense = tiny_model("llama")
    total, _ = parameter_counts(dense)
    footprint = memory_footprint(dense)
    for options in SCHEMES.values():
        model, section = quantize(tiny_model("llama"), **options)
        assert parameter_counts(model)[0] == total
        assert memory_footprint(model) < footprint
        assert section["footprint_bytes"]["before"] == footprint
        assert section["compute"]  # says what the matmul really runs in
        for name, layer in bnb_layers(model):
            original = dict(dense.named_modules())[name]
            assert dense_weight(layer).shape == weight_matrix(original).shape


def test_dense_weight_is_stable_across_cpu_repacking():
    model, _ = quantize(tiny_model("llama"), quant_type="nf4")
    before = {name: dense_weight(layer) for name, layer in bnb_layers(model)}
    logits(model)
    for name, layer in bnb_layers(model):
        # the CPU kernel layout keeps the scales in bfloat16: equal up to that rounding
        assert torch.allclose(dense_weight(layer), before[name], rtol=1e-2, atol=1e-6)
        assert torch.equal(dense_weight(layer) == 0, before[name] == 0)
    with pytest.raises(TypeError, match="dense_weight"):
        weight_matrix(model.model.layers[0].mlp.up_proj)


def test_exclude_patterns_keep_layers_dense():
    model, section = quantize(tiny_model("llama"), exclude=[r"mlp\."])
    assert section["quantized_layers"] == 8
    assert all("mlp" not in name for name, _ in bnb_layers(model))
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear
    with pytest.raises(ValueError, match="include/exclude"):
        quantize(tiny_model("llama"), exclude=["."])


def test_blocksize_is_used_and_must_divide_inputs(tmp_path):
    with pytest.raises(ValueError, match="blocksize"):
        quantize(tiny_model("llama"), blocksize=128)  # hidden size 64
    model, _ = quantize(wide_llama(), blocksize=256)
    assert {layer.weight.quant_state.blocksize for _, layer in bnb_layers(model)} == {256}
    before = logits(model)
    save_checkpoint(model, None, tmp_path)
    reloaded = reload_plain(tmp_path)
    assert {layer.weight.quant_state.blocksize for _, layer in bnb_layers(reloaded)} == {256}
    assert torch.equal(logits(reloaded), before)


def test_quantizing_twice_is_refused():
    model, _ = quantize(tiny_model("llama"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model)


@pytest.mark.parametrize("bits", [4, 8])
def test_lorc_lowers_every_layer_error_and_reloads(bits, tmp_path):
    dense = tiny_model("llama")
    originals = {n: weight_matrix(m).clone() for n, m in dense.named_modules()
                 if isinstance(m, nn.Linear)}
    plain, _ = quantize(tiny_model("llama"), bits=bits)
    model, section = quantize(dense, bits=bits, lorc_rank=8)
    found = corrections(model)
    assert len(found) == section["lorc"]["layers"] == 14
    assert section["lorc"]["extra_bytes"] == sum(
        c.up.numel() * 2 + c.down.numel() * 2 for c in found.values())
    assert section["lorc"]["mean_relative_error_after"] < section["lorc"][
        "mean_relative_error_before"]
    for name, layer in bnb_layers(model):
        correction = found[name]
        assert correction.rank == 8
        effective = corrected(dense_weight(layer), correction.up, correction.down)
        assert relative_error(originals[name], effective) < relative_error(
            originals[name], dense_weight(layer))
    with_lorc = logits(model)
    assert not torch.equal(with_lorc, logits(plain))

    save_checkpoint(model, None, tmp_path)
    assert (tmp_path / "lorc.safetensors").is_file()
    assert torch.equal(logits(compressors.load(tmp_path)), with_lorc)
    # stock transformers still reads the checkpoint: the quantized model without corrections
    assert torch.equal(logits(reload_plain(tmp_path)), logits(plain))


def test_pruned_zeros_survive_quantization():
    from compressors.ops.masks import choose_mask

    dense = tiny_model("gpt2")
    for name, layer in dense.named_modules():
        if name.startswith("transformer.h.") and hasattr(layer, "nf"):
            weight = weight_matrix(layer)
            weight.mul_(choose_mask(weight.abs(), 0.5, None))
    for options in SCHEMES.values():
        model, section = quantize(copy.deepcopy(dense), **options)
        assert section["zeros_before"] > 0
        assert section["zeros_kept"] == section["zeros_before"]
        assert sparsity_report(model).total >= 0.5


def test_pipeline_report_on_tiny_model(tiny_llama_folder, tmp_path):
    recipe = parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.5},
                                     {"method": "quantize", "lorc_rank": 4}], **SMALL_BUDGETS})
    out = tmp_path / "out"
    report = compressors.compress(tiny_llama_folder, recipe, out, device="cpu").to_json()
    quant = report["quantization"]
    assert quant["zeros_kept"] == quant["zeros_before"] > 0
    assert report["sparsity"]["total"] >= 0.5
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    assert after["parameters"] == before["parameters"]
    assert after["size_bytes"] < before["size_bytes"]
    assert after["footprint_bytes"] < before["footprint_bytes"]
    assert after["tokens_per_second"] > 0 and quant["lorc"]["extra_bytes"] > 0


# ---------------------------------------------------------------- real SmolLM2


@pytest.mark.real_model
@pytest.mark.parametrize(("scheme", "max_ratio"), [("int8", 1.03), ("nf4", 1.25)])
def test_smollm2_quantized_perplexity_and_reload(scheme, max_ratio, smollm2_path, tmp_path):
    from compressors.engine.windows import evaluation_windows
    from compressors.evaluate import perplexity
    from compressors.recipe.protocol import EvaluationConfig

    step = {"method": "quantize", **SCHEMES[scheme]}
    recipe = parse_recipe({"steps": [step], **SMALL_BUDGETS})
    out = tmp_path / "out"
    report = compressors.compress(smollm2_path, recipe, out, device="cpu").to_json()
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    assert after["perplexity"] <= before["perplexity"] * max_ratio
    assert after["perplexity"] != before["perplexity"]
    assert after["size_bytes"] < before["size_bytes"] * (0.45 if scheme == "int8" else 0.35)
    assert report["quantization"]["quantized_layers"] == 30 * 7

    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    windows = evaluation_windows(tokenizer, EvaluationConfig(**SMALL_BUDGETS["evaluation"]))
    # the report's perplexity was measured on the in-memory model before saving
    assert perplexity(reloaded, windows) == pytest.approx(after["perplexity"], rel=1e-9)


@pytest.mark.real_model
def test_smollm2_wanda_then_nf4_keeps_zeros(smollm2_path, tmp_path):
    recipe = parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5},
                                     {"method": "quantize", "quant_type": "nf4"}],
                           **SMALL_BUDGETS})
    out = tmp_path / "out"
    report = compressors.compress(smollm2_path, recipe, out, device="cpu").to_json()
    quant = report["quantization"]
    assert quant["zeros_kept"] == quant["zeros_before"] > 0
    assert report["sparsity"]["total"] >= 0.5
    reloaded = compressors.load(out)
    assert sparsity_report(reloaded).total >= 0.5
