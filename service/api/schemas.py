"""The API's own request and response bodies (the shared job shapes live in `jobs.records`).

Every route declares one of these, or a `jobs` model, as its response model, so the OpenAPI
document at /openapi.json describes exactly what the dashboard and scripts receive.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressors.recipe.schema import Recipe
from compressors.safe_strings import SafeLabel, SafeName
from compressors.search.goal import Goal
from jobs.artifacts import ArtifactFile
from jobs.model_registry import ModelEntry
from jobs.queue import WorkerInfo
from jobs.records import JobView
from jobs.spec import JobSpec


class JobSubmission(BaseModel):
    """What a client posts; the recipe or goal is validated by the library's own pydantic
    models, so a bad field is a 422 naming it (`["body", "goal", "recovery", "text"]`).

    `model` names a registry entry or a server path, so it follows the name rules of
    `compressors.safe_strings` (no control, bidi or surrogate character: it reaches `stat`,
    the logs and every admin's dashboard); `name` is a label people write and read, so it
    keeps tabs, line breaks and bidi characters and refuses only the other controls and
    surrogates.
    """

    model_config = ConfigDict(extra="forbid")

    model: SafeName = Field(min_length=1, max_length=4096,
                            description="registry name (GET /models) or allowed server path")
    recipe: Recipe | None = Field(
        None, description="steps (each one method's parameters, see /methods), calibration "
        "and evaluation settings")
    goal: Goal | None = Field(
        None, description="instead of a recipe: what to minimize under which budgets; the "
        "worker searches for the recipe")
    name: SafeLabel = Field("", max_length=200, description="a label for people")

    @model_validator(mode="after")
    def _recipe_or_goal(self) -> JobSubmission:
        if (self.recipe is None) == (self.goal is None):
            raise ValueError("recipe: give exactly one of recipe or goal")
        return self

    @property
    def spec(self) -> JobSpec:
        """The recipe or the goal, whichever was given: the checks take either."""
        spec = self.recipe if self.recipe is not None else self.goal
        assert spec is not None  # `_recipe_or_goal` holds exactly one
        return spec


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    jobs: list[JobView]
    total: int = Field(description="jobs matching the filter, over all pages")
    offset: int
    limit: int


class FileEntry(ArtifactFile):
    url: str = Field(description="where to download this one file")


class FileList(BaseModel):
    files: list[FileEntry]


class Caller(BaseModel):
    """Who the presented key belongs to."""

    name: str
    admin: bool


class WorkersStatus(BaseModel):
    """Admins: every worker as RQ registers it. Other keys: anonymous entries, with a current
    job only where it is the caller's own."""

    workers: list[WorkerInfo]
    online: int = Field(description="workers registered on the queue")
    queue_depth: int = Field(description="jobs waiting for a worker")


class MethodInfo(BaseModel):
    """One compression method: what it does, its job stage, its parameters' JSON schema.

    Extra facts the library's registry adds later pass through (`extra="allow"`) until they are
    declared here.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    summary: str
    stage: str
    accepts: list[str] = Field(description="weight forms it works on: dense, factorized, ...")
    section: str | None = Field(None, description="the report key its step writes")
    charts: list[str] = Field(default_factory=list, description="ids of charts it may add")
    json_schema: dict[str, Any] = Field(alias="schema")


class MethodList(BaseModel):
    methods: dict[str, MethodInfo] = Field(description="by method name, in registry order")


class ModelList(BaseModel):
    models: list[ModelEntry]


class UploadedModel(BaseModel):
    name: str
    kind: str = "uploaded"
    owner: str
    archive_bytes: int = Field(description="size of the archive received")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready, no workers, or unavailable")
    redis: str
    workers: int | None = Field(None, description="workers with a fresh heartbeat")


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200)
