"""SparseGPT: the math against a naive OBS loop, its reconstruction against Wanda and
magnitude, exact sparsity counts, N:M, dead inputs, the Cholesky fallback, Conv1D, SmolLM2."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import compressors
from compressors.engine.context import StepContext
from compressors.engine.modules import select_layers, weight_matrix
from compressors.engine.sequential import BlockContext, capture_block_inputs
from compressors.methods.sparsegpt.config import SparseGPTConfig
from compressors.methods.sparsegpt.obs import reconstruction_error, sparsegpt_prune
from compressors.methods.sparsegpt.step import run as run_sparsegpt
from compressors.ops.hessian import CholeskyError, HessianAccumulator, inverse_hessian_factor
from compressors.ops.masks import (
    matrix_mask,
    nm_groups_valid,
    nm_mask,
    row_mask,
    wanda_scores,
)
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS, tiny_model


def _correlated_layer(rows: int = 32, cols: int = 64, tokens: int = 2048, seed: int = 0):
    """Weights and strongly correlated inputs (few latent factors, uneven scales)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 8, generator=gen)
    mixing = torch.randn(8, cols, generator=gen)
    scales = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=gen)]
    inputs = (latent @ mixing + 0.1 * torch.randn(tokens, cols, generator=gen)) * scales
    weight = torch.randn(rows, cols, generator=gen)
    hessian = 2 * inputs.T.double() @ inputs.double() / tokens
    return weight, inputs, hessian


def _naive_obs(weight, hessian, blocksize, dampening, nm=None, sparsity=0.5):
    """Textbook sequential OBS in float64: re-invert the Hessian of the remaining columns for
    every column (no Cholesky trick, no lazy batching), masks chosen at the same points."""
    w = weight.double().clone()
    rows, cols = w.shape
    h = hessian.double() + dampening * hessian.diagonal().mean() * torch.eye(cols).double()

    def d(j):  # [H_F⁻¹]_jj with F = columns j.. still to be processed
        return torch.linalg.inv(h[j:, j:])[0, 0]

    prune = torch.zeros_like(w, dtype=torch.bool)
    for i in range(cols):
        if nm is not None and i % nm[1] == 0:
            scores = w[:, i : i + nm[1]] ** 2 / torch.stack([d(j) for j in range(i, i + nm[1])])
            prune[:, i : i + nm[1]] = ~nm_mask(scores, *nm)
        if nm is None and i % blocksize == 0:
            end = min(i + blocksize, cols)
            scores = w[:, i:end] ** 2 / torch.stack([d(j) for j in range(i, end)])
            count = int(rows * end * sparsity) - int(rows * i * sparsity)
            flat = torch.zeros(scores.numel(), dtype=torch.bool)
            flat[torch.sort(scores.flatten(), stable=True).indices[:count]] = True
            prune[:, i:end] = flat.view_as(scores)
        inverse = torch.linalg.inv(h[i:, i:])
        target = torch.where(prune[:, i], torch.zeros_like(w[:, i]), w[:, i])
        w[:, i:] -= ((w[:, i] - target) / inverse[0, 0]).unsqueeze(1) * inverse[0].unsqueeze(0)
        w[:, i] = target
    return w


@pytest.mark.parametrize(("nm", "blocksize"), [(None, 16), (None, 64), ((2, 4), 8), ((4, 8), 16)])
def test_matches_naive_obs(nm, blocksize):
    weight, _, hessian = _correlated_layer(rows=8, cols=32, tokens=512)
    ours, stats = sparsegpt_prune(weight, hessian, 0.5, nm, blocksize, dampening=0.01)
    naive = _naive_obs(weight, hessian, blocksize, 0.01, nm)
    assert torch.equal(ours == 0, naive == 0)
    assert torch.allclose(ours.double(), naive, atol=1e-3 * weight.abs().max().item(), rtol=1e-3)
    assert stats.attempts == 1 and stats.dampening == 0.01


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_reconstruction_beats_wanda_and_magnitude(nm):
    weight, inputs, hessian = _correlated_layer()
    pruned, _ = sparsegpt_prune(weight, hessian, 0.5, nm, blocksize=16)
    sq_norms = inputs.pow(2).sum(0)
    if nm is None:
        wanda_keep = row_mask(wanda_scores(weight, sq_norms), 0.5)
        magnitude_keep = matrix_mask(weight.abs(), 0.5)
    else:
        wanda_keep = nm_mask(wanda_scores(weight, sq_norms), *nm)
        magnitude_keep = nm_mask(weight.abs(), *nm)
    density = (pruned != 0).float().mean()
    assert density == wanda_keep.float().mean() == magnitude_keep.float().mean() == 0.5
    ours = reconstruction_error(weight, pruned, inputs)
    wanda = reconstruction_error(weight, weight * wanda_keep, inputs)
    magnitude = reconstruction_error(weight, weight * magnitude_keep, inputs)
    assert ours < wanda < magnitude, (ours, wanda, magnitude)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.77])
def test_exact_sparsity_block_and_row_scopes(sparsity):
    weight, _, hessian = _correlated_layer(rows=24, cols=50, tokens=256)
    block, stats = sparsegpt_prune(weight, hessian, sparsity, blocksize=16, scope="block")
    assert int((block == 0).sum()) == int(weight.numel() * sparsity)
    assert stats.sparsity == pytest.approx(int(weight.numel() * sparsity) / weight.numel())
    rows, _ = sparsegpt_prune(weight, hessian, sparsity, blocksize=16, scope="row")
    assert torch.all((rows == 0).sum(1) == int(50 * sparsity))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_groups_exact(n, m):
    weight, _, hessian = _correlated_layer(rows=16, cols=64, tokens=256)
    pruned, _ = sparsegpt_prune(weight, hessian, nm=(n, m), blocksize=32)
    assert nm_groups_valid(pruned, n, m)
    assert torch.all((pruned.reshape(16, -1, m) == 0).sum(-1) == m - n)


def test_dead_inputs_are_pruned_and_reported():
    weight, inputs, _ = _correlated_layer(rows=8, cols=32, tokens=256)
    inputs[:, [3, 17]] = 0
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    pruned, stats = sparsegpt_prune(weight, hessian, 0.25, blocksize=8)
    assert stats.dead_inputs == 2
    assert torch.all(pruned[:, [3, 17]] == 0)
    assert int((pruned == 0).sum()) == 64  # dead columns count towards the exact total
    assert torch.isfinite(pruned).all()


def test_cholesky_fallback_raises_dampening_and_reports_it():
    # [[1, 3], [3, 1]] blocks are indefinite (eigenvalues -2 and 4): damping of 0.01, 0.1 and 1
    # times the mean diagonal fails; 10 succeeds on the fourth attempt.
    hessian = torch.block_diag(*[torch.tensor([[1.0, 3.0], [3.0, 1.0]])] * 4)
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    pruned, stats = sparsegpt_prune(weight, hessian, 0.5, blocksize=4, dampening=0.01)
    assert stats.attempts == 4 and stats.dampening == pytest.approx(10.0)
    assert torch.isfinite(pruned).all() and int((pruned == 0).sum()) == 16
    upper, used, attempts = inverse_hessian_factor(torch.eye(3) * 2, 0.0)
    assert attempts == 1 and used == 0.0
    assert torch.allclose(upper.T @ upper, torch.eye(3, dtype=upper.dtype) / 2)
    with pytest.raises(CholeskyError, match="not positive definite"):
        inverse_hessian_factor(-torch.eye(3), 0.01)


def test_config_validation_names_fields():
    with pytest.raises(ValidationError, match="blocksize"):
        SparseGPTConfig(pattern="4:8", blocksize=12)
    with pytest.raises(ValidationError, match="dampening"):
        SparseGPTConfig(sparsity=0.5, dampening=-1)
    with pytest.raises(ValidationError, match="blocksize"):
        SparseGPTConfig(sparsity=0.5, blocksize=0)
    assert SparseGPTConfig(sparsity=0.5).blocksize == 128


def _context(windows: torch.Tensor) -> StepContext:
    context = StepContext(model_source=None, tokenizer=None)  # type: ignore[arg-type]
    context.__dict__["calibration_windows"] = windows
    return context


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_run_on_tiny_models_prunes_updates_and_records(kind):
    """GPT-2's Conv1D stores W transposed: the write-back must land in the right layout."""
    model = tiny_model(kind)
    before = {n: weight_matrix(m).clone() for n, m in select_layers(model).items()}
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    context = _context(windows)
    result = run_sparsegpt(model, SparseGPTConfig(sparsity=0.5, blocksize=32), context)
    for name, layer in select_layers(model).items():
        weight = weight_matrix(layer)
        assert weight.shape == before[name].shape
        assert int((weight == 0).sum()) == weight.numel() // 2, name
        kept = weight != 0
        assert not torch.equal(weight[kept], before[name][kept]), f"{name}: no OBS update"
        assert torch.equal(context.masks[name], kept)
    details = result.details
    assert details["pattern"] == "unstructured" and details["cholesky_fallbacks"] == {}
    assert details["obs_loss_total"] > 0


def test_gpt2_conv1d_two_four():
    model = tiny_model("gpt2")
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(4))
    run_sparsegpt(model, SparseGPTConfig(pattern="2:4", blocksize=64), _context(windows))
    for name, layer in select_layers(model).items():
        assert nm_groups_valid(weight_matrix(layer), 2, 4), name
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=windows).logits).all()


@pytest.mark.real_model
def test_sparsegpt_50_on_smollm2(tmp_path):
    recipe = parse_recipe({"steps": [{"method": "sparsegpt", "sparsity": 0.5}], **SMALL_BUDGETS})
    report = compressors.compress("smollm2-135m", recipe, tmp_path / "sgpt", device="cpu").to_json()
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    assert torch.isfinite(torch.tensor(after["perplexity"]))
    # 50% costs something, but reconstruction keeps it far from a broken model
    assert before["perplexity"] < after["perplexity"] < 4 * before["perplexity"]
    assert report["steps"][0]["cholesky_fallbacks"] == {}  # details are merged into the step
    model = compressors.load(tmp_path / "sgpt")
    layers = select_layers(model)
    assert len(layers) == 30 * 7
    for name, layer in layers.items():
        weight = weight_matrix(layer)
        assert int((weight == 0).sum()) == weight.numel() // 2, name


def test_layers_sharing_an_input_share_one_hessian():
    """Llama's q/k/v (and gate/up) read one tensor: one product, one factor, exact sums."""
    model = tiny_model("llama")
    windows = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))
    inputs = capture_block_inputs(model, windows, batch_size=2)
    layers = {n: m for n, m in select_layers(model).items() if n.startswith("model.layers.0.")}
    block = BlockContext(0, "model.layers.0", model.model.layers[0], layers, inputs)
    hessians, plain = HessianAccumulator(), {}

    def observe(name, layer, x):
        hessians(name, layer, x)
        plain[name] = plain.get(name, 0) + x.double().T @ x.double()

    block.collect(observe)
    for name in layers:
        scale = plain[name].abs().max().item()
        assert torch.allclose(hessians.sums[name], plain[name], atol=1e-5 * scale), name
    factors = hessians.factors(0.01)
    attn = [factors[f"model.layers.0.self_attn.{p}_proj"] for p in "qkvo"]
    mlp = [factors[f"model.layers.0.mlp.{p}_proj"] for p in ("gate", "up", "down")]
    assert attn[0] is attn[1] is attn[2] and attn[3] is not attn[0]
    assert mlp[0] is mlp[1] and mlp[2] is not mlp[0]


def _moe_block(model, windows):
    """Block 0 of a tiny Qwen3-MoE with its default selection (8 experts of three matrices)."""
    inputs = capture_block_inputs(model, windows, batch_size=2)
    layers = {n: m for n, m in select_layers(model).items() if n.startswith("model.layers.0.")}
    return BlockContext(0, "model.layers.0", model.model.layers[0], layers, inputs)


def test_a_moe_blocks_hessians_come_in_passes_that_fit(monkeypatch):
    """The dense layers open the first pass, then whole experts (gate, up and down together)
    while the pass's float64 sums fit the budget; every layer in exactly one pass."""
    from compressors.engine.modules import in_features, is_expert
    from compressors.ops import hessian_passes

    model = tiny_model("qwen3_moe")
    windows = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))
    block = _moe_block(model, windows)
    assert block.hessian_passes() == [block]  # 0.9 MB of sums: one pass by default
    monkeypatch.setattr(hessian_passes, "PASS_BYTES", 256 * 1024)
    passes = block.hessian_passes()
    assert len(passes) == 4  # dense (128 KiB) + 1 expert (72 KiB), then 3, 3, 1 experts
    seen = [name for part in passes for name in part.layers]
    assert sorted(seen) == sorted(block.layers)
    dense = {name for name, layer in block.layers.items() if not is_expert(layer)}
    assert dense and dense <= set(passes[0].layers)
    assert all(is_expert(layer) for part in passes[1:] for layer in part.layers.values())
    for part in passes:
        experts = {layer.expert for layer in part.layers.values() if is_expert(layer)}
        whole = {n for n, layer in block.layers.items()
                 if is_expert(layer) and layer.expert in experts}
        assert whole <= set(part.layers)  # an expert's matrices never span passes
        sums = sum(8 * in_features(layer) ** 2 for layer in part.layers.values())
        assert sums <= 256 * 1024
        assert part.inputs is block.inputs and part.block is block.block


def test_hessian_passes_change_nothing_for_dense_blocks_and_independent_experts(monkeypatch):
    """A dense block is one pass whatever the budget: the same weights bit for bit. Experts
    read the same inputs whichever pass they are in, so with only experts selected (nothing
    before them changes between passes) many passes prune exactly as one."""
    from compressors.ops import hessian_passes

    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    for kind, config in (("llama", SparseGPTConfig(sparsity=0.5)),
                         ("qwen3_moe", SparseGPTConfig(sparsity=0.5, include=["experts"]))):
        results = []
        for budget in (hessian_passes.PASS_BYTES, 64 * 1024):
            monkeypatch.setattr(hessian_passes, "PASS_BYTES", budget)
            model = tiny_model(kind)
            run_sparsegpt(model, config, _context(windows))
            results.append(model.state_dict())
        assert all(torch.equal(results[0][k], results[1][k]) for k in results[0]), kind
        changed = results[1]["model.layers.1.mlp.experts.down_proj" if kind == "qwen3_moe"
                             else "model.layers.1.mlp.down_proj.weight"]
        assert float((changed == 0).float().mean()) == pytest.approx(0.5, abs=0.01), kind


def test_sparsegpt_prunes_every_expert_in_passes(monkeypatch):
    """The default selection of a MoE model in several passes per block: every layer, each
    expert's matrices included, ends at the target sparsity and the model still runs."""
    from compressors.ops import hessian_passes

    monkeypatch.setattr(hessian_passes, "PASS_BYTES", 128 * 1024)
    model = tiny_model("qwen3_moe")
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    run_sparsegpt(model, SparseGPTConfig(sparsity=0.5), _context(windows))
    layers = select_layers(model)
    assert sum(1 for name in layers if ".experts." in name) == 2 * 8 * 3
    for name, layer in layers.items():
        weight = weight_matrix(layer)
        assert int((weight == 0).sum()) == weight.numel() // 2, name
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=windows).logits).all()
