"""What a method declares about itself: `Method`, the facts its settings do not change.

Each method's folder declares its `Method` at the bottom of its torch-free `config.py`, beside
the config class (whose hooks, `recipe.step.StepConfig`, answer the questions that depend on
its settings); the registry (`methods/__init__.py`) only collects them. Everything a method
brings beyond its config (its step function, checkpoint formats, layer kinds, the functions
of its search space) is named as "module:attribute" and imported on first use, so listing
methods and validating recipes (the API) never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from compressors.recipe.step import MemoryNeeds, StepConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from compressors.engine.context import StepContext, StepResult

STAGES = ("compressing", "retraining", "quantizing")
ExpertsSupport = Literal["handled", "per_expert_checkpoint", "refused"]


def import_object(reference: str) -> Any:
    """The object a "module:attribute" reference names."""
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class SearchSpace:
    """How the goal-driven search may use a method on one layer (`compressors.search`).

    Declared in the method's `config.py` (`Method.search`); the functions it names live in
    the method's own folder (`methods/<name>/search.py`), so the search reads only the
    registry and names no method.

    - `levels`: what a layer can be turned into besides staying dense ("int8", "s0.5", ...).
    - `mixed_levels`: one recipe step can give different layers different levels; when False
      (one `bits` per step) each level is its own family and a layer chooses between that
      level and dense.
    - `perturb`: "module:function" `(weight, level, input_sq_norms) -> weight`, the method's
      cheap stand-in on one `[out, in]` float32 weight for the sensitivity pass (tensor math;
      `input_sq_norms` is None unless `needs_input_norms`).
    - `step`: "module:function" `(choices) -> StepConfig | None`, an allocation (layer name ->
      level or "dense") written back as the method's own config, an ordinary recipe step
      (None: the allocation changes no layer); `recipe.per_layer` holds what writers share.
    - `layer_bytes`: "module:function" `(level, rows, cols, dtype) -> float`, the stored
      bytes of one `[rows, cols]` weight at a level (plain arithmetic, imported by the search
      only). None: the levels keep the dense dtype's bytes (pruned zeros are stored), so the
      method saves no bytes and a size, perplexity or latency budget cannot use it.
    - `needs_input_norms`: `perturb` uses the layer's input norms (Wanda-style scores).
    - `note`: what a user should know about the approximation.
    """

    levels: tuple[str, ...]
    mixed_levels: bool
    perturb: str
    step: str
    layer_bytes: str | None = None
    needs_input_norms: bool = False
    note: str = ""

    @property
    def saves_bytes(self) -> bool:
        """The stored checkpoint gets smaller (the only way the search can use a method)."""
        return self.layer_bytes is not None


@dataclass(frozen=True)
class Method:
    """A method and its facts.

    - `stage`: the job stage shown while it runs (one of `STAGES`).
    - `accepts`: the forms of weights it can work on ("dense", "factorized", "quantized");
      each config's `weights_after()` says what form it leaves. The recipe checks the chain.
    - `leaves_hint`: what to tell a user whose next step cannot take what this one leaves.
    - `section`: the top-level report key its step writes (None: only its step entry).
    - `charts`: ids of the charts its step may add to the report (the dashboard draws any).
    - `formats`, `layer_kinds`: "module:attribute" of the checkpoint formats and layer kinds it
      brings (`io.formats`, `engine.layers` collect them from the registry).
    - `uses_masks`: it must preserve the keep-masks of earlier pruning steps exactly, so they
      record them (`StepContext.masks`).
    - `blockwise`: it touches the model only through `engine.sequential` (one block at a time),
      so it runs onloaded and streamed; other steps need the whole model at once.
    - `memory`: its worst case besides the model, for the memory estimate (a config narrows
      it with `StepConfig.memory_needs`).
    - `experts`: what it does with the expert matrices of mixture-of-experts models:
      "handled" (each expert's matrix is a layer of its own), "per_expert_checkpoint" (only
      where transformers saves experts one by one: its format stores them so), or
      "refused" (a selection that includes them is a 422 at submission, naming the method
      and the layer kind; never a silent skip).
    - `search`: how the goal-driven search may use it; None: the search does not.
    """

    name: str
    config: type[StepConfig]
    summary: str
    stage: str = "compressing"
    needs_calibration: bool = False
    accepts: frozenset[str] = frozenset({"dense"})
    leaves_hint: str | None = None
    section: str | None = None
    charts: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    layer_kinds: tuple[str, ...] = ()
    uses_masks: bool = False
    blockwise: bool = False
    memory: MemoryNeeds = field(default_factory=MemoryNeeds)
    experts: ExpertsSupport = "refused"
    search: SearchSpace | None = None

    def experts_refusal(self, experts: list[str], fused: list[str],
                        step: StepConfig | None = None) -> str | None:
        """Why this method (with `step`'s settings) refuses a selection holding these expert
        matrices (`fused`: those a checkpoint stores inside 3-D tensors), or None: the one
        message for the 422 at submission and for the job's own check."""
        if not experts:
            return None
        setting = step.experts_error() if step is not None else None
        if setting is not None:
            return self._refusal(experts, setting)
        if self.experts == "handled":
            return None
        if self.experts == "per_expert_checkpoint" and not fused:
            return None
        why = ("are stored fused (3-D) by this checkpoint, which a packed "
               f"{self.name} checkpoint cannot hold" if self.experts == "per_expert_checkpoint"
               else f"are not compressed by {self.name}")
        return self._refusal(fused or experts,
                             f"{why}; add exclude: ['experts'] or use a method that handles "
                             "experts")

    def _refusal(self, experts: list[str], why: str) -> str:
        return (f"{self.name}: {len(experts)} selected expert matrices (layer kind: experts, "
                f"e.g. {experts[0][:60]}) {why}")

    @property
    def step(self) -> str:
        return f"compressors.methods.{self.name}.step:run"

    def run(self, model: nn.Module, config: Any, context: StepContext) -> StepResult:
        return import_object(self.step)(model, config, context)
