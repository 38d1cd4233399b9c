"""INT8 W8A8 (`w8a8`): SmoothQuant keeps the function and flattens the inputs it was computed
from, the evaluation sees int8 activations, the int-quantized checkpoint reloads with stock
transformers in a fresh process to the very logits evaluated, pruned zeros stay zero, MoE
experts are quantized unscaled, order rules, and the real SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from compressors.engine.activations import input_quant, remove_input_quantization
from compressors.engine.context import StepContext
from compressors.engine.folding import EXPERT_REASON
from compressors.engine.modules import select_layers
from compressors.io.loading import save_checkpoint
from compressors.methods.w8a8.config import W8A8Config
from compressors.methods.w8a8.step import run as run_w8a8
from compressors.methods.w8a8.step import smooth
from compressors.methods.wanda.config import WandaConfig
from compressors.methods.wanda.step import run as run_wanda
from compressors.ops.int_activations import quantize_tokens
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_CALIBRATION, SMALL_EVALUATION, tiny_model

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


def fresh_logits(folders: list[str], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each folder loaded by stock `from_pretrained` in a new process, run on `ids`."""
    command = [sys.executable, "-c", FRESH, ",".join(folders), json.dumps(ids.tolist())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return {k: torch.tensor(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _context(samples: int = 4, length: int = 32) -> StepContext:
    gen = torch.Generator().manual_seed(0)
    return StepContext(model_source=None, tokenizer=None,
                       calibration_windows=torch.randint(0, 256, (samples, length),
                                                         generator=gen))


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))


def _outlier_llama():
    """A tiny Llama whose norms make a few input channels 40x the rest, as trained LLMs'."""
    model = tiny_model("llama")
    with torch.no_grad():
        for block in model.model.layers:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight[[3, 17, 42]] *= 40.0
    return model


def test_smoothing_keeps_the_function_and_flattens_the_outliers():
    model = _outlier_llama()
    context = _context()
    ids = _ids()
    targets = select_layers(model)
    peaks: dict[str, torch.Tensor] = {}

    def input_peaks() -> dict[str, torch.Tensor]:
        handles = []
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj"):
            def hook(_m, args, name=name):
                flat = args[0].reshape(-1, args[0].shape[-1]).abs().amax(dim=0)
                peaks[name] = torch.maximum(peaks[name], flat) if name in peaks else flat
            handles.append(targets[name].register_forward_pre_hook(hook))
        with torch.no_grad():
            model(input_ids=context.calibration_tokens())
        for handle in handles:
            handle.remove()
        found = dict(peaks)
        peaks.clear()
        return found

    before_peaks = input_peaks()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    folds, unscaled = smooth(model, targets, 0.8, context)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-5), (after - before).abs().max()
    assert set(unscaled) == {"model.layers.0.self_attn.o_proj",
                             "model.layers.1.self_attn.o_proj"}  # GQA: no fold
    after_peaks = input_peaks()
    by_op = {f.predecessor: f for f in folds}
    for layer, norm in (("model.layers.0.self_attn.q_proj", "model.layers.0.input_layernorm"),
                        ("model.layers.1.mlp.gate_proj",
                         "model.layers.1.post_attention_layernorm")):
        spread_before = before_peaks[layer].max() / before_peaks[layer].median()
        spread_after = after_peaks[layer].max() / after_peaks[layer].median()
        assert spread_after < spread_before / 4, (layer, spread_before, spread_after)
        # the statistics the scales came from are the inputs' real ones
        assert by_op[norm].input_absmax_before == pytest.approx(
            float(before_peaks[layer].max()), rel=1e-5)
        assert by_op[norm].input_absmax_after == pytest.approx(
            float(after_peaks[layer].max()), rel=1e-4)


def test_the_evaluation_sees_int8_activations_and_weights_on_an_int8_grid():
    model = tiny_model("llama")
    result = run_w8a8(model, W8A8Config(quantizer="rtn"), _context())
    ids = _ids()
    with torch.no_grad():
        simulated = model(input_ids=ids).logits
    layers = select_layers(model)
    spec, scale = input_quant(model, "model.layers.0.mlp.down_proj")
    assert (spec.kind, spec.bits, spec.strategy, spec.dynamic, scale) == ("int", 8, "token",
                                                                          True, None)
    for name, layer in layers.items():
        assert max(len(set(row.tolist())) for row in layer.weight) <= 256, name
    remove_input_quantization(model)
    with torch.no_grad():
        weights_only = model(input_ids=ids).logits
    assert not torch.equal(simulated, weights_only)
    section = result.section.model_dump(mode="json")
    assert section["format"] == "compressed-tensors int-quantized (W8A8)"
    assert section["precision"]["input_activations"].startswith("INT8, dynamic")
    assert "Turing" in section["precision"]["gpu"]
    assert section["quantizer"] == "rtn" and section["bits"] == 8 and section["group_size"] == -1
    assert len(section["smoothing"]) == 2 * 3  # per block: input norm, post-attention norm, up
    assert [c.id for c in result.charts] == ["quantization-error", "smoothing-scales"]


def test_per_token_int8_round_trip():
    tokens = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [127.5, 1.0, -0.4]])
    out = quantize_tokens(tokens)
    assert torch.equal(out[0], tokens[0])  # an all-zero token stays zero
    assert float((out[1] - tokens[1]).abs().max()) <= 2.0 / 127.5 / 2 + 1e-7
    assert out[2, 0] == 127.0 and out[2, 2] == 0.0  # the peak clamps to code 127


def test_checkpoint_reloads_with_stock_transformers_to_the_evaluated_logits(tmp_path):
    """int-quantized: int8 `weight`, per-channel `weight_scale`, input activations int8 per
    token; stock transformers simulates them as the step did, so the logits are the same."""
    model = tiny_model("llama")
    run_w8a8(model, W8A8Config(), _context())
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    folder = tmp_path / "w8a8"
    info = save_checkpoint(model, None, folder)
    assert not info.needs_compressors_load and "vllm serve" in info.how_to_serve
    assert "INT8, dynamic: one scale per token" in info.how_to_serve
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert quant["format"] == "int-quantized" and quant["ignore"] == ["lm_head"]
    (group,) = quant["config_groups"].values()
    assert group["input_activations"]["strategy"] == "token"
    assert group["input_activations"]["dynamic"] is True
    assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == 8
    with safe_open(str(folder / "model.safetensors"), "pt") as files:
        assert files.get_tensor("model.layers.0.mlp.up_proj.weight").dtype == torch.int8
        assert files.get_tensor("model.layers.0.mlp.up_proj.weight_scale").shape == (128, 1)
    reloaded = fresh_logits([str(folder)], ids)[str(folder)]
    assert torch.allclose(reloaded, expected, atol=1e-5, rtol=0), (reloaded - expected).abs().max()


def test_pruned_zeros_stay_zero():
    model = tiny_model("llama")
    context = _context()
    run_wanda(model, WandaConfig(sparsity=0.5), context)
    pruned = {n: (layer.weight.data == 0).clone() for n, layer in select_layers(model).items()}
    result = run_w8a8(model, W8A8Config(quantizer="rtn"), context)
    for name, layer in select_layers(model).items():
        assert bool((layer.weight.data[pruned[name]] == 0).all()), name
    section = result.section.model_dump(mode="json")
    assert section["zeros_kept"] == section["zeros_before"] == sum(
        int(z.sum()) for z in pruned.values())


def test_mixture_of_experts_experts_are_int8_weight_only_and_unscaled(tmp_path):
    """Experts: int8 weights, scale 1, 16-bit inputs (their own pack-quantized group: stock
    transformers loads experts only packed); the dense layers are W8A8."""
    model = tiny_model("qwen3_moe")
    result = run_w8a8(model, W8A8Config(), _context())
    section = result.section.model_dump(mode="json")
    experts = [n for n, why in section["unscaled_layers"].items() if why == EXPERT_REASON]
    assert len(experts) == 2 * 8 * 3
    assert set(experts) <= set(section["relative_error"]["per_layer"])
    assert input_quant(model, experts[0]) is None
    assert input_quant(model, "model.layers.0.self_attn.q_proj")[0].bits == 8
    assert section["experts_precision"]["input_activations"].startswith("16-bit")
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    folder = tmp_path / "moe"
    save_checkpoint(model, None, folder)
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    formats = {g["format"]: g["input_activations"] for g in quant["config_groups"].values()}
    assert formats["pack-quantized"] is None and formats["int-quantized"]["num_bits"] == 8
    reloaded = fresh_logits([str(folder)], ids)[str(folder)]
    # the reloaded experts sum in another order (1e-6 apart); an int8 code of the next
    # block's inputs flips on that, which moves a logit by about 1e-3
    assert torch.allclose(reloaded, expected, atol=1e-2, rtol=0), (reloaded - expected).abs().max()


def test_order_rules_name_both_steps():
    with pytest.raises(ValidationError, match=r"steps.1 \(w8a8\) cannot follow steps.0 "
                                              r"\(lowrank\)"):
        parse_recipe({"steps": [{"method": "lowrank", "rank": 8}, {"method": "w8a8"}]})
    parse_recipe({"steps": [{"method": "lowrank", "rank": 8, "export_dense": True},
                            {"method": "w8a8"}]})
    parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5},
                            {"method": "perp", "train_steps": 1}, {"method": "w8a8"}]})
    with pytest.raises(ValidationError, match="put w8a8 last"):
        parse_recipe({"steps": [{"method": "w8a8"}, {"method": "gptq"}]})
    with pytest.raises(ValidationError, match="placement"):
        parse_recipe({"steps": [{"method": "w8a8"}], "placement": "streamed"})
    for bad, field in (({"method": "w8a8", "alpha": 1.5}, "alpha"),
                       ({"method": "w8a8", "quantizer": "awq"}, "quantizer"),
                       ({"method": "w8a8", "bits": 4}, "bits")):
        with pytest.raises(ValidationError, match=field):
            parse_recipe({"steps": [bad]})


@pytest.mark.real_model
def test_smollm2_w8a8_stays_near_dense_with_its_activations_quantized(smollm2_path,
                                                                       smollm2_tokenizer):
    """On the real model (small budgets): W8A8 with int8 activations measured as they run is
    within 3% of fp32; every layer but the GQA o_proj is smoothed."""
    from compressors.evaluate import perplexity
    from compressors.io.loading import load_model

    context = StepContext(model_source=smollm2_path, tokenizer=smollm2_tokenizer,
                          calibration=SMALL_CALIBRATION, evaluation=SMALL_EVALUATION)
    windows = context.evaluation_tokens()
    model = load_model(smollm2_path).model
    dense = perplexity(model, windows)
    result = run_w8a8(model, W8A8Config(quantizer="rtn"), context)
    smoothed = perplexity(model, windows)
    assert smoothed < dense * 1.03, (dense, smoothed)
    assert result.section.quantized_layers == 30 * 7
    assert len(result.section.unscaled_layers) == 30  # o_proj (GQA: 9 query, 3 value heads)


def test_search_operation_writes_steps_that_parse_and_predicts_their_bytes():
    from compressors.methods import import_object, search_spaces

    space = search_spaces()["w8a8"]
    assert space.levels == ("int8",)
    choices = {f"model.layers.{i}.mlp.down_proj": ("int8" if i % 2 else "dense")
               for i in range(4)}
    step = import_object(space.step)(choices)
    parsed = parse_recipe({"steps": [step.model_dump(mode="json")]}).steps[0]
    assert parsed.method == "w8a8" and parsed.include
    assert import_object(space.step)(dict.fromkeys(choices, "dense")) is None
    assert import_object(space.layer_bytes)("int8", 10, 576, "float32") == 10 * 576 + 10 * 2
    weight = torch.randn(32, 576, generator=torch.Generator().manual_seed(0))
    error = float((import_object(space.perturb)(weight, "int8", None) - weight).norm()
                  / weight.norm())
    assert 0 < error < 0.01
