"""The `lowrank` step (PELA): SVD math, rank rules, the factorized layer, training, checkpoints.

Pure tensor math is checked on plain matrices; the mechanics on tiny random Llama / GPT-2
(Conv1D) / BERT models; the real thing on SmolLM2 with real text (perplexity after a few PELA
steps below SVD only, checkpoint much smaller, identical logits after reload) and on MiniLM
(sentence-embedding cosine to the original rises with distillation-only training).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers.pytorch_utils import Conv1D

import compressors
from compressors.context import StepContext
from compressors.lowrank import LowRankConfig
from compressors.lowrank.factorize import (
    allocate_energy,
    allocate_uniform,
    break_even_rank,
    feature_loss,
    perturbation_loss,
    rank_for_energy,
    rank_for_ratio,
    reduces_params,
    svd_factors,
)
from compressors.lowrank.layers import LowRankLinear, lowrank_layers, merge_to_dense
from compressors.lowrank.step import choose_ranks, run_lowrank
from compressors.lowrank.train import pela_loss, train_pela
from compressors.model_io import save_checkpoint, size_on_disk
from compressors.modules import select_layers
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS, tiny_model

# ---------------------------------------------------------------- pure math


def test_svd_factors_are_the_best_rank_r_fit_with_sqrt_sigma_on_both_sides():
    torch.manual_seed(0)
    weight = torch.randn(48, 32)
    sigma = torch.linalg.svdvals(weight.double())
    up, down = svd_factors(weight, 10)
    assert up.shape == (48, 10) and down.shape == (10, 32)
    error = torch.linalg.norm((up @ down).double() - weight.double())
    assert error == pytest.approx(float(sigma[10:].pow(2).sum().sqrt()), rel=1e-5)
    # Σ^½ on both sides: column i of up and row i of down both have norm sqrt(σ_i)
    torch.testing.assert_close(up.norm(dim=0).double(), sigma[:10].sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(down.norm(dim=1).double(), sigma[:10].sqrt(), rtol=1e-5,
                               atol=1e-6)
    full_up, full_down = svd_factors(weight, 32)
    torch.testing.assert_close(full_up @ full_down, weight, rtol=1e-4, atol=1e-5)


def test_rank_rules():
    assert break_even_rank(100, 100) == 50
    assert reduces_params(100, 100, 49) and not reduces_params(100, 100, 50)
    assert rank_for_ratio(576, 1536, 2.0) == int(576 * 1536 / (2 * (576 + 1536)))
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(sigma, 9 / 14 - 1e-6) == 1
    assert rank_for_energy(sigma, 13 / 14 - 1e-6) == 2
    assert rank_for_energy(sigma, 0.99) == 3


def test_uniform_allocation_keeps_at_most_the_target_fraction():
    shapes = {"a": (576, 576), "b": (192, 576), "c": (1536, 576)}
    ranks = allocate_uniform(shapes, 0.667)
    dense = sum(o * i for o, i in shapes.values())
    kept = sum(ranks[n] * (o + i) for n, (o, i) in shapes.items())
    assert 0.64 < kept / dense <= 0.667


def test_energy_allocation_spends_the_budget_where_the_spectrum_is_flat():
    shapes = {"flat": (64, 64), "steep": (64, 64)}
    spectra = {"flat": torch.ones(64), "steep": 0.5 ** torch.arange(64.0)}
    ranks = allocate_energy(spectra, shapes, 0.4)
    kept = sum(ranks[n] * (o + i) for n, (o, i) in shapes.items())
    assert kept <= 0.4 * 2 * 64 * 64
    assert ranks["flat"] > 3 * ranks["steep"]
    assert all(reduces_params(64, 64, r) for r in ranks.values())


def test_losses_are_zero_at_the_target_and_scale_free():
    torch.manual_seed(0)
    weight = torch.randn(16, 8)
    up, down = svd_factors(weight, 8)
    assert float(perturbation_loss(up, down, weight)) < 1e-8
    up4, down4 = svd_factors(weight, 4)
    assert float(perturbation_loss(up4, down4, weight)) == pytest.approx(
        float(perturbation_loss(10 * up4, 10 * down4, 100 * weight)), rel=1e-4)
    teacher = torch.randn(2, 5, 8)
    assert float(feature_loss(teacher, teacher)) == 0.0
    student = teacher + 0.1 * torch.randn_like(teacher)
    assert float(feature_loss(student, teacher)) == pytest.approx(
        float(feature_loss(1000 * student, 1000 * teacher)), rel=1e-4)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("step", "field"), [
    ({"ratio": 0.5}, "ratio"),
    ({"rank": 0}, "rank"),
    ({"energy": 1.0}, "energy"),
    ({"target_params": 1.2}, "target_params"),
    ({}, "target_params"),
    ({"rank": 8, "energy": 0.9}, "energy"),
    ({"rank": 8, "steps": -1}, "steps"),
    ({"rank": 8, "steps": 5, "warmup": 6}, "warmup"),
    ({"rank": 8, "lr": 0}, "lr"),
])
def test_invalid_settings_name_their_field(step, field):
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [{"method": "lowrank", **step}]})
    assert field in str(error.value)


# ---------------------------------------------------------------- layer + model surgery


@pytest.mark.parametrize("source", ["linear", "conv1d"])
def test_lowrank_layer_matches_its_source_at_full_rank_and_merges_back(source):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40) if source == "linear" else Conv1D(40, 24)
    x = torch.randn(3, 7, 24)
    factored = LowRankLinear.from_layer(layer, 24)
    assert factored.source == source
    torch.testing.assert_close(factored(x), layer(x), rtol=1e-4, atol=1e-5)
    dense = factored.to_dense()
    assert type(dense) is type(layer)
    torch.testing.assert_close(dense(x), factored(x), rtol=1e-4, atol=1e-5)


def test_layers_that_would_not_shrink_are_left_dense():
    model = tiny_model("llama")  # hidden 64, kv 32, intermediate 128
    layers = select_layers(model)
    ranks, skipped = choose_ranks(layers, LowRankConfig(rank=30))
    # k/v are [32, 64]: break-even 21.3 < 30; q/o [64, 64]: 32 > 30; mlp [128, 64]: 42.7 > 30
    assert all(n.endswith(("k_proj", "v_proj")) for n in skipped)
    assert len(skipped) == 4 and len(ranks) == len(layers) - 4


def _context(model_source: Path = Path("."), tokenizer=None) -> StepContext:
    return StepContext(model_source=model_source, tokenizer=tokenizer)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_svd_only_step_reduces_targeted_parameters_to_the_target(kind):
    model = tiny_model(kind)
    targeted = sum(p.numel() for n, m in select_layers(model).items()
                   for p in [m.weight])
    config = LowRankConfig(target_params=0.5, steps=0, evaluate=False)
    section = run_lowrank(model, config, _context()).sections["lowrank"]
    assert section["params_targeted_before"] == targeted
    assert 0.4 < section["kept_fraction_targeted"] <= 0.5
    assert section["params_model_after"] < section["params_model_before"]
    assert set(section["ranks"]) == set(lowrank_layers(model))
    assert not select_layers(model)  # every targeted layer was replaced


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_pela_training_lowers_the_loss_and_only_moves_factors(kind):
    torch.manual_seed(0)
    student = tiny_model(kind)
    teacher = copy.deepcopy(student)
    layers = select_layers(student)
    config = LowRankConfig(target_params=0.4, steps=25, lr=5e-3, seqlen=32)
    ranks, _ = choose_ranks(layers, config)
    from compressors.lowrank.layers import factorize

    factorize(student, layers, ranks)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters()
              if not n.endswith((".up", ".down"))}
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    causal = kind != "bert"
    log = train_pela(student, teacher, ids, config, causal, torch.device("cpu"),
                     lambda *_: None)
    assert log.steps == 25 and log.trainable_parameters > 0
    first, last = log.losses[0], log.losses[-1]
    assert last["distill"] < 0.9 * first["distill"]
    assert sum(x["total"] for x in log.losses[-5:]) / 5 < first["total"]
    if not causal:
        assert first["lm"] == 0.0  # encoders train on distillation alone
    for name, param in student.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"{name} moved"


def test_pela_loss_terms_follow_their_weights():
    torch.manual_seed(0)
    student = tiny_model("llama")
    teacher = copy.deepcopy(student)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        out = student(input_ids=ids, output_hidden_states=True)
        ref = teacher(input_ids=ids, output_hidden_states=True)
    base = {"rank": 4, "steps": 1}
    no_lm = pela_loss(out, ref, ids, True, [], LowRankConfig(**base, lm_weight=0.0))
    assert float(no_lm["distill"]) == 0.0 and float(no_lm["total"]) == 0.0
    lm = pela_loss(out, ref, ids, True, [], LowRankConfig(**base, lm_weight=2.0))
    assert float(lm["total"]) == pytest.approx(2 * float(lm["lm"]))


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "bert"])
def test_checkpoint_is_smaller_and_reloads_to_identical_outputs(kind, tmp_path):
    model = tiny_model(kind)
    dense_dir = tmp_path / "dense"
    model.save_pretrained(dense_dir, safe_serialization=True)
    run_lowrank(model, LowRankConfig(target_params=0.5, steps=0, evaluate=False), _context())
    out = tmp_path / "factorized"
    save_checkpoint(model, None, out)
    spec = json.loads((out / "lowrank.json").read_text())
    assert spec["layers"] == {n: m.spec() for n, m in lowrank_layers(model).items()}
    assert size_on_disk(out) < 0.85 * size_on_disk(dense_dir)
    reloaded = compressors.load(out)
    assert set(lowrank_layers(reloaded)) == set(lowrank_layers(model))
    ids = torch.randint(0, 256, (2, 12))
    key = "last_hidden_state" if kind == "bert" else "logits"
    with torch.no_grad():
        assert torch.equal(getattr(model(input_ids=ids), key),
                           getattr(reloaded(input_ids=ids), key))


def test_export_dense_writes_a_standard_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("gpt2")
    reference = copy.deepcopy(model)
    run_lowrank(reference, LowRankConfig(rank=8, steps=0, evaluate=False), _context())
    run_lowrank(model, LowRankConfig(rank=8, steps=0, evaluate=False, export_dense=True),
                _context())
    assert not lowrank_layers(model)
    save_checkpoint(model, None, tmp_path)
    assert not (tmp_path / "lowrank.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(plain.transformer.h[0].attn.c_attn, Conv1D)
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits,
                                   reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert merge_to_dense(reference) == len(select_layers(plain))


# ---------------------------------------------------------------- real models


@pytest.mark.real_model
def test_smollm2_pela_beats_svd_only_and_checkpoint_is_smaller(smollm2_path, tmp_path):
    recipe = parse_recipe({
        "steps": [{"method": "lowrank", "target_params": 0.667, "steps": 4, "lr": 5e-4,
                   "seqlen": 128}],
        **SMALL_BUDGETS,
    })
    out = tmp_path / "out"
    report = compressors.compress(smollm2_path, recipe, out, device="cpu")
    section = report["lowrank"]
    assert section["layers_factorized"] == 30 * 7
    assert section["kept_fraction_targeted"] <= 0.667
    assert section["perplexity_trained"] < 0.8 * section["perplexity_svd"]
    assert section["train"]["steps"] == 4
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    assert after["perplexity"] == pytest.approx(section["perplexity_trained"], rel=1e-4)
    assert after["size_bytes"] < 0.75 * before["size_bytes"]
    assert after["parameters"] == section["params_model_after"]

    model = compressors.load(out)
    assert len(lowrank_layers(model)) == 30 * 7
    # the reloaded model reproduces the perplexity measured in memory before saving
    from transformers import AutoTokenizer

    from compressors.calibration import EvaluationConfig, evaluation_windows
    from compressors.evaluate import perplexity

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    windows = evaluation_windows(tokenizer, EvaluationConfig(**SMALL_BUDGETS["evaluation"]))
    assert perplexity(model, windows) == pytest.approx(after["perplexity"], rel=1e-6)


@pytest.mark.real_model
def test_minilm_distillation_raises_embedding_cosine(tmp_path):
    from compressors.assets import load_text
    from compressors.calibration import CalibrationConfig
    from compressors.model_io import load_model

    loaded = load_model("all-minilm-l6-v2")
    # Real text, but a few speeches: BERT's tokenizer takes minutes on the whole 1900-1999 corpus.
    text = tmp_path / "calibration.txt"
    text.write_text(load_text("sotu:1995-1999"), encoding="utf-8")
    context = StepContext(model_source=loaded.source, tokenizer=loaded.tokenizer,
                          calibration=CalibrationConfig(text=str(text), samples=8, seqlen=128))
    config = LowRankConfig(target_params=0.5, steps=20, lr=5e-4, warmup=3, seqlen=128,
                           cosine_sentences=24)
    section = run_lowrank(loaded.model, config, context).sections["lowrank"]
    svd, trained = section["embedding_cosine_svd"], section["embedding_cosine_trained"]
    assert 0.0 < svd["mean"] < 0.999
    assert trained["mean"] > svd["mean"]
    assert "perplexity_svd" not in section
    save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "out")
    reloaded = compressors.load(tmp_path / "out")
    batch = loaded.tokenizer(["A held-out sentence about the union."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch).last_hidden_state,
                           reloaded(**batch).last_hidden_state)
