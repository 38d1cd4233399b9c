"""Admission: what submission checks beyond the recipe's own validation, before a job queues.

Three things a job cannot know alone, read without torch and without loading a model, each
checked by one function for a recipe job and a goal job alike (a goal answers with the
recipes its search will run, each part located in the goal: `jobs.spec`):

- a step's layer selection must match layers of *this* model (`include: ["zzzz"]` would
  change nothing, and a job that changes nothing is an error), and a method that does not
  compress mixture-of-experts expert matrices must not be handed them, read from the
  safetensors headers (`compressors.io.checkpoint_layers`);
- what needs a next-token loss (low-rank `weighting: fisher`, PERP, a goal, whose search
  ranks candidates by perplexity) needs a model whose config.json declares a causal-LM
  architecture;
- the job must fit a worker: the memory estimate (`compressors.memory`) of this model and
  each recipe, against the largest limits a live worker advertises (its RAM, cgroup limit and
  WORKER_MEMORY_LIMIT, written beside its heartbeat), so `samples: 1024, seqlen: 8192` on a
  model too large for them is a 422 naming the bytes instead of a job that dies of OOM.

The worker checks both again when it runs the job (the library's `select_layers` and
`choose_placement`); a model that cannot be read here (GGUF, `.bin`, not converted yet) is
left to those checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from redis import Redis

from compressors import assets
from compressors.io.checkpoint_layers import CheckpointLayers, checkpoint_layers
from compressors.io.model_files import (
    DamagedWeights,
    UnsafeModelFile,
    check_model_folder,
    model_config,
    shard_map,
)
from compressors.memory import DoesNotFit, GiB, Limits, choose_placement, estimate_source
from compressors.methods import METHODS
from compressors.recipe import patterns
from compressors.recipe.fields import LayerSelection
from compressors.recipe.schema import PlannedRecipe
from compressors.recipe.text import Location
from jobs.settings import Settings
from jobs.spec import JobSpec

MAX_HEADER_BYTES = 16 * 1024**2  # all of a model's safetensors headers: 100k tensors ~ 15 MB


def limits_key(settings: Settings) -> str:
    return f"{settings.key_prefix}:worker-limits"


def advertise(connection: Any, settings: Settings, worker: str, limits: Limits) -> None:
    """Written by a worker with each heartbeat (`connection` may be a pipeline)."""
    connection.hset(limits_key(settings), worker, json.dumps({
        "ram_bytes": limits.ram_bytes, "device_bytes": limits.device_bytes,
        "device_type": limits.device_type, "at": time.time()}))


def withdraw(connection: Any, settings: Settings, worker: str) -> None:
    connection.hdel(limits_key(settings), worker)


def worker_limits(redis: Redis, settings: Settings) -> Limits | None:
    """The most generous limits among workers whose advertisement is fresh; None if none."""
    fresh_after = time.time() - settings.worker_ttl - 15
    best: Limits | None = None
    for raw in redis.hvals(limits_key(settings)):
        entry = json.loads(raw)
        if entry.get("at", 0) < fresh_after:
            continue
        limits = Limits(int(entry["ram_bytes"]), entry.get("device_bytes"),
                        entry.get("device_type", "cpu"))
        if best is None or limits.ram_bytes > best.ram_bytes:
            best = limits
    return best


def _readable_folder(model_path: str) -> Path | None:
    """An HF folder with safetensors for `model_path`, vetted, without converting anything;
    None where there is nothing to read here (GGUF, `.bin`, a bundled model not converted
    yet). A folder that names files outside itself raises `UnsafeModelFile`."""
    if model_path in assets.BUNDLED_MODELS:
        if model_path == assets.SMOLLM2_NAME:
            folder = assets.cache_dir() / "smollm2-135m-hf"
        else:
            try:
                folder = assets.resolve_bundled(model_path)
            except FileNotFoundError:
                return None
    else:
        folder = Path(model_path)
    if folder is None or not folder.is_dir():
        return None
    check_model_folder(folder)
    try:
        shard_map(folder)
    except FileNotFoundError:  # `.bin` weights: transformers reads them in the job
        return None
    return folder


def _spellings(name: str) -> tuple[str, ...]:
    """A stored tensor name and the module name it may load as (checkpoints of a base model
    often store `bert.encoder...` for a module named `encoder...`, and the other way round)."""
    _head, _, rest = name.partition(".")
    return (name, rest) if rest else (name,)


def _chosen(step: LayerSelection, layers: CheckpointLayers) -> list[str]:
    """The layers the step's include/exclude selects, matched with RE2 as the job's
    `select_layers` does (`recipe.patterns`: linear time, however hostile the pattern or long
    the uploaded tensor names); without include, the default (routers never)."""
    include, exclude = list(step.include or []), list(step.exclude or [])
    if include:
        chosen = [n for n in layers.names
                  if any(patterns.search_any(include, s) for s in _spellings(n))]
    else:
        chosen = layers.inside
    return [n for n in chosen if not any(patterns.search_any(exclude, s) for s in _spellings(n))]


def layer_errors(folder: Path, run: PlannedRecipe,
                 device_type: str = "cpu") -> list[tuple[Location, str]]:
    """Steps whose include/exclude leaves no layer of this model, steps whose selection holds
    mixture-of-experts expert matrices their method does not compress (the registry's
    `Method.experts`), and layers whose shape a step cannot take on the workers' device
    (`StepConfig.layer_error`): refused here, naming the method and the layer, never
    skipped."""
    layers = checkpoint_layers(folder, MAX_HEADER_BYTES)
    if not layers.names:
        return []
    errors: list[tuple[Location, str]] = []
    for at, step in zip(run.steps_at, run.recipe.steps, strict=True):
        if not isinstance(step, LayerSelection):
            continue
        chosen = _chosen(step, layers)
        field = "include" if step.include or step.exclude else "method"
        if not chosen and (step.include or step.exclude):
            errors.append(((*at, "include"),
                           "include/exclude: no layer of this model matches, so the step would "
                           f"change nothing (the model has {len(layers.names)} weight matrices, "
                           f"e.g. {layers.names[len(layers.names) // 2][:80]})"))
            continue
        experts = [n for n in chosen if n in layers.experts]
        refused = METHODS[step.method].experts_refusal(
            experts, [n for n in experts if n in layers.fused_experts], step)
        refused = refused or _shape_error(step, chosen, layers, device_type)
        if refused:
            errors.append(((*at, field), refused))
    return errors


def _shape_error(step: LayerSelection, chosen: list[str], layers: CheckpointLayers,
                 device_type: str) -> str | None:
    """The first selected layer the step cannot take, and how many more there are."""
    found = [error for name in chosen if name in layers.shapes
             if (error := step.layer_error(name, *layers.shapes[name], device_type))]
    if not found:
        return None
    more = f" ({len(found) - 1} more layers alike)" if len(found) > 1 else ""
    return found[0] + more


CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _architectures(folder: Path) -> list[str]:
    found = model_config(folder).get("architectures") or []
    return [str(name) for name in found] if isinstance(found, list) else []


def _declared_encoder(folder: Path) -> list[str]:
    """The architectures a model's config declares when none has an LM head (an encoder such
    as BertModel); empty for a causal LM or an undeclared one (the worker checks the loaded
    model)."""
    architectures = _architectures(folder)
    if any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        return []
    return architectures


def model_kind_errors(folder: Path, spec: JobSpec) -> list[tuple[Location, str]]:
    """The parts of a job that need a next-token loss (a step's settings, a goal's
    perplexity ranking), on a model whose config declares no LM head (an encoder such as
    BertModel)."""
    architectures = _declared_encoder(folder)
    if not architectures:
        return []
    return [(at, f"{why}; this model ({', '.join(architectures)}) has no LM head")
            for at, why in spec.needs_causal_lm()]


def memory_errors(folder: Path, run: PlannedRecipe, limits: Limits) -> list[tuple[Location, str]]:
    """The run must fit the most generous worker (the estimate names the step and bytes)."""
    recipe = run.recipe
    estimate = estimate_source(folder, recipe)
    try:
        plan = choose_placement(estimate, recipe, limits, limits.device_type)
    except DoesNotFit as exc:
        return [(run.at, f"{exc}; the bound is the {limits.ram_bytes / GiB:.1f} GiB of RAM of "
                 "the largest worker online: lower calibration samples/seqlen, batch_size or "
                 "seqlen, or run a worker with more memory")]
    if plan.ram_bytes is not None and plan.ram_bytes > limits.ram_bytes:
        return [((*run.at, "placement"), f"placement {plan.mode} needs about "
                 f"{plan.ram_bytes / GiB:.1f} GiB of RAM; the bound is the "
                 f"{limits.ram_bytes / GiB:.1f} GiB of the largest worker online")]
    return []


def admission_errors(model_path: str, spec: JobSpec,
                     limits: Limits | None) -> list[tuple[Location, str]]:
    """(location in the recipe or goal, message) of everything that would fail this job on
    this model: the same checks for a recipe and for the recipes a goal's search will run."""
    folder = _readable_folder(model_path)
    if folder is None:
        return []
    runs = spec.planned()
    try:
        errors = model_kind_errors(folder, spec)
        device_type = limits.device_type if limits is not None else "cpu"
        errors += [error for run in runs for error in layer_errors(folder, run, device_type)]
        if not errors and limits is not None:
            errors = [error for run in runs for error in memory_errors(folder, run, limits)]
    except (UnsafeModelFile, DamagedWeights):  # the model itself is refused: `model`
        raise
    except (OSError, ValueError, KeyError):  # an unreadable header: the worker will say more
        return []
    return errors


class LimitsCache:
    """The workers' advertised limits, re-read at most every `ttl` seconds (submission is the
    hot path); with no worker online, this host's own limits stand in for them."""

    def __init__(self, redis: Redis, settings: Settings, ttl: float = 5.0) -> None:
        self.redis, self.settings, self.ttl = redis, settings, ttl
        self._value: Limits | None = None
        self._read_at = float("-inf")

    def get(self) -> Limits:
        if time.monotonic() - self._read_at > self.ttl:
            from compressors.memory import ram_limit_bytes

            self._value = worker_limits(self.redis, self.settings) or Limits(ram_limit_bytes())
            self._read_at = time.monotonic()
        assert self._value is not None
        return self._value
