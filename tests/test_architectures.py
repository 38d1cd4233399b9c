"""The architecture table: tiny random models of twelve families × every method, each cell
judged from the files it saved, then reloaded in a fresh process (issue 28).

`ARCHITECTURES` lists the families (dense: Llama, Qwen3, Gemma 3, Phi-3, GPT-NeoX, Falcon;
mixture-of-experts: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS), each built
once per session with `AutoConfig.for_model` (hidden 64, 2 blocks, 4 experts, top-2) and the
real SmolLM2 tokenizer, so real text runs through them. `METHODS` lists one case per method
(and the variants a mixture-of-experts model needs). Every cell either runs or is refused:

- which cells are refused, and with what words, comes from the registry (`Method.experts`:
  a method that does not compress expert matrices refuses a selection holding them, at
  submission and in the job) and from the few limits a case names itself (bitsandbytes and
  Falcon's `nn.Linear` subclass);
- a cell that runs is judged from the saved safetensors, not from the report: every matrix of
  the default selection (read from the checkpoint's headers: dense layers and every expert's
  matrix, never a router) is pruned as claimed (the report's per-layer sparsity against the
  zeros in the files, and the method's own guarantee per matrix, row or group of 4), stored
  packed (`weight_packed` / `weight_scale`, no dense copy), stored as bitsandbytes tensors or
  as factors; routers are the source's, bit for bit;
- one subprocess per architecture then reloads all its cells with stock
  `AutoModelForCausalLM.from_pretrained` (what a checkpoint that does not declare
  `needs_compressors_load` promises) and with `compressors.load`, and measures perplexity on
  the report's windows: it must be the report's within 0.5%.

Budgets are the smallest that exercise everything (2 calibration windows of 32 tokens, one
evaluation window), so the whole table runs in CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import compressors
from compressors.io.checkpoint_layers import CheckpointLayers, checkpoint_layers
from compressors.methods import METHODS
from compressors.recipe import parse_recipe
from jobs.admission import layer_errors

BUDGETS = {"calibration": {"samples": 2, "seqlen": 32},
           "evaluation": {"windows": 1, "seqlen": 32}}
REFUSAL_BUDGETS = {"calibration": {"samples": 2, "seqlen": 32},
                   "evaluation": {"windows": 0, "seqlen": 8}}  # refused before any window
HEADER_BYTES = 16 * 2**20
PERPLEXITY_TOLERANCE = 0.005
EXCLUDE_EXPERTS = [r"\.experts\."]  # every expert matrix, per-expert or fused; not shared ones
COMMON = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
TOP2 = {"num_experts_per_tok": 2}


# ---- the table ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    id: str
    model_type: str
    shape: dict[str, Any] = field(default_factory=dict)  # config fields besides COMMON
    experts: str | None = None  # "per_expert" (saved one by one) or "fused" (3-D tensors)


ARCHITECTURES = [
    Architecture("llama", "llama"),
    Architecture("qwen3", "qwen3", {"head_dim": 16}),
    Architecture("gemma3", "gemma3_text", {"head_dim": 16, "sliding_window": 16}),
    Architecture("phi3", "phi3"),
    Architecture("gpt-neox", "gpt_neox"),
    Architecture("falcon", "falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    Architecture("mixtral", "mixtral", {"num_local_experts": 4, **TOP2}, "per_expert"),
    Architecture("qwen2-moe", "qwen2_moe",
                 {"num_experts": 4, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64, **TOP2}, "per_expert"),
    Architecture("qwen3-moe", "qwen3_moe",
                 {"num_experts": 4, "moe_intermediate_size": 64, "head_dim": 16, **TOP2},
                 "per_expert"),
    Architecture("olmoe", "olmoe", {"num_experts": 4, **TOP2}, "per_expert"),
    # DeepSeek-V3's attention needs as many key/value heads as query heads; its first block
    # is dense (first_k_dense_replace), its MoE block has shared experts; its widths divide
    # by 64 as the real model's do
    Architecture("deepseek-v3", "deepseek_v3",
                 {"num_key_value_heads": 4, "n_routed_experts": 4, "moe_intermediate_size": 64,
                  "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                  "q_lora_rank": 64, "kv_lora_rank": 64, "qk_rope_head_dim": 32,
                  "qk_nope_head_dim": 16, "v_head_dim": 16, **TOP2}, "per_expert"),
    Architecture("gpt-oss", "gpt_oss", {"num_local_experts": 4, "head_dim": 16, **TOP2},
                 "fused"),
]


@dataclass(frozen=True)
class Pruned:
    """What a pruning step guarantees in every selected matrix: at least `sparsity` zeros per
    `scope` ("matrix", "row"), or at most 2 nonzeros in every 4 inputs ("2:4")."""

    sparsity: float
    scope: str


@dataclass(frozen=True)
class MethodCase:
    id: str
    steps: list[dict[str, Any]]
    stored: Pruned | str  # a pruning guarantee, or "packed", "bnb", "factors"
    only_moe: bool = False  # a variant a mixture-of-experts model needs (experts excluded)
    stock_reload: bool = True  # stock from_pretrained gives back the evaluated model
    # refusals the registry does not declare: architecture id -> words the message holds
    refused: dict[str, tuple[str, ...]] = field(default_factory=dict)


QUANTIZE_FALCON = ("quantize", "FalconLinear", "gptq or rtn")
# transformers loads a Falcon compressed-tensors checkpoint only dequantized (FalconLinear's
# initialisation needs `.weight`), which drops activation quantization: refused at saving
ACTIVATIONS_FALCON = ("FalconForCausalLM, FalconLinear", "only dequantized", "weight-only")
METHOD_CASES = [
    MethodCase("magnitude-50", [{"method": "magnitude", "sparsity": 0.5}], Pruned(0.5, "matrix")),
    MethodCase("wanda-50", [{"method": "wanda", "sparsity": 0.5}], Pruned(0.5, "row")),
    MethodCase("wanda-2:4", [{"method": "wanda", "pattern": "2:4"}], Pruned(0.5, "2:4")),
    MethodCase("sparsegpt-50", [{"method": "sparsegpt", "sparsity": 0.5}],
               Pruned(0.5, "matrix")),
    MethodCase("gptq-w4", [{"method": "gptq", "bits": 4}], "packed"),
    MethodCase("rtn-w8-asym", [{"method": "rtn", "bits": 8, "symmetric": False}], "packed"),
    MethodCase("w8a8", [{"method": "w8a8"}], "packed", refused={"falcon": ACTIVATIONS_FALCON}),
    MethodCase("awq-w4", [{"method": "awq"}], "packed"),
    MethodCase("fp8", [{"method": "fp8"}], "packed", refused={"falcon": ACTIVATIONS_FALCON}),
    # compressed-tensors decompresses NVFP4 to bfloat16 (a float32 model must be loaded in
    # it) and stock transformers 5.25 drops NVFP4 experts' global scale
    # (huggingface/transformers#48371): the checkpoint says to load it with compressors.load
    MethodCase("nvfp4", [{"method": "nvfp4"}], "packed", stock_reload=False),
    MethodCase("nf4", [{"method": "quantize"}], "bnb", refused={"falcon": QUANTIZE_FALCON}),
    MethodCase("nf4-no-experts", [{"method": "quantize", "exclude": EXCLUDE_EXPERTS}], "bnb",
               only_moe=True),
    MethodCase("lowrank", [{"method": "lowrank", "rank": 8, "train_steps": 0}], "factors"),
    MethodCase("lowrank-no-experts",
               [{"method": "lowrank", "rank": 8, "train_steps": 0, "exclude": EXCLUDE_EXPERTS}],
               "factors", only_moe=True),
    MethodCase("wanda-50-perp", [{"method": "wanda", "sparsity": 0.5},
                                 {"method": "perp", "mode": "norms", "train_steps": 2,
                                  "seqlen": 32, "evaluate": False}], Pruned(0.5, "row")),
]


def expected_refusal(arch: Architecture, case: MethodCase) -> tuple[tuple[str, ...], bool] | None:
    """(words the refusal holds, whether submission refuses it too) or None: the cell runs.
    Expert refusals come from the registry: a step whose selection keeps the experts and
    whose method does not compress them (or not the way this checkpoint stores them, or not
    with these settings: asymmetric grids)."""
    for step in case.steps:
        method = METHODS[step["method"]]
        if arch.experts is None or "exclude" in step:
            continue
        fused = ["fused"] if arch.experts == "fused" else []
        if method.experts_refusal(["expert"], fused, method.config.model_validate(step)):
            return (method.name, "layer kind: experts"), True
    if arch.id in case.refused:
        return case.refused[arch.id], False  # found on the built model: the job refuses it
    return None


CELLS = [(arch, case) for arch in ARCHITECTURES for case in METHOD_CASES
         if arch.experts is not None or not case.only_moe]


# ---- building the models, running the cells ------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread: a second one mostly waits for the first
    (on a busy 2-core machine a forward pass took 20 times longer with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, smollm2_tokenizer) -> dict[str, Path]:
    """Every architecture's tiny model, saved once with the SmolLM2 tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("architectures")
    folders = {}
    for arch in ARCHITECTURES:
        torch.manual_seed(0)
        config = AutoConfig.for_model(
            arch.model_type, vocab_size=len(smollm2_tokenizer),
            bos_token_id=smollm2_tokenizer.bos_token_id,
            eos_token_id=smollm2_tokenizer.eos_token_id, pad_token_id=None,
            **{**COMMON, **arch.shape})
        model = AutoModelForCausalLM.from_config(config)
        folders[arch.id] = root / arch.id
        model.save_pretrained(folders[arch.id])
        smollm2_tokenizer.save_pretrained(folders[arch.id])
    return folders


@dataclass
class Cell:
    out: Path
    report: dict[str, Any] | None = None
    error: str | None = None


@pytest.fixture(scope="module")
def cells(sources, tmp_path_factory) -> Callable[[Architecture, MethodCase], Cell]:
    """Runs a cell once (the reload test reuses what the cell tests ran)."""
    root = tmp_path_factory.mktemp("cells")
    done: dict[tuple[str, str], Cell] = {}

    def run(arch: Architecture, case: MethodCase) -> Cell:
        key = (arch.id, case.id)
        if key not in done:
            budgets = REFUSAL_BUDGETS if expected_refusal(arch, case) else BUDGETS
            cell = done[key] = Cell(root / arch.id / case.id.replace(":", "-"))
            recipe = parse_recipe({"steps": case.steps, **budgets})
            try:
                compressors.compress(sources[arch.id], recipe, cell.out, device="cpu")
            except ValueError as error:
                cell.error = str(error)
            else:
                cell.report = json.loads((cell.out / "compression_report.json").read_text())
        return done[key]

    return run


def _id(cell: tuple[Architecture, MethodCase]) -> str:
    return f"{cell[0].id}-{cell[1].id}"


# ---- reading the saved files ---------------------------------------------------------------

class Saved:
    """The tensors of a saved checkpoint, by name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as handle:
                self.where.update(dict.fromkeys(handle.keys(), path))

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(str(self.where[name]), "pt") as handle:
            return handle.get_tensor(name)

    def shape(self, name: str) -> list[int]:
        with safe_open(str(self.where[name]), "pt") as handle:
            return handle.get_slice(name).get_shape()


def expert_matrix(saved: Saved, name: str) -> torch.Tensor | None:
    """A fused expert matrix `<tensor>.<e>` (GPT-OSS) as its checkpoint stores it: expert e of
    the 3-D tensor (`[in, out]`: GPT-OSS computes `x @ W[e]`)."""
    base, _, expert = name.rpartition(".")
    for key in (base, f"{base}.weight"):
        if expert.isdigit() and key in saved and saved[key].ndim == 3:
            return saved[key][int(expert)].t()
    return None


def matrix(saved: Saved, name: str) -> torch.Tensor:
    """The stored `[out, in]` weight of a layer named as the checkpoint names it."""
    fused = expert_matrix(saved, name)
    return fused if fused is not None else saved[f"{name}.weight"]


def stored_name(source_layers: CheckpointLayers, name: str, renamed: dict[str, str]) -> str:
    """The checkpoint's name of a layer the report names as the model does (transformers
    saves some modules under legacy names: Mixtral's `mlp` as `block_sparse_moe`)."""
    return name if name in source_layers.names else renamed.get(name, name)


@pytest.fixture(scope="module")
def renamings(sources) -> Callable[[str, list[str]], dict[str, str]]:
    """{model name: saved name} by transformers' own reverse conversion (a meta model)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    models: dict[str, torch.nn.Module] = {}

    def saved_names(arch_id: str, names: list[str]) -> dict[str, str]:
        if arch_id not in models:
            config = AutoConfig.from_pretrained(sources[arch_id], local_files_only=True)
            with torch.device("meta"):
                models[arch_id] = AutoModelForCausalLM.from_config(config)
        found = {}
        for name in names:
            stand_in = {f"{name}.weight": torch.empty(1, 1)}
            (key,) = revert_weight_conversion(models[arch_id], stand_in)
            found[name] = key.removesuffix(".weight")
        return found

    return saved_names


# ---- the checks ----------------------------------------------------------------------------

def check_pruned(saved: Saved, report: dict[str, Any], expected: list[str], pruned: Pruned,
                 names: Callable[[list[str]], dict[str, str]]) -> None:
    """Every matrix of the default selection is in the report and, in the files, has the
    zeros the report claims (within one per row) and the method guarantees."""
    per_layer = report["sparsity"]["per_layer"]
    claimed = {names([n])[n]: fraction for n, fraction in per_layer.items()}
    assert set(claimed) == set(expected), "a selected matrix is not pruned, or the reverse"
    zeros = total = 0
    for name in expected:
        weight = matrix(saved, name)
        rows, width = weight.shape
        zero = weight == 0
        count = int(zero.sum())
        assert abs(count - claimed[name] * weight.numel()) <= rows, (name, count, claimed[name])
        if pruned.scope == "matrix":
            assert count >= int(weight.numel() * pruned.sparsity), name
        elif pruned.scope == "row":
            assert int(zero.sum(dim=1).min()) >= int(width * pruned.sparsity), name
        else:
            groups = zero.reshape(rows, -1, 4).sum(dim=2)
            assert bool((groups >= 2).all()), f"{name} breaks 2:4"
        assert count / weight.numel() >= 0.495, name
        zeros, total = zeros + count, total + weight.numel()
    assert abs(zeros / total - report["sparsity"]["total"]) < 1e-9


COMPRESSED_DTYPES = (torch.int8, torch.float8_e4m3fn)  # compressed-tensors' unpacked codes


def check_packed(saved: Saved, report: dict[str, Any], expected: list[str],
                 names: Callable[[list[str]], dict[str, str]]) -> None:
    """Every selected matrix (each expert's included) is stored compressed-tensors style
    with its scales, packed (`weight_packed`) or as 8-bit codes, never as a dense copy, and
    the report quantized exactly those."""
    section = report["quantization"]
    claimed = set(names(list(section["relative_error"]["per_layer"])).values())
    assert claimed == set(expected)
    for name in expected:
        assert f"{name}.weight_scale" in saved, name
        if f"{name}.weight_packed" in saved:
            assert f"{name}.weight" not in saved, f"{name}: a dense copy remains"
        else:
            assert saved[f"{name}.weight"].dtype in COMPRESSED_DTYPES, name
    assert not [k for k in saved.where if len(saved.shape(k)) == 3], "experts saved dense"


def check_bnb(saved: Saved, report: dict[str, Any], expected: list[str]) -> None:
    """The selected layers are stored as bitsandbytes 4-bit tensors (packed bytes, absmax,
    code book, quant state), and the report counts exactly those."""
    for name in expected:
        assert saved[f"{name}.weight"].dtype == torch.uint8, name
        assert f"{name}.weight.absmax" in saved and f"{name}.weight.quant_map" in saved, name
    stored = {k.removesuffix(".weight.absmax") for k in saved.where if k.endswith(".absmax")}
    assert stored == set(expected)
    assert report["quantization"]["quantized_layers"] == len(expected)


def check_factors(saved: Saved, report: dict[str, Any], expected: list[str],
                  names: Callable[[list[str]], dict[str, str]]) -> None:
    """The factorized layers are stored as their factors at the reported ranks (no dense
    weight), the rest of the selection dense; the kept fraction is what the files hold."""
    section = report["lowrank"]
    ranks = {names([n])[n]: rank for n, rank in section["ranks"].items()}
    skipped = set(names(list(section["layers_skipped"])).values())
    assert set(ranks) | skipped == set(expected)
    before = after = 0
    for name in expected:
        if name in skipped:
            weight = matrix(saved, name)
            before, after = before + weight.numel(), after + weight.numel()
            continue
        assert f"{name}.weight" not in saved, name
        up, down = saved[f"{name}.up"], saved[f"{name}.down"]
        assert up.shape[1] == down.shape[0] == ranks[name], name
        before += up.shape[0] * down.shape[1]
        after += up.numel() + down.numel()
    assert section["params_targeted_before"] == before
    assert section["params_targeted_after"] == after
    assert abs(section["kept_fraction_targeted"] - after / before) < 1e-9


def check_routers(saved: Saved, source: Saved, layers: CheckpointLayers,
                  report: dict[str, Any]) -> None:
    """Routers are never in a default selection: stored as the source's, bit for bit."""
    for name in layers.routers:
        assert torch.equal(saved[f"{name}.weight"], source[f"{name}.weight"]), name
    if layers.routers:
        assert report["layer_kinds"]["routers"]["zeros"] == 0


# ---- the tests -----------------------------------------------------------------------------

def test_every_registered_method_is_in_the_table():
    assert {step["method"] for case in METHOD_CASES for step in case.steps} == set(METHODS)


@pytest.mark.parametrize("cell", CELLS, ids=_id)
def test_cell(cell, sources, cells, renamings):
    arch, case = cell
    result = cells(arch, case)
    refusal = expected_refusal(arch, case)
    if refusal is not None:
        words, at_submission = refusal
        assert result.error is not None, "the cell ran; it should have been refused"
        for word in words:
            assert word in result.error, (word, result.error)
        recipe = parse_recipe({"steps": case.steps, **BUDGETS})
        submitted = [message for _at, message in
                     layer_errors(sources[arch.id], recipe.planned()[0], "cpu")]
        assert bool(submitted) == at_submission, submitted
        for message in submitted:
            for word in words:
                assert word in message, (word, message)
        return
    assert result.error is None, result.error
    report = result.report
    layers = checkpoint_layers(sources[arch.id], HEADER_BYTES)
    excluded = any("exclude" in step for step in case.steps)
    expected = [n for n in layers.inside if not (excluded and n in layers.experts)]
    saved, source = Saved(result.out), Saved(sources[arch.id])

    def names(found: list[str]) -> dict[str, str]:
        renamed = renamings(arch.id, [n for n in found if n not in layers.names])
        return {n: stored_name(layers, n, renamed) for n in found}

    if isinstance(case.stored, Pruned):
        check_pruned(saved, report, expected, case.stored, names)
    elif case.stored == "packed":
        check_packed(saved, report, expected, names)
    elif case.stored == "bnb":
        check_bnb(saved, report, expected)
    else:
        check_factors(saved, report, expected, names)
    check_routers(saved, source, layers, report)
    untouched = [n for n in layers.experts if n not in expected]
    for name in untouched:  # experts a step excluded stay the source's
        assert torch.equal(matrix(saved, name), matrix(source, name)), name


RELOAD = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
import compressors
from compressors.evaluate import perplexity

windows = load_file(sys.argv[2])["windows"]
for out in map(Path, sys.argv[3:]):
    report = json.loads((out / "compression_report.json").read_text())
    loaders = {"compressors.load": lambda: compressors.load(out)}
    if out.name in sys.argv[1].split(","):
        loaders["from_pretrained"] = lambda: AutoModelForCausalLM.from_pretrained(
            out, local_files_only=True)
    for how, load in loaders.items():
        with torch.no_grad():
            value = perplexity(load().eval(), windows)
        print(json.dumps({"cell": str(out), "loader": how, "perplexity": value}), flush=True)
"""


@pytest.fixture(scope="module")
def evaluation_windows_file(sources, tmp_path_factory) -> Path:
    """The evaluation windows every cell's report measured, for the reload processes."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from compressors.engine.windows import evaluation_windows
    from compressors.recipe.protocol import EvaluationConfig

    tokenizer = AutoTokenizer.from_pretrained(sources["llama"], local_files_only=True)
    windows = evaluation_windows(tokenizer, EvaluationConfig(**BUDGETS["evaluation"]))
    path = tmp_path_factory.mktemp("windows") / "windows.safetensors"
    save_file({"windows": windows.contiguous()}, str(path))
    return path


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda arch: arch.id)
def test_checkpoints_reload_in_a_fresh_process(arch, cells, evaluation_windows_file):
    """Every published checkpoint of the architecture, in one fresh process: stock
    `from_pretrained` (unless the format says it needs `compressors.load`) and
    `compressors.load` both run it at the perplexity the report measured."""
    published, stock = {}, []
    for case in METHOD_CASES:
        if (arch, case) in CELLS and expected_refusal(arch, case) is None:
            cell = cells(arch, case)
            assert cell.report is not None, cell.error
            published[str(cell.out)] = cell.report
            if case.stock_reload and not cell.report["checkpoint"]["needs_compressors_load"]:
                stock.append(cell.out.name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", RELOAD, ",".join(stock),
                          str(evaluation_windows_file), *published],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    loaders = {}
    for entry in measured:
        loaders.setdefault(entry["cell"], set()).add(entry["loader"])
        claimed = published[entry["cell"]]["metrics"]["after"]["perplexity"]
        assert abs(entry["perplexity"] / claimed - 1) <= PERPLEXITY_TOLERANCE, entry
    for out in published:
        wanted = {"compressors.load"} | ({"from_pretrained"} if Path(out).name in stock else set())
        assert loaders.get(out) == wanted, out


# ---- shape limits a method states at submission --------------------------------------------

SHAPE_REFUSALS = [
    # bitsandbytes' 4-bit CPU kernel tiles out_features by 32: a named router [1, H] is not
    ("qwen2-moe", {"method": "quantize", "include": ["shared_expert_gate"]},
     ("out_features 1", "multiple of 32", "mlp.shared_expert_gate")),
    # a blocksize that does not divide in_features: the advice names one that does
    ("deepseek-v3", {"method": "quantize", "blocksize": 128, "exclude": EXCLUDE_EXPERTS},
     ("blocksize: 128 does not divide in_features 64", "use blocksize 64")),
]


@pytest.mark.parametrize(("arch_id", "step", "words"), SHAPE_REFUSALS,
                         ids=[f"{a}-{re.sub(r'[^a-z]+', '-', str(s))[:30]}"
                              for a, s, _w in SHAPE_REFUSALS])
def test_shape_limits_are_refused_at_submission_and_in_the_job(arch_id, step, words, sources,
                                                                tmp_path):
    recipe = parse_recipe({"steps": [step], **REFUSAL_BUDGETS})
    submitted = [message for _at, message in
                 layer_errors(sources[arch_id], recipe.planned()[0], "cpu")]
    assert len(submitted) == 1, submitted
    with pytest.raises(ValueError) as error:
        compressors.compress(sources[arch_id], recipe, tmp_path / "out", device="cpu")
    for word in words:
        assert word in submitted[0], (word, submitted[0])
        assert word in str(error.value), (word, str(error.value))
