"""Job routes: submit, list, inspect, cancel, delete, stream events, download results."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from pydantic.json_schema import SkipJsonSchema

from compressors.recipe.schema import Recipe
from compressors.report.schema import CompressionReport
from jobs import artifacts, model_registry
from jobs import queue as rq_queue
from jobs.admission import LimitsCache, admission_errors, goal_errors
from jobs.connection import execute_recorded
from jobs.policy import recipe_violations
from jobs.records import (
    ACTIVE,
    FINISHED,
    JobLinks,
    JobRecord,
    JobState,
    JobUpdate,
    JobView,
    utcnow,
)
from jobs.settings import Settings
from jobs.store import JobStore
from service import errors, events, quotas
from service.api.deps import (
    AsyncRedisDep,
    PrincipalDep,
    QueueDep,
    RedisDep,
    SettingsDep,
    StoreDep,
    visible_job,
)
from service.api.schemas import FileEntry, FileList, JobPage, JobSubmission
from service.auth import Principal

router = APIRouter(tags=["jobs"])
NOT_FOUND = errors.responses(404)
CONFLICT = errors.responses(404, 409)


def _unprocessable(errors: list[dict[str, Any]] | str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, errors)


def _recipe_error(loc: tuple, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", "recipe", *loc], "msg": msg, "type": kind}


def _goal_error(loc: tuple, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", "goal", *loc], "msg": msg, "type": kind}


def _validated_recipe(settings: Settings, recipe: Recipe) -> Recipe:
    """The recipe (already parsed, as the body's typed field) if this server may run it:
    the file policy and the size bound; otherwise a 422 that names each bad field."""
    violations = recipe_violations(settings, recipe)
    if violations:
        raise _unprocessable([_recipe_error(loc, msg) for loc, msg in violations])
    size = len(json.dumps(recipe.to_json_dict()))
    if size > settings.max_recipe_bytes:
        raise _unprocessable([_recipe_error((), f"the recipe is {size} bytes as JSON; the bound "
                                            f"is {settings.max_recipe_bytes} (MAX_RECIPE_BYTES)")])
    return recipe


def _admitted(limits: LimitsCache, model_path: str, recipe: Recipe) -> None:
    """A 422 for a job this model or no worker could run (see `jobs.admission`)."""
    errors = admission_errors(model_path, recipe, limits.get())
    if errors:
        raise _unprocessable([_recipe_error(loc, msg) for loc, msg in errors])


async def _within_active_bound(settings: Settings, store: JobStore, aredis: Any,
                               owner: str) -> None:
    """429 when the key already has MAX_ACTIVE_JOBS_PER_KEY jobs queued or running."""
    limit = settings.max_active_jobs_per_key
    if await aredis.scard(store.keys.owner_active(owner)) < limit:
        return
    if await asyncio.to_thread(store.active_count, owner) >= limit:  # recount, pruned
        raise quotas.too_many("queued or running jobs", limit, "MAX_ACTIVE_JOBS_PER_KEY")


def _goal_admitted(limits: LimitsCache, model_path: str, goal: dict[str, Any]) -> None:
    """A 422 for a goal this model cannot be searched for, or whose recovery step no worker
    could hold (see `jobs.admission.goal_errors`)."""
    errors = goal_errors(model_path, goal, limits.get())
    if errors:
        raise _unprocessable([_goal_error(loc, msg) for loc, msg in errors])


def _validated_goal(settings: Settings, data: dict[str, Any]) -> dict[str, Any]:
    """The goal with defaults filled in, or a 422 that names each bad field; every text it
    names (sensitivity, calibration, evaluation, recovery) passes the same policy as a
    recipe's, walked the same way."""
    from compressors.search.goal import Goal

    try:
        goal = Goal.model_validate(data)
    except ValidationError as exc:
        raise _unprocessable([
            _goal_error(err["loc"], err["msg"], err["type"])
            for err in exc.errors(include_url=False, include_context=False)]) from None
    violations = recipe_violations(settings, goal)
    if violations:
        raise _unprocessable([_goal_error(loc, msg) for loc, msg in violations])
    return goal.to_json_dict()


def _resolved_model(settings: Settings, owner: str, spec: str) -> str:
    try:
        return model_registry.resolve(settings, owner, spec)
    except model_registry.UnknownModel as exc:
        raise _unprocessable([{"loc": ["body", "model"], "msg": str(exc),
                               "type": "value_error"}]) from None


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
async def submit_job(body: JobSubmission, request: Request, principal: PrincipalDep,
                     settings: SettingsDep,
                     store: StoreDep, queue: QueueDep, redis: RedisDep,
                     aredis: AsyncRedisDep) -> Response:
    """Validate, then write the record and enqueue the RQ job in one Redis transaction.

    This is the hot path: it stays on the event loop (validation and model lookup are
    microseconds; the writes go out through the asyncio client) and answers with the view's
    own JSON, which skips FastAPI's second validation and encoding of the response model.
    """
    goal = _validated_goal(settings, body.goal) if body.goal is not None else None
    recipe = _validated_recipe(settings, body.recipe) if body.recipe is not None else None
    model_path = _resolved_model(settings, principal.name, body.model)
    if recipe is not None:
        _admitted(request.app.state.limits, model_path, recipe)
    elif goal is not None:
        _goal_admitted(request.app.state.limits, model_path, goal)
    await _within_active_bound(settings, store, aredis, principal.name)
    record = JobRecord.submitted(principal.name, body.name, body.model, model_path,
                                 recipe.to_json_dict() if recipe is not None else {},
                                 settings.job_retries + 1, goal=goal)
    recorded = redis.pipeline()
    rq_queue.enqueue(queue, record.id, settings, pipeline=recorded)  # opens the MULTI
    store.create(record, pipeline=recorded)
    await execute_recorded(aredis, recorded)
    view = JobView.of(record)
    return Response(view.model_dump_json(), status_code=status.HTTP_202_ACCEPTED,
                    media_type="application/json", headers={"Location": view.links.self})


@router.get("/jobs")
def list_jobs(
    principal: PrincipalDep, store: StoreDep, settings: SettingsDep,
    state: Annotated[JobState | SkipJsonSchema[None],
                     Query(description="only jobs in this state")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobPage:
    """Newest first; an admin key lists every owner's jobs."""
    limit = min(limit, settings.page_size_max)
    owner = None if principal.admin else principal.name
    records, total = store.list(owner, state, offset, limit)
    return JobPage(jobs=[JobView.of(r) for r in records], total=total, offset=offset,
                   limit=limit)


@router.get("/jobs/{job_id}", responses=NOT_FOUND)
def get_job(job_id: str, principal: PrincipalDep, store: StoreDep) -> JobView:
    return JobView.of(visible_job(store, principal, job_id))


@router.post("/jobs/{job_id}/cancel", responses=CONFLICT)
def cancel_job(job_id: str, principal: PrincipalDep, store: StoreDep,
               redis: RedisDep) -> JobView:
    """Queued: it never starts. Running: its process is killed. Finished: 409."""
    visible_job(store, principal, job_id)
    change = JobUpdate(state=JobState.cancelled, message="cancelled by user",
                       finished_at=utcnow())
    updated = store.update(job_id, change, if_state=ACTIVE)
    if updated is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "job already finished")
    rq_queue.cancel(redis, job_id)
    return JobView.of(updated)


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
def delete_job(job_id: str, principal: PrincipalDep, store: StoreDep, redis: RedisDep,
               settings: SettingsDep) -> Response:
    """Finished jobs only: removes the record, the RQ data and the artifact folder."""
    record = visible_job(store, principal, job_id)
    if record.state not in FINISHED:
        raise HTTPException(status.HTTP_409_CONFLICT, "cancel the job before deleting it")
    artifacts.remove(artifacts.artifact_dir(settings, job_id))
    rq_queue.delete_rq_job(redis, job_id)
    store.delete(record)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={**NOT_FOUND, 200: {"content": {"text/event-stream": {}},
                             "description": "`job` events whose data is a JobView"}})
async def job_events(job_id: str, request: Request, principal: PrincipalDep,
                     store: StoreDep) -> StreamingResponse:
    """SSE: the current record, then every change, until the job ends."""
    visible_job(store, principal, job_id)

    def initial() -> list[JobRecord]:
        record = store.get(job_id)
        return [record] if record else []

    return await events.events_response(request, principal.name, lambda r: r.id == job_id, initial,
                                 until_finished=True)



def _published(settings: Settings, store: JobStore, principal: Principal, job_id: str) -> Path:
    record = visible_job(store, principal, job_id)
    folder = artifacts.artifact_dir(settings, job_id)
    if record.state != JobState.succeeded or artifacts.read_manifest(folder) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"job {job_id} has no artifact (state: {record.state})")
    return folder


@router.get("/jobs/{job_id}/report", response_class=FileResponse,
            responses={**NOT_FOUND, 200: {"model": CompressionReport,
                             "description": "the job's compression_report.json, as written"}})
def job_report(job_id: str, principal: PrincipalDep, store: StoreDep,
               settings: SettingsDep) -> FileResponse:
    folder = _published(settings, store, principal, job_id)
    return FileResponse(folder / artifacts.REPORT_FILE, media_type="application/json")


@router.get("/jobs/{job_id}/artifact", response_class=StreamingResponse,
            responses={**NOT_FOUND, 200: {"content": {"application/x-tar": {}},
                             "description": "the checkpoint folder as an uncompressed tar"}})
def job_artifact(job_id: str, principal: PrincipalDep, store: StoreDep,
                 settings: SettingsDep) -> StreamingResponse:
    """The checkpoint folder as an uncompressed .tar, streamed file by file."""
    folder = _published(settings, store, principal, job_id)
    filename = f"{job_id}.tar"
    return StreamingResponse(
        artifacts.stream_tar(folder, job_id), media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/jobs/{job_id}/files", responses=NOT_FOUND)
def job_files(job_id: str, principal: PrincipalDep, store: StoreDep,
              settings: SettingsDep) -> FileList:
    folder = _published(settings, store, principal, job_id)
    base = JobLinks.for_job(job_id).files
    return FileList(files=[FileEntry(**f.model_dump(), url=f"{base}/{f.path}")
                           for f in artifacts.list_files(folder)])


@router.get("/jobs/{job_id}/files/{path:path}", response_class=FileResponse,
            responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}},
                                          "description": "one file of the artifact"}})
def job_file(job_id: str, path: str, principal: PrincipalDep, store: StoreDep,
             settings: SettingsDep) -> FileResponse:
    folder = _published(settings, store, principal, job_id)
    target = artifacts.safe_member(folder, path)
    if target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {path!r} in this artifact")
    return FileResponse(target, filename=target.name)
