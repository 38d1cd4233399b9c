"""Job routes: submit, list, inspect, cancel, delete, stream events, download results."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from pydantic.json_schema import SkipJsonSchema

from compressors.report.schema import CompressionReport
from jobs import artifacts
from jobs import queue as rq_queue
from jobs.connection import execute_recorded
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
from jobs.submission import Accepted, Refused, check_submission
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
from service.submission_checks import SubmissionChecks

router = APIRouter(tags=["jobs"])
NOT_FOUND = errors.responses(404)
CONFLICT = errors.responses(404, 409)


async def _within_active_bound(settings: Settings, store: JobStore, aredis: Any,
                               owner: str) -> None:
    """429 when the key already has MAX_ACTIVE_JOBS_PER_KEY jobs queued or running."""
    limit = settings.max_active_jobs_per_key
    if await aredis.scard(store.keys.owner_active(owner)) < limit:
        return
    if await asyncio.to_thread(store.active_count, owner) >= limit:  # recount, pruned
        raise quotas.too_many("queued or running jobs", limit, "MAX_ACTIVE_JOBS_PER_KEY")


async def _checked(request: Request, settings: Settings, owner: str,
                   body: JobSubmission) -> Accepted:
    """The submission's file checks (`jobs.submission`), in a child process with a deadline;
    a refusal is a 422 naming each field."""
    limits = await asyncio.to_thread(request.app.state.limits.get)
    checks: SubmissionChecks = request.app.state.submission_checks
    answer = await checks.run(check_submission, settings, owner, body.model, body.spec,
                              limits)
    if isinstance(answer, Refused):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, answer.errors)
    return answer


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
async def submit_job(body: JobSubmission, request: Request, principal: PrincipalDep,
                     settings: SettingsDep,
                     store: StoreDep, queue: QueueDep, redis: RedisDep,
                     aredis: AsyncRedisDep) -> Response:
    """Validate, then write the record and enqueue the RQ job in one Redis transaction.

    This is the hot path. The checks that read files (a hostile model folder may name a
    pipe, a large model's headers are megabytes of JSON) run in a child process with a
    deadline, never on the event loop; the writes go out through the asyncio client, and the
    answer is the view's own JSON, which skips FastAPI's second validation and encoding of
    the response model.
    """
    accepted = await _checked(request, settings, principal.name, body)
    await _within_active_bound(settings, store, aredis, principal.name)
    record = JobRecord.submitted(principal.name, body.name, body.model, accepted.model_path,
                                 accepted.recipe, settings.job_retries + 1,
                                 goal=accepted.goal)
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
