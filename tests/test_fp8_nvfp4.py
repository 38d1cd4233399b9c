"""`fp8` and `nvfp4`: weights on their grids, activations quantized in every later forward,
pruned zeros kept (after pruning and after PERP), MoE experts, refusals, the search's FP8
operation, and the compressed-tensors checkpoints reloaded by stock transformers in a fresh
process (the same logits, activation quantization included) and by `compressors.load`; the
real SmolLM2 at small budgets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import compressors
from compressors.engine.activations import input_quant, remove_input_quantization
from compressors.engine.context import StepContext
from compressors.engine.modules import select_layers, weight_matrix
from compressors.io.compressed_tensors import QUANT_ATTR
from compressors.io.loading import save_checkpoint
from compressors.methods import get_method, import_object
from compressors.methods.fp8.config import Fp8Config
from compressors.methods.fp8.step import run as run_fp8
from compressors.methods.nvfp4.config import NVFP4Config
from compressors.methods.nvfp4.step import global_scale_groups
from compressors.methods.nvfp4.step import run as run_nvfp4
from compressors.methods.sparsegpt.config import SparseGPTConfig
from compressors.methods.sparsegpt.step import run as run_sparsegpt
from compressors.ops.float_quant import fp8_codes, fp8_dequantize, fp8_weight_scale
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS, SMALL_CALIBRATION, SMALL_EVALUATION, tiny_model

IDS = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))


def _context() -> StepContext:
    gen = torch.Generator().manual_seed(0)
    return StepContext(model_source=None, tokenizer=None,
                       calibration_windows=torch.randint(0, 256, (4, 32), generator=gen))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _saved_in(dtype: torch.dtype, kind: str, folder: Path) -> Path:
    """A tiny model saved in `dtype` (loaded back by `from_pretrained`, as a user's model
    would be: a model cast with `.to()` keeps its rotary table in that dtype too)."""
    tiny_model(kind).to(dtype).save_pretrained(folder)
    return folder


def _from(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def test_fp8_weights_are_on_the_grid_and_inputs_are_quantized_per_token():
    model = tiny_model("llama")
    result = run_fp8(model, Fp8Config(), _context())
    for name, layer in select_layers(model).items():
        weight = layer.weight.data
        scale = fp8_weight_scale(weight, "channel")
        assert torch.equal(fp8_dequantize(fp8_codes(weight, scale, "channel"), scale, "channel"),
                           weight), name
        spec, static = input_quant(model, name)
        assert (spec.kind, spec.bits, spec.strategy, static) == ("float", 8, "token", None)
    simulated = _logits(model)
    remove_input_quantization(model)
    assert not torch.equal(simulated, _logits(model))  # the activations really were quantized
    section = result.section.model_dump(mode="json")
    assert section["precision"]["input_activations"].startswith("FP8 E4M3, dynamic")
    assert section["precision"]["kv_cache"].startswith("unquantized")
    assert "Hopper" in section["precision"]["gpu"]
    shapes = [layer.weight.shape for layer in select_layers(model).values()]
    stored = sum(rows * cols * 8 + rows * 32 for rows, cols in shapes)  # fp32 scale per row
    assert section["bits_per_weight"] == pytest.approx(stored / sum(r * c for r, c in shapes))
    assert section["quantized_layers"] == 14 and "input_scales" not in section
    assert result.details["scheme"] == "fp8 channel dynamic"


def test_fp8_static_scales_come_from_the_calibration_inputs():
    model = tiny_model("llama")
    seen: dict[str, float] = {}
    hooks = [layer.register_forward_hook(
        lambda _m, args, _o, name=name: seen.__setitem__(
            name, max(seen.get(name, 0.0), float(args[0].abs().amax()))))
        for name, layer in select_layers(model).items()
        if name.startswith("model.layers.0.self_attn.") and not name.endswith("o_proj")]
    result = run_fp8(model, Fp8Config(activations="static"), _context())
    for hook in hooks:
        hook.remove()
    scales = result.section.input_scales
    assert set(scales) == set(select_layers(model))
    assert len(seen) == 3
    for name, peak in seen.items():  # q/k/v of block 0 read the normed embeddings, always
        assert scales[name] == pytest.approx(peak / 448, rel=1e-6), name
        spec, static = input_quant(model, name)
        assert spec.strategy == "tensor" and not spec.dynamic and float(static) == scales[name]


@pytest.mark.parametrize("method", ["fp8", "nvfp4"])
def test_pruned_zeros_stay_zero(method):
    model = tiny_model("llama")
    context = _context()
    run_sparsegpt(model, SparseGPTConfig(sparsity=0.5, blocksize=32), context)
    pruned = {n: (layer.weight.data == 0).clone() for n, layer in select_layers(model).items()}
    if method == "fp8":
        result = run_fp8(model, Fp8Config(activations="static"), context)
    else:
        result = run_nvfp4(model, NVFP4Config(activations="fp4"), context)
    for name, layer in select_layers(model).items():
        assert bool((layer.weight.data[pruned[name]] == 0).all()), name
    section = result.section
    assert section.zeros_kept == section.zeros_before == sum(int(z.sum()) for z in pruned.values())


def test_perp_then_nvfp4_keeps_the_mask(tiny_llama_folder, tmp_path):
    recipe = parse_recipe({"steps": [
        {"method": "magnitude", "sparsity": 0.5},
        {"method": "perp", "mode": "masklora", "train_steps": 2, "seqlen": 32, "rank": 2},
        {"method": "nvfp4"}], **SMALL_BUDGETS})
    report = compressors.compress(tiny_llama_folder, recipe, tmp_path / "out", device="cpu")
    section = report.section("quantization")
    assert section["zeros_kept"] == section["zeros_before"] > 0
    model = compressors.load(tmp_path / "out")
    for name, layer in select_layers(model).items():
        weight = weight_matrix(layer)
        assert int((weight == 0).sum()) >= weight.numel() // 2, name


def test_nvfp4_layers_reading_one_input_share_a_global_scale():
    model = tiny_model("llama")
    result = run_nvfp4(model, NVFP4Config(), _context())
    groups = global_scale_groups(select_layers(model))
    assert ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"] in groups
    assert ["model.layers.0.mlp.down_proj"] in groups
    for group in groups:
        scales = {float(getattr(model.get_submodule(n), QUANT_ATTR).global_scale) for n in group}
        assert len(scales) == 1, group
    assert result.section.global_scale_groups == [g for g in groups if len(g) > 1]
    assert result.section.bits_per_weight == pytest.approx(4.5, abs=0.01)
    assert "Blackwell" in result.section.precision.gpu


def test_refusals_name_the_field_or_the_layer():
    with pytest.raises(ValidationError, match="activations: static is not offered"):
        parse_recipe({"steps": [{"method": "fp8", "weights": "block",
                                 "activations": "static"}]})
    for first in ("fp8", "nvfp4"):
        with pytest.raises(ValidationError, match=f"put {first} last"):
            parse_recipe({"steps": [{"method": first}, {"method": "gptq"}]})
    with pytest.raises(ValidationError, match="placement"):
        parse_recipe({"steps": [{"method": "fp8"}], "placement": "streamed"})
    model = tiny_model("llama")  # widths 64 and 128: 64 is no whole block
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"multiple of 128; model\.layers\.0\.self_attn\.q_proj"):
        run_fp8(model, Fp8Config(weights="block"), _context())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert NVFP4Config().layer_error("x", 64, 72, "cpu").startswith("nvfp4 needs in_features")
    with pytest.raises(ValueError, match="Conv1D"):
        run_fp8(tiny_model("gpt2"), Fp8Config(), _context())


def test_the_search_gains_an_fp8_operation():
    space = get_method("fp8").search
    assert space is not None and space.levels == ("fp8",) and space.saves_bytes
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    model = tiny_model("llama")
    layer = model.get_submodule("model.layers.0.mlp.down_proj")
    expected = import_object(space.perturb)(layer.weight.data.clone(), "fp8", None)
    run_fp8(model, Fp8Config(include=["layers\\.0\\.mlp\\.down_proj$"]), _context())
    assert torch.equal(expected, layer.weight.data)  # the stand-in is what the step installs
    assert import_object(space.layer_bytes)("fp8", 48, 64, "bfloat16") == 48 * 64 + 48 * 2
    assert import_object(space.perturb)(weight, "fp8", None).shape == weight.shape
    names = list(select_layers(model))
    choices = {name: "fp8" if "mlp" in name else "dense" for name in names}
    config = import_object(space.step)(choices)
    assert isinstance(config, Fp8Config) and config.weights == "channel"
    assert set(select_layers(tiny_model("llama"), config.include, config.exclude)) == {
        n for n in names if "mlp" in n}
    assert import_object(space.step)(dict.fromkeys(names, "dense")) is None


FRESH = """
import json, sys, torch
from transformers import AutoModelForCausalLM
cases = json.loads(sys.argv[1])
ids = torch.tensor(json.loads(sys.argv[2]))
out = {}
for folder, dtype in cases:
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # the first forward decompresses the weights
    torch.save({"logits": logits, "state": model.state_dict()}, folder + "/reloaded.pt")
print("ok")
"""


def _fresh(cases: list[tuple[Path, str | None]]) -> dict[Path, dict]:
    """Load each folder with stock `from_pretrained` in a new process: logits and weights."""
    command = [sys.executable, "-c", FRESH, json.dumps([(str(f), d) for f, d in cases]),
               json.dumps(IDS.tolist())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return {folder: torch.load(folder / "reloaded.pt") for folder, _ in cases}


def test_checkpoints_reload_in_a_fresh_process_with_their_activation_quantization(tmp_path):
    """Stock transformers' compressed-tensors forward fake-quantizes the inputs the way the
    checkpoint says: its logits equal the in-memory model's exactly, activation quantization
    included (FP8 dynamic, static and block in float32; NVFP4 W4A16 and W4A4 in bfloat16,
    the dtype compressed-tensors decompresses NVFP4 to); `compressors.load` gives back the
    evaluated weights, in float32 for NVFP4 too."""
    fp32 = _saved_in(torch.float32, "llama", tmp_path / "fp32")
    wide = tmp_path / "wide"  # widths 128 and 256: whole FP8 blocks
    tiny_model("llama", hidden=128).save_pretrained(wide)
    bf16 = _saved_in(torch.bfloat16, "llama", tmp_path / "bf16")
    cases = {"fp8-dynamic": (fp32, run_fp8, Fp8Config()),
             "fp8-static": (fp32, run_fp8, Fp8Config(activations="static")),
             "fp8-block": (wide, run_fp8, Fp8Config(weights="block")),
             "nvfp4-a16": (bf16, run_nvfp4, NVFP4Config()),
             "nvfp4-a4": (bf16, run_nvfp4, NVFP4Config(activations="fp4")),
             "nvfp4-fp32": (fp32, run_nvfp4, NVFP4Config())}
    expected, weights, infos = {}, {}, {}
    for name, (base, run, config) in cases.items():
        model = _from(base)
        run(model, config, _context())
        expected[name] = _logits(model)
        weights[name] = {n: layer.weight.data.clone() for n, layer in select_layers(model).items()}
        infos[name] = save_checkpoint(model, None, tmp_path / name)
    assert "dtype=torch.bfloat16" in infos["nvfp4-fp32"].how_to_load
    assert all("dtype=torch" not in infos[n].how_to_load for n in cases if n != "nvfp4-fp32")
    quant = json.loads((tmp_path / "nvfp4-a4" / "config.json").read_text())["quantization_config"]
    inputs = quant["config_groups"]["group_0"]["input_activations"]
    assert (inputs["strategy"], inputs["dynamic"], inputs["group_size"]) == (
        "tensor_group", "local", 16)
    reloaded = _fresh([(tmp_path / n, "bfloat16" if n == "nvfp4-fp32" else None) for n in cases])
    for name in cases:
        got = reloaded[tmp_path / name]
        if name != "nvfp4-fp32":
            assert torch.equal(got["logits"], expected[name]), name
        for layer, weight in weights[name].items():
            assert torch.equal(got["state"][f"{layer}.weight"].to(weight.dtype), weight), name
        ours = compressors.load(tmp_path / name)
        for layer, weight in weights[name].items():
            again = ours.get_submodule(layer).weight
            assert again.dtype == weight.dtype and torch.equal(again, weight), (name, layer)


def test_moe_experts_in_a_fresh_process(tmp_path):
    """Tiny Qwen3-MoE, experts included: FP8 reloads with the in-memory weights everywhere
    (stock transformers' forward does not quantize the fused experts' inputs, vLLM's does and
    so does ours: its logits differ only there); NVFP4's experts come back right from
    `compressors.load`, while stock transformers 5.25 drops their global scale
    (huggingface/transformers#48371, said on the model card)."""
    fp32 = _saved_in(torch.float32, "qwen3_moe", tmp_path / "fp32")
    bf16 = _saved_in(torch.bfloat16, "qwen3_moe", tmp_path / "bf16")
    states, infos = {}, {}
    for name, base, run, config in (("fp8", fp32, run_fp8, Fp8Config()),
                                    ("nvfp4", bf16, run_nvfp4, NVFP4Config())):
        model = _from(base)
        result = run(model, config, _context())
        assert result.section.quantized_layers == 2 * (4 + 8 * 3)
        assert any(".experts." in n for n in result.section.relative_error.per_layer)
        states[name] = {k: v.clone() for k, v in model.state_dict().items()}
        infos[name] = save_checkpoint(model, None, tmp_path / name)
        ours = compressors.load(tmp_path / name).state_dict()
        assert all(torch.equal(ours[k], v) for k, v in states[name].items()), name
    assert "transformers#48371" in infos["nvfp4"].how_to_load
    assert "#48371" not in infos["fp8"].how_to_load
    reloaded = _fresh([(tmp_path / "fp8", None), (tmp_path / "nvfp4", None)])
    stock = reloaded[tmp_path / "fp8"]["state"]
    assert all(torch.equal(stock[k], v) for k, v in states["fp8"].items())
    stock = reloaded[tmp_path / "nvfp4"]["state"]
    dense = [k for k in states["nvfp4"] if ".experts." not in k]
    assert all(torch.equal(stock[k], states["nvfp4"][k]) for k in dense)


EVALUATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from compressors.evaluate import perplexity
torch.set_num_threads(int(sys.argv[3]))
windows = torch.load(sys.argv[2])
out = {}
for folder, dtype in json.loads(sys.argv[1]):
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs).eval()
    out[folder] = perplexity(model, windows)
print(json.dumps(out))
"""


@pytest.mark.real_model
def test_smollm2_fp8_and_nvfp4(smollm2_path, tmp_path):
    """SmolLM2 at small budgets (evaluation 4 windows x 128): FP8 dynamic within 5% of fp32
    (measured +3.7% on these short windows; +2.05% on 512-token ones, the protocol's figure is
    bench/quantize.py --table deploy's) and NVFP4 A16 within 35% (measured +30% here; on two
    512-token windows ours +23.3%, llm-compressor's NVFP4A16 +22.2%); stock transformers in a
    fresh process, through compressed-tensors' own forward (activations fake-quantized by the
    library), gives the report's FP8 perplexity, and NVFP4 A16 loaded in bfloat16 is within
    0.5% of it."""
    results = {}
    for name, step in (("fp8", {"method": "fp8"}), ("nvfp4", {"method": "nvfp4"})):
        recipe = parse_recipe({"steps": [step], **SMALL_BUDGETS})
        results[name] = compressors.compress(smollm2_path, recipe, tmp_path / name,
                                             device="cpu")
    dense = results["fp8"].metrics.before.perplexity
    fp8 = results["fp8"].metrics.after.perplexity
    nvfp4 = results["nvfp4"].metrics.after.perplexity
    assert dense < fp8 < dense * 1.05, (dense, fp8)
    assert dense < nvfp4 < dense * 1.35, (dense, nvfp4)
    assert results["fp8"].section("quantization")["quantized_layers"] == 30 * 7
    context = StepContext(model_source=smollm2_path, tokenizer=None,
                          calibration=SMALL_CALIBRATION, evaluation=SMALL_EVALUATION)
    from transformers import AutoTokenizer

    context.tokenizer = AutoTokenizer.from_pretrained(smollm2_path, local_files_only=True)
    torch.save(context.evaluation_tokens(), tmp_path / "windows.pt")
    cases = [(str(tmp_path / "fp8"), None), (str(tmp_path / "nvfp4"), "bfloat16")]
    # the parent's thread count: another one sums the matmuls in another order, and dynamic
    # FP8 activations round a few values the other way (+0.2% perplexity, 1 thread vs 2)
    command = [sys.executable, "-c", EVALUATE, json.dumps(cases), str(tmp_path / "windows.pt"),
               str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    stock = json.loads(done.stdout.strip().splitlines()[-1])
    assert stock[str(tmp_path / "fp8")] == pytest.approx(fp8, rel=1e-4)
    assert stock[str(tmp_path / "nvfp4")] == pytest.approx(nvfp4, rel=5e-3)
