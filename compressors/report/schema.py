"""The compression report as typed records (torch-free): what `compress` returns, what
`compression_report.json` holds, what the worker summarises and the dashboard draws.

The top level is fixed here. Each method's own section (`retraining`, `lowrank`,
`quantization`, ...) is a top-level key named by the registry (`Method.section`): the method
declares it as a `ReportSection` in its own folder, and the pipeline writes its JSON under
that key, so adding a method never touches this file; `section(name)` reads one back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from compressors.report.search import SearchSection


class ReportSection(BaseModel):
    """The base of a method's own report section: every key typed and described.

    A field that defaults to None is a key the step writes only when it measured it (a
    perplexity an encoder has none of): the JSON leaves it out while it is None, so
    `compression_report.json` holds the keys it always has. A key that is always written,
    even as null, is a field without a default.
    """

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _leave_out_unmeasured(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if not field.is_required() and field.default is None and data.get(name) is None:
                data.pop(name, None)
        return data


class ModelMetrics(BaseModel):
    """One side of the before/after comparison."""

    model_config = ConfigDict(extra="forbid")

    perplexity: float | None = Field(None, description="on the evaluation windows; null: skipped")
    parameters: int = Field(description="logical parameters (tied tensors once)")
    nonzero_parameters: int
    footprint_bytes: int = Field(description="bytes the weights take in memory")
    size_bytes: int | None = Field(None, description="bytes of weight files on disk")
    latency_ms: float | None = Field(None, description="median forward pass, batch 1")
    seqlen: int | None = Field(None, description="tokens of the latency measurement")
    tokens_per_second: float | None = None


class BeforeAfter(BaseModel):
    before: ModelMetrics
    after: ModelMetrics


class SparsityReport(BaseModel):
    total: float = Field(description="zeros over the pruned (or, if none, block) layers")
    model: float = Field(description="zeros over every parameter of the model")
    per_layer: dict[str, float] = Field(default_factory=dict)


class KindTotals(BaseModel):
    """The weight matrices of one layer kind inside the transformer blocks (attention, mlp,
    experts, shared_experts, routers), counted on the published model: its zeros in the
    weights a loader gets back, its bytes in the saved files."""

    layers: int
    parameters: int = Field(description="logical weights: a quantized or factorized matrix "
                            "counts as the matrix it stands for")
    zeros: int
    sparsity: float = Field(description="zeros / parameters")
    stored_bytes: int = Field(description="bytes its weight tensors take in the published "
                              "files (values or codes, scales, zero points, factors; biases "
                              "not included)")
    bits_per_weight: float = Field(description="8 * stored_bytes / parameters")


class StepReport(BaseModel):
    """One step's entry; method-specific details sit beside the fixed fields."""

    model_config = ConfigDict(extra="allow")

    method: str
    seconds: float
    config: dict[str, Any]


class Series(BaseModel):
    name: str
    points: list[tuple[float | str, float]]


class Chart(BaseModel):
    """A chart any client can draw without knowing the method that made it."""

    id: str
    title: str
    kind: Literal["line", "bar"]
    x_label: str
    y_label: str
    log_y: bool = False
    series: list[Series]
    reference: float | None = Field(None, description="a horizontal reference line")


class CheckpointInfo(BaseModel):
    """Said by the checkpoint format at save time."""

    format: str
    needs_compressors_load: bool
    how_to_load: str
    how_to_serve: str | None = Field(
        None, description="how to serve it with an inference engine (e.g. vLLM), where the "
        "format is one they read; `{path}` stands for the checkpoint folder")


class StepMemory(BaseModel):
    """The estimate of one step's peak, made before the run."""

    method: str
    ram_bytes: int
    device_bytes: int


class MemoryReport(BaseModel):
    """How the model was held, and the memory estimate beside the measured peak."""

    placement: Literal["in_memory", "onloaded", "streamed"]
    dtype: str
    estimated_peak_bytes: int | None = Field(None, description="RAM, for the chosen placement")
    estimated_device_bytes: int | None = None
    limit_bytes: int | None = Field(None, description="what this process was allowed")
    measured_peak_bytes: int
    steps: list[StepMemory] = Field(default_factory=list)


class CompressionReport(BaseModel):
    model_config = ConfigDict(extra="allow")  # the methods' sections

    base_model: str
    recipe: dict[str, Any]
    steps: list[StepReport]
    metrics: BeforeAfter
    sparsity: SparsityReport
    charts: list[Chart] = Field(default_factory=list)
    checkpoint: CheckpointInfo
    memory: MemoryReport | None = None
    peak_memory_bytes: int
    peak_cuda_memory_bytes: int | None = None
    seconds_total: float
    device: str
    versions: dict[str, str]
    search: SearchSection | None = Field(None, description="a goal job's search")
    layer_kinds: dict[str, KindTotals] = Field(
        default_factory=dict, description="every weight matrix inside the transformer blocks, "
        "split by layer kind; sparsity from the published weights, bits from the saved files")

    def section(self, name: str) -> dict[str, Any] | None:
        """A method's section (e.g. "retraining"), or None if no step wrote it."""
        return (self.model_extra or {}).get(name)

    def to_json(self) -> dict[str, Any]:
        """Exactly what `compression_report.json` holds (a recipe job's has no `search`)."""
        return self.model_dump(mode="json", exclude={"search"} if self.search is None else None)
