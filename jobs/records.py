"""Typed job records: what the store keeps, what clients see, and the metrics summary.

Torch-free pydantic models shared by the API (its response models, so OpenAPI documents them),
the worker (which writes them) and the dashboard (which reads their JSON). Reading is lenient
(`extra="ignore"`: a record written by an older version still loads); a partial update
(`JobUpdate`) is strict, so a misspelt field fails where it is written instead of vanishing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from compressors.recipe.schema import parse_recipe
from compressors.report.schema import CompressionReport, ModelMetrics
from compressors.search.goal import Goal
from jobs.spec import JobSpec

API_PREFIX = "/api/v1"  # the versioned API root; the links of a `JobView` point under it


class JobState(StrEnum):
    """`queued → running → succeeded | failed | cancelled` (a lost worker: back to queued)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ErrorKind(StrEnum):
    """Why a job failed, as a machine-readable kind the dashboard turns into plain words.

    Set by the worker from the exception's type (`worker.failures.classify`), never from its
    message, so a message that merely mentions "hub" or "not found" cannot mislead the reader;
    `error` keeps the exception's own text beside it.
    """

    out_of_memory = "out_of_memory"  # the device or host ran out, or no placement fits
    timeout = "timeout"  # ran past JOB_TIMEOUT and was stopped
    worker_lost = "worker_lost"  # the job's process died and the retries were used up
    damaged_weights = "damaged_weights"  # weight files truncated, overwritten, not what named
    unsupported_model = "unsupported_model"  # transformers cannot build this model_type
    not_found = "not_found"  # the model or a file the job names does not exist here
    offline = "offline"  # something tried the network (a model hub): this service has none
    refused = "refused"  # the service's policy: a forbidden path, code in a pickle
    invalid_recipe = "invalid_recipe"  # the recipe or goal does not fit this model
    goal_not_met = "goal_not_met"  # a goal job's search verified no candidate within budget
    numerical = "numerical"  # a method's math broke down (an indefinite Hessian)
    internal = "internal"  # anything else: the `error` text is all there is


ACTIVE = (JobState.queued, JobState.running)
FINISHED = (JobState.succeeded, JobState.failed, JobState.cancelled)

# The library's progress stages (compressors.progress.STAGES; a test keeps the two equal).
JobStage = Literal["loading", "calibrating", "compressing", "retraining", "quantizing",
                   "evaluating", "saving"]
Timestamp = Annotated[str, Field(description="ISO 8601 UTC, millisecond precision, `Z` suffix",
                                 examples=["2025-01-31T12:00:00.000Z"])]


def utcnow() -> str:
    """ISO 8601 UTC with a `Z`, millisecond precision: sortable and unambiguous."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Measurements(BaseModel):
    """One side (before or after) of a job's scalar metrics, as the report measured them.

    A lenient copy of the report's `ModelMetrics` rather than that type itself: records stay in
    Redis across library versions, and one written before a change must still load.
    """

    model_config = ConfigDict(extra="ignore")

    perplexity: float | None = Field(None, description="on the recipe's evaluation text")
    parameters: int | None = None
    nonzero_parameters: int | None = None
    footprint_bytes: int | None = Field(None, description="in-memory size of the weights")
    size_bytes: int | None = Field(None, description="size of the checkpoint on disk")
    latency_ms: float | None = Field(None, description="median forward pass")
    tokens_per_second: float | None = None

    @classmethod
    def of(cls, metrics: ModelMetrics) -> Self:
        return cls.model_validate(metrics, from_attributes=True)


class JobMetrics(BaseModel):
    """What a job list shows of a finished job: derived from its report, never edited."""

    model_config = ConfigDict(extra="ignore")

    before: Measurements
    after: Measurements
    sparsity: float | None = Field(None, description="zeros over the pruned layers")
    model_sparsity: float | None = Field(None, description="zeros over every parameter")
    seconds_total: float | None = None

    @classmethod
    def from_report(cls, report: CompressionReport | Mapping[str, Any]) -> Self:
        """The summary of a report: what `compress` returned, or its JSON read from disk."""
        if isinstance(report, Mapping):
            report = CompressionReport.model_validate(report)
        return cls(
            before=Measurements.of(report.metrics.before),
            after=Measurements.of(report.metrics.after),
            sparsity=report.sparsity.total, model_sparsity=report.sparsity.model,
            seconds_total=report.seconds_total,
        )


class HistoryEntry(BaseModel):
    """One change of a job's state, stage or message, as the store recorded it."""

    model_config = ConfigDict(extra="ignore")

    at: Timestamp
    state: JobState
    stage: JobStage | None = None
    message: str = ""
    attempt: int | None = None


class JobFields(BaseModel):
    """The fields of a job that its owner may see, in the order clients get them."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str = Field("", description="a label for people")
    owner: str = Field(description="name of the API key that submitted the job")
    model: str = Field(description="as submitted: registry name or allowed server path")
    recipe: dict[str, Any] = Field(description="the validated recipe, defaults filled in; "
                                   "for a goal job, empty until the search has chosen one")
    goal: Goal | None = Field(
        None, description="a goal job: the validated goal the worker searches a recipe for")
    methods: list[str] = Field(description="the recipe's step methods, in order (a goal job: "
                               "the methods its search may use, then its recovery step's)")
    state: JobState = JobState.queued
    stage: JobStage | None = Field(None, description="while running: what the job is doing")
    progress: float = Field(0.0, ge=0.0, le=1.0)
    message: str = ""
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    updated_at: Timestamp
    attempt: int = Field(0, ge=0, description="attempts started (a lost worker means a retry)")
    max_attempts: int = Field(ge=1)
    error: str | None = Field(None, description="`ExceptionType: message` of a failed job")
    error_kind: ErrorKind | None = Field(
        None, description="a failed job: why, as a kind to show in plain words (the `error` "
        "text says the details); absent on records written before the field existed")
    metrics: JobMetrics | None = Field(None, description="set when the job succeeded")
    artifact: bool = Field(False, description="a published checkpoint exists")
    worker: str | None = Field(None, description="the worker running or last running it")
    history: list[HistoryEntry] = Field(
        default_factory=list, description="state, stage and message changes, oldest first "
        "(the last 60), so a page opened late still shows how the job got here")

    @field_validator("error_kind", mode="before")
    @classmethod
    def _unknown_kind_is_internal(cls, value: Any) -> Any:
        """A kind this version does not know (a newer worker wrote it) reads as `internal`
        instead of making the whole record unreadable."""
        if isinstance(value, str) and value not in ErrorKind.__members__:
            return ErrorKind.internal
        return value

    @field_validator("goal", mode="wrap")
    @classmethod
    def _goal_of_another_version(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A stored goal this version no longer reads (a field renamed since) shows as none
        instead of making the whole record unreadable; its job, if it still runs, fails
        naming the empty recipe."""
        try:
            return handler(value)
        except ValidationError:
            return None


class JobRecord(JobFields):
    """The stored record: the public fields plus the resolved model path (server-internal)."""

    model_path: str | None = Field(None, description="what the worker loads; never shown")

    @classmethod
    def submitted(cls, owner: str, name: str, model: str, model_path: str,
                  recipe: dict[str, Any], max_attempts: int, goal: Goal | None = None) -> Self:
        """The record of a job just accepted: queued, with a fresh id."""
        now = utcnow()
        methods = (goal.methods_used if goal is not None
                   else [s["method"] for s in recipe.get("steps", [])])
        return cls(
            id=uuid.uuid4().hex, name=name, owner=owner, model=model, model_path=model_path,
            recipe=recipe, goal=goal, methods=methods,
            message="queued", created_at=now, updated_at=now, max_attempts=max_attempts,
            history=[HistoryEntry(at=now, state=JobState.queued, message="queued", attempt=0)],
        )

    def spec(self) -> JobSpec:
        """What the job runs, typed: its goal, or its recipe validated again (the library may
        have changed since submission; a recipe it no longer accepts fails the job)."""
        return self.goal if self.goal is not None else parse_recipe(self.recipe)


class JobLinks(BaseModel):
    """Where a job's resources live in the API."""

    self: str
    events: str
    cancel: str
    report: str
    artifact: str
    files: str

    @classmethod
    def for_job(cls, job_id: str) -> Self:
        base = f"{API_PREFIX}/jobs/{job_id}"
        return cls(self=base, events=f"{base}/events", cancel=f"{base}/cancel",
                   report=f"{base}/report", artifact=f"{base}/artifact", files=f"{base}/files")


class JobView(JobFields):
    """A job as its owner sees it: no server paths, and links to its resources."""

    links: JobLinks

    @classmethod
    def of(cls, record: JobRecord) -> Self:
        # Field objects are passed through, not re-validated (pydantic keeps model instances).
        shown = {name: getattr(record, name) for name in JobFields.model_fields}
        return cls(**shown, links=JobLinks.for_job(record.id))


class JobUpdate(BaseModel):
    """A partial change to a record: only the fields given are written (and `updated_at`)."""

    model_config = ConfigDict(extra="forbid")

    state: JobState | None = None
    stage: JobStage | None = None
    progress: float | None = Field(None, ge=0.0, le=1.0)
    message: str | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    attempt: int | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    metrics: JobMetrics | None = None
    artifact: bool | None = None
    worker: str | None = None
    recipe: dict[str, Any] | None = Field(
        None, description="the recipe the job ran, as its report says (a goal job: the one its "
        "search chose)")

    def fields(self) -> dict[str, Any]:
        """The JSON values to write, field by field, stamped with the time of the change."""
        return {**self.model_dump(mode="json", exclude_unset=True), "updated_at": utcnow()}
