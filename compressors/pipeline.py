"""Run a recipe end to end: load, measure, apply every step, measure again, publish.

This is the library's front door; the CLI and the worker both call `compress`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import compressors
from compressors.context import StepContext
from compressors.evaluate import (
    forward_latency,
    parameter_counts,
    peak_cuda_bytes,
    peak_rss_bytes,
    perplexity,
    sparsity_report,
)
from compressors.model_io import LoadedModel, load_model, save_checkpoint, size_on_disk
from compressors.progress import ProgressCallback, ProgressTracker
from compressors.publish import check_destination, staging_folder
from compressors.quantization.layers import memory_footprint
from compressors.recipe import Recipe
from compressors.registry import get_method
from compressors.report import write_outputs

# Shares of overall progress; the steps split the middle span evenly.
_LOAD, _BEFORE, _STEPS, _AFTER = 0.05, 0.15, 0.85, 0.95


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure(
    model: nn.Module, context: StepContext, causal: bool, progress,
    known_perplexity: float | None = None,
) -> dict[str, Any]:
    """Perplexity (causal LMs, when evaluation windows > 0), counts, latency.

    `known_perplexity`: the last step already measured this very model on the same windows.
    """
    metrics: dict[str, Any] = {}
    if causal and context.evaluation.windows > 0:
        metrics["perplexity"] = known_perplexity if known_perplexity is not None else (
            perplexity(model, context.evaluation_windows, progress))
    else:
        metrics["perplexity"] = None
    metrics["parameters"], metrics["nonzero_parameters"] = parameter_counts(model)
    metrics["footprint_bytes"] = memory_footprint(model)
    if causal:
        metrics.update(forward_latency(model, seqlen=min(128, context.evaluation.seqlen)))
    return metrics


def _dense_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def compress(
    model: str | Path,
    recipe: Recipe,
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Compress `model` with `recipe` and publish the checkpoint and report into `out_dir`.

    `model_name` is what the report and model card call the base model (default: `model` as
    given); the service passes the user's name so no server path leaks into artifacts.
    """
    out = Path(out_dir)
    check_destination(out.resolve(), overwrite)
    started = time.perf_counter()
    tracker = ProgressTracker(progress)
    tracker.span("loading", 0.0, _LOAD)(0.0, "loading the model")
    loaded = load_model(model)
    run_device = torch.device(device) if device else default_device()
    loaded.model.to(run_device)
    tracker.span("loading", 0.0, _LOAD)(1.0, "model loaded")
    context = StepContext(
        model_source=loaded.source, tokenizer=loaded.tokenizer, calibration=recipe.calibration,
        evaluation=recipe.evaluation, device=run_device,
    )
    before = measure(loaded.model, context, loaded.is_causal_lm,
                     tracker.span("evaluating", _LOAD, _BEFORE))
    before["size_bytes"] = (
        size_on_disk(loaded.source) if loaded.source.is_dir() else _dense_bytes(loaded.model)
    )
    steps, sections, model_now, last_perplexity = _run_steps(loaded, recipe, context, tracker)
    after = measure(model_now, context, loaded.is_causal_lm,
                    tracker.span("evaluating", _STEPS, _AFTER), last_perplexity)
    saving = tracker.span("saving", _AFTER, 1.0)
    with staging_folder(out, overwrite) as staging:
        saving(0.1, "writing checkpoint")
        save_checkpoint(model_now, loaded.tokenizer, staging)
        after["size_bytes"] = size_on_disk(staging)
        report = _build_report(model_name or str(model), recipe, steps, sections, before,
                               after, model_now, started,
                               sorted(context.state.get("masks", {})) or None)
        write_outputs(staging, report)
        saving(0.9, "publishing")
    saving(1.0, "done")
    return report


def _run_steps(
    loaded: LoadedModel, recipe: Recipe, context: StepContext, tracker: ProgressTracker
) -> tuple[list[dict[str, Any]], dict[str, Any], nn.Module, float | None]:
    """Run every step; also returns the perplexity the last step measured, if it did."""
    model = loaded.model
    steps: list[dict[str, Any]] = []
    sections: dict[str, Any] = {}
    share = (_STEPS - _BEFORE) / len(recipe.steps)
    for index, step in enumerate(recipe.steps):
        method = get_method(step.method)
        start = _BEFORE + index * share
        if method.needs_calibration and "calibration_windows" not in context.__dict__:
            tracker.span("calibrating", start, start)(1.0, "tokenizing calibration text")
            _ = context.calibration_windows
        context.progress = tracker.span(method.stage, start, start + share)
        context.progress(0.0, f"step {index + 1}/{len(recipe.steps)}: {method.name}")
        began = time.perf_counter()
        result = method.run(model, step, context)
        if result.model is not None:
            model = result.model
        entry = {"method": method.name, "seconds": time.perf_counter() - began,
                 "config": step.model_dump(mode="json"), **result.details}
        steps.append(entry)
        sections.update(result.sections)
    return steps, sections, model, result.perplexity


def _build_report(
    model_spec: str | Path, recipe: Recipe, steps: list[dict[str, Any]],
    sections: dict[str, Any], before: dict[str, Any], after: dict[str, Any],
    model: nn.Module, started: float, pruned_layers: list[str] | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "base_model": str(model_spec),
        "recipe": recipe.to_json_dict(),
        "steps": steps,
        "metrics": {"before": before, "after": after},
        "sparsity": sparsity_report(model, pruned_layers),
        "peak_memory_bytes": peak_rss_bytes(),
        "peak_cuda_memory_bytes": peak_cuda_bytes(),
        "seconds_total": time.perf_counter() - started,
        "device": str(next(model.parameters()).device),
        "versions": _versions(),
    }
    report.update(sections)
    return report


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "compressors": compressors.__version__}
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        pass
    return versions
