"""Wanda against hand-computed expectations and against a plain, engine-free reference."""

from __future__ import annotations

import torch
from torch import nn

from compressors.engine.context import StepContext
from compressors.engine.modules import block_names, select_layers, weight_matrix
from compressors.engine.sequential import capture_block_inputs
from compressors.methods.magnitude.config import MagnitudeConfig
from compressors.methods.magnitude.step import run as run_magnitude
from compressors.methods.wanda.config import WandaConfig
from compressors.methods.wanda.step import run as run_wanda
from compressors.ops.masks import row_mask, wanda_scores
from tests.conftest import tiny_model


class _OneLayer(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data = weight.clone()


def test_activation_norms_change_the_choice():
    """Row [1, 2, 3, 4] with inputs whose norms are [10, 1, 1, 0.1].

    Magnitude (row scope) keeps 3 and 4. Wanda scores |W|·‖X‖ = [10, 2, 3, 0.4] keep 1 and 3.
    """
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-4.0, 3.0, -2.0, 1.0]])
    inputs = torch.tensor([[10.0, 1.0, 1.0, 0.1]])
    sq_norms = inputs.pow(2).sum(0)

    magnitude_keep = row_mask(weight.abs(), 0.5)
    wanda_keep = row_mask(wanda_scores(weight, sq_norms), 0.5)

    assert magnitude_keep.tolist() == [[False, False, True, True], [True, True, False, False]]
    # row 2 Wanda scores: [40, 3, 2, 0.1] -> keep columns 0 and 1
    assert wanda_keep.tolist() == [[True, False, True, False], [True, True, False, False]]


def _context(windows: torch.Tensor) -> StepContext:
    context = StepContext(model_source=None, tokenizer=None)  # type: ignore[arg-type]
    context.__dict__["calibration_windows"] = windows
    return context


@torch.no_grad()
def _reference_wanda(model: nn.Module, windows: torch.Tensor, sparsity: float) -> None:
    """Straight from the paper: for each block in order, run the *whole* (partly pruned) model
    one window at a time, record the block's layer inputs, score and prune."""
    targets = select_layers(model)
    for block in block_names(model):
        layers = {n: m for n, m in targets.items() if n.startswith(block + ".")}
        sums = {n: torch.zeros(weight_matrix(m).shape[1]) for n, m in layers.items()}

        def record(name: str, x: torch.Tensor, sums: dict = sums) -> None:
            sums[name] += x.reshape(-1, x.shape[-1]).pow(2).sum(0)

        hooks = [m.register_forward_hook(lambda mod, args, out, n=n: record(n, args[0]))
                 for n, m in layers.items()]
        for window in windows:
            model(input_ids=window.unsqueeze(0), use_cache=False)
        for hook in hooks:
            hook.remove()
        for name, layer in layers.items():
            keep = row_mask(wanda_scores(weight_matrix(layer), sums[name]), sparsity)
            weight_matrix(layer).mul_(keep)


def test_engine_wanda_matches_whole_model_reference(tiny_causal):
    windows = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(1))
    reference = tiny_model(_kind(tiny_causal))
    reference.load_state_dict(tiny_causal.state_dict())
    run_wanda(tiny_causal, WandaConfig(sparsity=0.5), _context(windows))
    _reference_wanda(reference, windows, 0.5)
    ours, theirs = select_layers(tiny_causal), select_layers(reference)
    for name in ours:
        mask_ours = weight_matrix(ours[name]) != 0
        mask_theirs = weight_matrix(theirs[name]) != 0
        agreement = (mask_ours == mask_theirs).float().mean().item()
        assert agreement > 0.995, (name, agreement)  # float summation order may flip a tie


def _kind(model: nn.Module) -> str:
    return {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2",
            "OPTForCausalLM": "opt"}[type(model).__name__]


def test_later_blocks_see_pruned_earlier_blocks(tiny_causal):
    """The inputs the engine hands block 1 equal the pruned model's hidden states there."""
    windows = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(2))
    run_wanda(tiny_causal, WandaConfig(sparsity=0.6), _context(windows))
    captured = capture_block_inputs(tiny_causal, windows, batch_size=4)[0].hidden
    with torch.no_grad():
        from compressors.engine.modules import find_blocks

        _, blocks = find_blocks(tiny_causal)
        seen = []
        handle = blocks[1].register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True)
        tiny_causal(input_ids=windows, use_cache=False)
        handle.remove()
        block0 = blocks[0](captured, *[], **_kwargs_of(tiny_causal, windows))
        block0 = block0[0] if isinstance(block0, tuple) else block0
    assert torch.allclose(block0, seen[0], atol=1e-5)


def _kwargs_of(model: nn.Module, windows: torch.Tensor) -> dict:
    return capture_block_inputs(model, windows, batch_size=4)[0].kwargs


def test_wanda_and_magnitude_exact_row_sparsity_on_gpt2_conv1d():
    model = tiny_model("gpt2")
    windows = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(3))
    run_wanda(model, WandaConfig(sparsity=0.3), _context(windows))
    for name, layer in select_layers(model).items():
        weight = weight_matrix(layer)
        assert torch.all((weight == 0).sum(1) == int(weight.shape[1] * 0.3)), name
    model = tiny_model("gpt2")
    run_magnitude(model, MagnitudeConfig(sparsity=0.3, scope="row"), _context(windows))
    for name, layer in select_layers(model).items():
        weight = weight_matrix(layer)
        assert torch.all((weight == 0).sum(1) == int(weight.shape[1] * 0.3)), name
