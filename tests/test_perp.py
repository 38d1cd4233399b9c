"""PERP: exact masks after merging, adapters equal their merge, training lowers the loss.

Tiny random models cover every mode on Linear (Llama) and Conv1D (GPT-2) layers, unstructured
and N:M; the real SmolLM2 with real text covers masklora end to end.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import compressors
from compressors.engine.context import StepContext
from compressors.engine.modules import select_layers, weight_matrix
from compressors.engine.training import lr_factor
from compressors.io.loading import load_model
from compressors.methods.magnitude.config import MagnitudeConfig
from compressors.methods.magnitude.step import run as run_magnitude
from compressors.methods.perp import lora_math
from compressors.methods.perp import step as perp_step
from compressors.methods.perp.adapters import merge_adapters, wrap_layers, wrap_lm_head
from compressors.methods.perp.config import PerpConfig
from compressors.methods.perp.step import current_masks
from compressors.methods.perp.step import run as run_perp
from compressors.methods.wanda.config import WandaConfig
from compressors.methods.wanda.step import run as run_wanda
from compressors.ops.masks import nm_groups_valid
from compressors.recipe import parse_recipe
from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
from tests.conftest import SMALL_BUDGETS, tiny_model

MODES = ["norms", "masklora", "scalelora", "lora"]
NO_EVAL = EvaluationConfig(windows=0)


def _patterns(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: (weight_matrix(layer) != 0).clone() for n, layer in select_layers(model).items()}


def _lm_loss(model: nn.Module, windows: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows).loss)


@pytest.fixture
def fixed_windows(monkeypatch) -> torch.Tensor:
    """Tiny models have a 256-token vocabulary: train on fixed random ids, not real text."""
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(perp_step, "text_random_windows", lambda *_a, **_k: windows)
    return windows


# ---- pure math -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["masklora", "scalelora", "lora"])
def test_factors_start_as_identity_update(mode):
    weight = torch.randn(6, 8)
    mask = torch.rand(6, 8) > 0.5
    weight = weight * mask
    a, b = lora_math.init_factors(6, 8, 3, mode, torch.Generator().manual_seed(0))
    assert torch.equal(lora_math.adapted_weight(weight, a, b, mode, 2.0, mask), weight)


def test_scalelora_ranks_are_not_symmetric():
    """Rank 0 carries the ones; the other ranks start random in A so they can learn apart."""
    a, b = lora_math.init_factors(5, 7, 4, "scalelora", torch.Generator().manual_seed(0))
    assert torch.equal(b @ a, torch.ones(5, 7))
    assert not torch.equal(a[1], a[2])


@pytest.mark.parametrize("mode", ["masklora", "scalelora", "lora"])
def test_merge_keeps_the_mask_exactly(mode):
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(16, 12, generator=generator) > 0.5
    weight = torch.randn(16, 12, generator=generator) * mask
    a = torch.randn(4, 12, generator=generator)
    b = torch.randn(16, 4, generator=generator)
    merged = lora_math.merged_weight(weight, a, b, mode, 0.5, mask)
    assert torch.equal(merged != 0, mask)
    expected = lora_math.adapted_weight(weight, a, b, mode, 0.5, mask) * mask
    assert torch.allclose(merged, expected)


@pytest.mark.parametrize("mode", ["masklora", "scalelora", "lora"])
def test_adapted_linear_gradients_match_autograd(mode):
    """The memory-saving backward gives what autograd through `adapted_weight` gives."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(12, 10, generator=generator) > 0.5
    weight = torch.randn(12, 10, generator=generator, dtype=torch.float64) * mask
    a, b = lora_math.init_factors(12, 10, 3, mode, generator, dtype=torch.float64)
    b = b + 0.3 * torch.randn(b.shape, generator=generator, dtype=torch.float64)
    inputs = torch.randn(2, 5, 10, generator=generator, dtype=torch.float64)

    def run(custom: bool) -> list[torch.Tensor]:
        leaves = [t.clone().requires_grad_() for t in (inputs, weight, a, b)]
        x, w, fa, fb = leaves
        if custom:
            out = lora_math.adapted_linear(x, w, fa, fb, mode, 2.0, mask)
        else:
            adapted = lora_math.adapted_weight(w, fa, fb, mode, 2.0, mask)
            out = torch.nn.functional.linear(x, adapted)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return [out.detach()] + [leaf.grad for leaf in leaves]

    for ours, reference in zip(run(True), run(False), strict=True):
        assert torch.allclose(ours, reference)
    assert torch.autograd.gradcheck(
        lambda *t: lora_math.adapted_linear(*t, mode, 2.0, mask),
        tuple(t.clone().requires_grad_() for t in (inputs, weight, a, b)),
    )


def test_a_kept_weight_landing_on_zero_stays_nonzero():
    weight = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[True, False]])
    a = torch.tensor([[1.0, 1.0]])
    b = torch.tensor([[-1.0]])  # W + BA = [0, 1]: the kept weight hits exactly 0
    merged = lora_math.merged_weight(weight, a, b, "lora", 1.0, mask)
    assert torch.equal(merged != 0, mask)
    assert float(merged.abs().max()) < 1e-30


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert factors == sorted(factors[:2]) + sorted(factors[2:], reverse=True)
    assert lr_factor(10, 10, 2, "linear") == 0.0
    assert lr_factor(7, 10, 0, "constant") == 1.0


# ---- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"mode": "dense"}, "mode"),
        ({"rank": 0}, "rank"),
        ({"train_steps": 0}, "train_steps"),
        ({"warmup": -1}, "warmup"),
        ({"objective": "reconstruct", "lm_head_adapter": True}, "lm_head_adapter"),
        ({"lr": 0}, "lr"),
    ],
)
def test_invalid_settings_name_their_field(step, field):
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [{"method": "perp", **step}]})
    assert field in str(error.value)


def test_example_recipe_parses():
    recipe = parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5},
                                     {"method": "perp", "mode": "masklora", "train_steps": 300}]})
    assert isinstance(recipe.steps[1], PerpConfig) and recipe.steps[1].train_steps == 300
    # the best measured settings are the defaults: a user who writes only the steps gets them
    assert (recipe.steps[1].lr, recipe.steps[1].warmup) == (1e-3, 10)


def test_steps_is_a_deprecated_alias_of_train_steps():
    with pytest.warns(DeprecationWarning, match="train_steps"):
        recipe = parse_recipe({"steps": [{"method": "perp", "steps": 7}]})
    assert recipe.steps[0].train_steps == 7
    assert recipe.to_json_dict()["steps"][0]["train_steps"] == 7
    with pytest.raises(ValidationError, match="give only train_steps"):
        parse_recipe({"steps": [{"method": "perp", "steps": 7, "train_steps": 8}]})


# ---- adapters on tiny models -----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["masklora", "scalelora"])
def test_merged_model_equals_adapter_model(arch, mode):
    """After (simulated) training, the plain merged model computes what the adapters did."""
    model = tiny_model(arch)
    context = StepContext(model_source=None, tokenizer=None)
    run_magnitude(model, MagnitudeConfig(sparsity=0.5), context)
    masks = current_masks(model, context)
    wrapped = wrap_layers(model, {n: model.get_submodule(n) for n in masks}, masks, mode, 4,
                          8.0, seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for adapter in wrapped.values():
            adapter.lora_a.add_(0.1 * torch.randn(adapter.lora_a.shape, generator=generator))
            adapter.lora_b.add_(0.1 * torch.randn(adapter.lora_b.shape, generator=generator))
    ids = torch.randint(0, 256, (2, 16), generator=generator)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    merge_adapters(model, wrapped)
    assert not any(type(m).__name__ == "AdaptedLayer" for m in model.modules())
    with torch.no_grad():
        merged = model(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(weight_matrix(model.get_submodule(n)) != 0, m)
               for n, m in masks.items())


def test_lm_head_adapter_unties_and_reloads(tmp_path):
    model = tiny_model("llama")
    embedding = model.get_input_embeddings().weight.detach().clone()
    wrapped = wrap_lm_head(model, rank=4, alpha=8.0, seed=0)
    with torch.no_grad():
        next(iter(wrapped.values())).lora_b.add_(0.05)
    merge_adapters(model, wrapped)
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    assert not torch.equal(model.get_output_embeddings().weight, embedding)
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    reloaded = compressors.load(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_keeps_masks_and_lowers_loss(arch, mode, fixed_windows):
    model = tiny_model(arch)
    context = StepContext(model_source=None, tokenizer=None, evaluation=NO_EVAL)
    if arch == "llama":
        run_magnitude(model, MagnitudeConfig(sparsity=0.5), context)
    else:
        run_magnitude(model, MagnitudeConfig(pattern="2:4", scope="row"), context)
    before = _patterns(model)
    loss_before = _lm_loss(model, fixed_windows)
    config = PerpConfig(mode=mode, train_steps=12, rank=4, alpha=8.0, lr=1e-2, batch_size=4,
                        seqlen=32, schedule="constant")
    result = run_perp(model, config, context)

    after = _patterns(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    if arch == "gpt2":
        assert all(nm_groups_valid(weight_matrix(layer), 2, 4)
                   for layer in select_layers(model).values())
    assert _lm_loss(model, fixed_windows) < loss_before
    section = result.section.model_dump(mode="json")
    assert section["steps"] == 12 and section["tokens"] == 12 * 4 * 32
    [chart] = result.charts
    assert chart.id == "perp-loss" and len(chart.series[0].points) == 12
    assert 0 < section["trainable_percent"] < 100
    assert all(not p.requires_grad for p in model.parameters())


def test_gradient_checkpointing_trains_the_same_parameters(fixed_windows):
    """Frozen embeddings give checkpointed blocks no input that needs grad; adapters must
    still receive gradients (non-reentrant checkpointing), and the model must end as it began."""
    results = []
    for checkpointing in (False, True):
        model = tiny_model("llama")
        context = StepContext(model_source=None, tokenizer=None, evaluation=NO_EVAL)
        run_magnitude(model, MagnitudeConfig(sparsity=0.5), context)
        config = PerpConfig(mode="masklora", train_steps=3, rank=4, lr=1e-2, batch_size=4,
                            seqlen=32, gradient_checkpointing=checkpointing)
        [chart] = run_perp(model, config, context).charts
        results.append([loss for _step, loss in chart.series[0].points])
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert results[0] == pytest.approx(results[1], rel=1e-4)


def test_norms_mode_trains_only_biases_and_norms(fixed_windows):
    model = tiny_model("gpt2")
    context = StepContext(model_source=None, tokenizer=None, evaluation=NO_EVAL)
    run_magnitude(model, MagnitudeConfig(sparsity=0.5), context)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = PerpConfig(mode="norms", train_steps=3, lr=1e-2, batch_size=4, seqlen=32)
    run_perp(model, config, context)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, original[n])}
    assert changed, "nothing trained"
    assert all(n.endswith("bias") or ".ln_" in n for n in changed), changed


# ---- reconstruct objective, through the engine (real tokenizer and text, tiny model) ----------

def test_reconstruct_fits_each_block_and_keeps_nm(tiny_llama_folder):
    loaded = load_model(tiny_llama_folder)
    model = loaded.model
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=CalibrationConfig(samples=4, seqlen=64), evaluation=NO_EVAL)
    run_wanda(model, WandaConfig(pattern="2:4"), context)
    before = _patterns(model)
    config = PerpConfig(mode="masklora", objective="reconstruct", train_steps=8, rank=4, lr=5e-3,
                        batch_size=2, seqlen=64, schedule="constant")
    section = run_perp(model, config, context).section.model_dump(mode="json")
    assert all(torch.equal(before[n], m) for n, m in _patterns(model).items())
    blocks = section["block_losses"]
    assert [b["block"] for b in blocks] == ["model.layers.0", "model.layers.1"]
    assert all(b["last_loss"] < b["first_loss"] for b in blocks), blocks
    assert section["steps"] == 2 * 8


# ---- contract through the pipeline, and the real model ----------------------------------------

def test_report_section_through_the_pipeline(tiny_gpt2_folder, tmp_path, monkeypatch):
    from compressors import pipeline

    recipe = parse_recipe({
        "steps": [{"method": "magnitude", "sparsity": 0.5},
                  {"method": "perp", "mode": "lora", "train_steps": 2, "seqlen": 32, "rank": 2}],
        **SMALL_BUDGETS,
    })
    pipeline_measurements = []
    measure = pipeline.perplexity
    monkeypatch.setattr(pipeline, "perplexity",
                        lambda *a, **k: pipeline_measurements.append(1) or measure(*a, **k))
    out = tmp_path / "out"
    report = compressors.compress(tiny_gpt2_folder, recipe, out, device="cpu").to_json()
    # PERP measured the final model already: the pipeline measures only the dense one.
    assert len(pipeline_measurements) == 1
    assert report["metrics"]["after"]["perplexity"] == (
        report["retraining"]["perplexity"]["evaluation"]["retrained"])
    section = json.loads((tmp_path / "out" / "compression_report.json").read_text())["retraining"]
    assert section == json.loads(json.dumps(report["retraining"]))
    assert set(section["perplexity"]) == {"evaluation", "second_text"}
    assert section["perplexity"]["second_text"]["text"] == "pydoc:topics"
    assert abs(report["sparsity"]["total"] - 0.5) < 1e-6


@pytest.mark.real_model
def test_smollm2_masklora_recovers_and_keeps_masks(smollm2_path):
    loaded = load_model(smollm2_path)
    model = loaded.model
    small = parse_recipe({"steps": [{"method": "perp"}], **SMALL_BUDGETS})
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=small.calibration, evaluation=small.evaluation)
    run_wanda(model, WandaConfig(sparsity=0.5), context)
    before = _patterns(model)
    config = PerpConfig(mode="masklora", train_steps=4, seqlen=128, batch_size=2, lr=1e-3, rank=8)
    section = run_perp(model, config, context).section.model_dump(mode="json")

    assert all(torch.equal(before[n], m) for n, m in _patterns(model).items())
    for layer in select_layers(model).values():  # wanda 50%: exactly half of every row
        weight = weight_matrix(layer)
        assert bool(((weight == 0).sum(1) == weight.shape[1] // 2).all())
    ppl = section["perplexity"]["evaluation"]
    assert ppl["retrained"] < ppl["pruned"], ppl
    assert section["trainable_percent"] < 5
    assert section["tokens"] == 4 * 2 * 128
