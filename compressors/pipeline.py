"""Run a recipe end to end: plan, load, measure, apply every step, measure again, publish.

This is the library's front door; the CLI and the worker both call `compress`.

The memory estimate (`compressors.memory`) picks how the model is held before anything loads
(`engine.placement`): in memory, onloaded, or streamed. Streamed runs read the source
safetensors block by block; each step writes its result as shards in a scratch folder beside
the output (the next step reads those), and the last step's shards become the checkpoint.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors import memory
from compressors.engine.context import StepContext, StepResult
from compressors.engine.layers import ExpertLayer, memory_footprint
from compressors.engine.modules import is_causal_lm, select_layers
from compressors.engine.placement import Onloaded, Streamed, set_placement
from compressors.evaluate import (
    Census,
    block_by_block_census,
    census,
    forward_latency,
    kind_totals,
    peak_cuda_bytes,
    perplexity,
)
from compressors.io.formats import PLAIN
from compressors.io.loading import (
    LoadedModel,
    load_model,
    load_skeleton,
    resolve_model,
    run_dtype,
    save_checkpoint,
    size_on_disk,
)
from compressors.io.stream import INDEX_FILE, ShardWriter, TensorSource
from compressors.malloc import pin_mmap_threshold
from compressors.methods import Method, get_method
from compressors.peak_memory import peak_rss_bytes, reset_peak
from compressors.progress import ProgressCallback, ProgressTracker
from compressors.publish import check_destination, staging_folder
from compressors.recipe import Recipe
from compressors.recipe.fields import LayerSelection
from compressors.recipe.step import StepConfig
from compressors.recipe.text import text_policy_violations
from compressors.report import write_outputs
from compressors.report.charts import layer_chart
from compressors.report.schema import (
    BeforeAfter,
    Chart,
    CheckpointInfo,
    CompressionReport,
    MemoryReport,
    ModelMetrics,
    StepReport,
)
from compressors.version import __version__

# Shares of overall progress; the steps split the middle span evenly.
_LOAD, _BEFORE, _STEPS, _AFTER = 0.05, 0.15, 0.85, 0.95


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure(
    model: nn.Module, context: StepContext, causal: bool, progress,
    known_perplexity: float | None = None, pruned_layers: list[str] | None = None,
) -> tuple[ModelMetrics, Census]:
    """Perplexity (causal LMs, when evaluation windows > 0), counts, latency (in memory only).

    `known_perplexity`: the last step already measured this very model on the same windows.
    A model that is not in memory is counted and evaluated in one block-by-block pass.
    """
    wants_ppl = causal and context.evaluation.windows > 0 and known_perplexity is None
    windows = context.evaluation_tokens() if wants_ppl else None
    if context.placement_mode == "in_memory":
        ppl = perplexity(model, windows, progress) if windows is not None else None
        counted = census(model, pruned_layers)
        counted.footprint_bytes = memory_footprint(model)
        latency = forward_latency(model, seqlen=min(128, context.evaluation.seqlen)) \
            if causal else {}
    else:
        counted, ppl = block_by_block_census(model, pruned_layers, windows, progress)
        latency = {}
    if known_perplexity is not None:
        ppl = known_perplexity
    metrics = ModelMetrics(perplexity=ppl, parameters=counted.parameters,
                           nonzero_parameters=counted.nonzero,
                           footprint_bytes=counted.footprint_bytes, **latency)
    return metrics, counted


def compress(
    model: str | Path,
    recipe: Recipe,
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    model_name: str | None = None,
    allowed_text_roots: list[Path] | None = None,
    memory_limits: memory.Limits | None = None,
    before_perplexity: float | None = None,
) -> CompressionReport:
    """Compress `model` with `recipe` and publish the checkpoint and report into `out_dir`.

    `model_name` is what the report and model card call the base model (default: `model` as
    given); the service passes the user's name so no server path leaks into artifacts.
    `allowed_text_roots`: when given (the service), every text file the recipe names must lie
    under one of them, checked again here before anything is read. `memory_limits`: what this
    process may use (default: measured from the machine, its cgroup and WORKER_MEMORY_LIMIT).
    `before_perplexity`: the original model's perplexity on the recipe's evaluation windows,
    when the caller measured it already (the goal search runs many recipes on one model).
    """
    if allowed_text_roots is not None:
        violations = text_policy_violations(recipe, allowed_text_roots)
        if violations:
            loc, message = violations[0]
            raise PermissionError(f"{'.'.join(map(str, loc))}: {message}")
    out = Path(out_dir)
    check_destination(out.resolve(), overwrite)
    started = time.perf_counter()
    pin_mmap_threshold()  # freed tensors go back to the kernel at once (see malloc)
    reset_peak()  # this run's peak, not the parent process's (see peak_memory)
    run_device = torch.device(device) if device else default_device()
    source = resolve_model(model)
    limits = memory_limits or memory.local_limits(run_device)
    estimate = memory.estimate_source(source, recipe)
    plan = memory.choose_placement(estimate, recipe, limits, run_device.type)
    tracker = ProgressTracker(progress)
    tracker.span("loading", 0.0, _LOAD)(0.0, f"loading the model ({plan.mode})")
    run = _Run(source, recipe, run_device, plan, tracker, started)
    run.before_perplexity = before_perplexity
    with staging_folder(out, overwrite) as staging:
        report = run.execute(staging, model_name or str(model), estimate)
    tracker.span("saving", _AFTER, 1.0)(1.0, "done")
    return report


class _Run:
    """One compression run: holds the model, its placement and what the report needs."""

    def __init__(self, source: Path, recipe: Recipe, device: torch.device,
                 plan: memory.Plan, tracker: ProgressTracker, started: float) -> None:
        self.source, self.recipe, self.device = source, recipe, device
        self.plan, self.tracker, self.started = plan, tracker, started
        self.dtype = run_dtype(source, recipe.dtype)
        self.streamed: Streamed | None = None
        self.before_perplexity: float | None = None

    def _load(self) -> LoadedModel:
        if self.plan.mode == "streamed":
            loaded = load_skeleton(self.source, self.dtype)
            self.streamed = Streamed(self.device, TensorSource(self.source), self.dtype)
            set_placement(loaded.model, self.streamed)
            self.streamed.load_outer(loaded.model)
        else:
            loaded = load_model(self.source, self.dtype)
            if self.plan.mode == "onloaded":
                onloaded = Onloaded(self.device)
                onloaded.place_outer(loaded.model)
                set_placement(loaded.model, onloaded)
            else:
                loaded.model.to(self.device)
        return loaded

    def execute(self, staging: Path, model_name: str,
                estimate: memory.Estimate) -> CompressionReport:
        loaded = self._load()
        model, tokenizer = loaded.model, loaded.tokenizer
        causal = loaded.is_causal_lm or is_causal_lm(model)
        del loaded  # a step that returns a new model (quantize) frees the old one at once
        self.tracker.span("loading", 0.0, _LOAD)(1.0, "model loaded")
        context = StepContext(
            model_source=self.source, tokenizer=tokenizer,
            calibration=self.recipe.calibration, evaluation=self.recipe.evaluation,
            device=self.device, placement_mode=self.plan.mode,
        )
        before, _ = measure(model, context, causal, self.tracker.span("evaluating", _LOAD,
                                                                      _BEFORE),
                            known_perplexity=self.before_perplexity)
        before.size_bytes = (size_on_disk(self.source) if self.source.is_dir()
                             else sum(p.numel() * p.element_size() for p in model.parameters()))
        steps, results, model = self._run_steps(model, context, staging)
        pruned = sorted(context.masks) or context.pruned_layers or None
        after, counted = measure(model, context, causal,
                                 self.tracker.span("evaluating", _STEPS, _AFTER),
                                 results[-1].perplexity, pruned)
        saving = self.tracker.span("saving", _AFTER, 1.0)
        saving(0.1, "writing checkpoint")
        checkpoint = self._save(model, tokenizer, staging)
        after.size_bytes = size_on_disk(staging)
        report = self._report(model_name, steps, results, BeforeAfter(before=before, after=after),
                              model, counted, pruned, checkpoint, estimate)
        report.layer_kinds = kind_totals(model, counted, staging)
        write_outputs(staging, report)
        saving(0.9, "publishing")
        return report

    def _run_steps(
        self, model: nn.Module, context: StepContext, staging: Path,
    ) -> tuple[list[StepReport], list[StepResult], nn.Module]:
        """Run every step; returns their report entries, their results and the final model."""
        entries: list[StepReport] = []
        results: list[StepResult] = []
        share = (_STEPS - _BEFORE) / len(self.recipe.steps)
        for index, step in enumerate(self.recipe.steps):
            method = get_method(step.method)
            _refuse_unhandled_experts(model, step, method)
            start = _BEFORE + index * share
            if method.needs_calibration and not context.has_calibration:
                self.tracker.span("calibrating", start, start)(1.0, "tokenizing calibration text")
                context.calibration_tokens()
            context.keep_masks = any(get_method(later.method).uses_masks
                                     for later in self.recipe.steps[index + 1:])
            context.progress = self.tracker.span(method.stage, start, start + share)
            context.progress(0.0, f"step {index + 1}/{len(self.recipe.steps)}: {method.name}")
            began = time.perf_counter()
            sink = self._begin_pass(staging, index)
            result = method.run(model, step, context)
            self._end_pass(sink, staging, index)
            if result.model is not None:
                model = result.model
            entries.append(StepReport(method=method.name, seconds=time.perf_counter() - began,
                                      config=step.model_dump(mode="json"), **result.details))
            results.append(result)
        return entries, results, model

    def _begin_pass(self, staging: Path, index: int) -> ShardWriter | None:
        """Streamed: this step writes its blocks into a scratch folder of its own."""
        if self.streamed is None:
            return None
        sink = ShardWriter(_pass_folder(staging, index))
        self.streamed.begin_pass(sink)
        return sink

    def _end_pass(self, sink: ShardWriter | None, staging: Path, index: int) -> None:
        """Streamed: the next step (and the final evaluation) reads what this one wrote."""
        if self.streamed is None or sink is None:
            return
        sink.close()
        self.streamed.source = TensorSource(sink.folder)
        self.streamed.begin_pass(None)
        if index > 0:
            shutil.rmtree(_pass_folder(staging, index - 1), ignore_errors=True)

    def _save(self, model: nn.Module, tokenizer: Any, staging: Path) -> CheckpointInfo:
        if self.streamed is None:
            return save_checkpoint(model, tokenizer, staging)
        last = self.streamed.source.folder
        for path in last.iterdir():
            if path.suffix == ".safetensors" or path.name == INDEX_FILE:
                path.rename(staging / path.name)
        shutil.rmtree(last.parent, ignore_errors=True)
        model.config.dtype = self.dtype
        model.config.save_pretrained(staging)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        return PLAIN

    def _report(
        self, model_name: str, steps: list[StepReport], results: list[StepResult],
        metrics: BeforeAfter, model: nn.Module, counted: Census, pruned: list[str] | None,
        checkpoint: CheckpointInfo, estimate: memory.Estimate,
    ) -> CompressionReport:
        sparsity = counted.sparsity()
        charts: list[Chart] = []
        if pruned:
            charts.append(layer_chart("sparsity", "Sparsity per pruned layer",
                                      sparsity.per_layer, "sparsity", reference=sparsity.total))
        sections: dict[str, Any] = {}
        for entry, result in zip(steps, results, strict=True):
            charts.extend(result.charts)
            section = get_method(entry.method).section
            if section is not None and result.section is not None:
                sections[section] = result.section.model_dump(mode="json")
        peak = peak_rss_bytes()
        return CompressionReport(
            base_model=model_name, recipe=self.recipe.to_json_dict(), steps=steps,
            metrics=metrics, sparsity=sparsity, charts=charts, checkpoint=checkpoint,
            memory=MemoryReport(placement=self.plan.mode, dtype=str(self.dtype).split(".")[-1],
                                estimated_peak_bytes=self.plan.ram_bytes,
                                estimated_device_bytes=self.plan.device_bytes,
                                limit_bytes=self.plan.limit_bytes, measured_peak_bytes=peak,
                                steps=estimate.step_summaries()),
            peak_memory_bytes=peak, peak_cuda_memory_bytes=peak_cuda_bytes(),
            seconds_total=time.perf_counter() - self.started,
            device=str(self.device), versions=_versions(), **sections,
        )


def _pass_folder(staging: Path, index: int) -> Path:
    return staging / ".passes" / f"step-{index}"


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "compressors": __version__}
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        pass
    return versions


def _refuse_unhandled_experts(model: nn.Module, step: StepConfig, method: Method) -> None:
    """A step whose selection holds expert matrices its method does not compress fails
    before it runs (submission refused it already; this holds for whatever reached the job):
    a selected weight is compressed or refused, never skipped."""
    if not isinstance(step, LayerSelection):
        return
    chosen = select_layers(model, step.include, step.exclude)
    experts = [name for name, layer in chosen.items() if isinstance(layer, ExpertLayer)]
    fused = [name for name in experts if not chosen[name].per_expert_checkpoint]
    refusal = method.experts_refusal(experts, fused, step)
    if refusal:
        raise ValueError(refusal)
