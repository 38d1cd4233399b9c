"""Job routes: submit, list, inspect, cancel, delete, stream events, download results."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import artifacts, events
from service import models as model_registry
from service import queue as rq_queue
from service.api.deps import (
    PrincipalDep,
    QueueDep,
    RedisDep,
    SettingsDep,
    StoreDep,
    visible_job,
)
from service.connection import async_redis, execute_recorded
from service.jobs import ACTIVE, FIELDS, FINISHED, STATES, new_job_id, new_record
from service.settings import Settings

router = APIRouter(tags=["jobs"])


class JobSubmission(BaseModel):
    """What a client posts; the recipe is validated by the library's own pydantic models."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=4096,
                       description="registry name (GET /models) or allowed server path")
    recipe: dict[str, Any] = Field(description="steps + calibration/evaluation, see /methods")
    name: str = Field("", max_length=200, description="a label for people")


def links(job_id: str) -> dict[str, str]:
    base = f"/api/v1/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel",
            "report": f"{base}/report", "artifact": f"{base}/artifact", "files": f"{base}/files"}


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as clients see it: server paths hidden, links added."""
    shown = {k: record.get(k) for k in FIELDS}
    shown["links"] = links(record["id"])
    return shown


def _recipe_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ["body", "recipe", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False)]


def _validate_recipe(settings: Settings, data: dict[str, Any]) -> dict[str, Any]:
    from compressors.recipe import parse_recipe

    try:
        recipe = parse_recipe(data)
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, _recipe_errors(exc)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    for section in ("calibration", "evaluation"):
        text = getattr(recipe, section).text
        if not text.startswith("sotu:"):
            _check_text_path(settings, section, text)
    return recipe.to_json_dict()


def _check_text_path(settings: Settings, section: str, text: str) -> None:
    """A recipe may name a text file only inside an allowed root (no reading /etc/...)."""
    from pathlib import Path

    real = Path(text).resolve()
    if not any(real.is_relative_to(root) for root in settings.allowed_model_roots()):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "recipe", section, "text"], "type": "value_error",
              "msg": "text must be a built-in corpus (sotu:YYYY-YYYY) or a file under an "
                     "allowed server folder"}],
        )


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=None)
async def submit_job(body: JobSubmission, request: Request, principal: PrincipalDep,
                     settings: SettingsDep, store: StoreDep, queue: QueueDep,
                     redis: RedisDep) -> JSONResponse:
    """Validate, then write the record and enqueue the RQ job in one Redis transaction.

    This is the hot path: it stays on the event loop (validation and model lookup are
    microseconds; the writes go out through the asyncio client) and answers with a plain
    JSONResponse, which skips FastAPI's re-encoding of the record.
    """
    recipe = _validate_recipe(settings, body.recipe)
    try:
        model_path = model_registry.resolve(settings, principal.name, body.model)
    except model_registry.UnknownModel as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "model"], "msg": str(exc), "type": "value_error"}],
        ) from None
    job_id = new_job_id()
    record = new_record(job_id, principal.name, body.name, body.model, recipe,
                        settings.job_retries + 1)
    record["model_path"] = model_path
    recorded = redis.pipeline()
    rq_queue.enqueue(queue, job_id, settings, pipeline=recorded)  # opens the MULTI
    store.create(record, pipeline=recorded)
    await execute_recorded(async_redis(request.app.state), recorded)
    return JSONResponse(public(record), status_code=status.HTTP_202_ACCEPTED,
                        headers={"Location": links(job_id)["self"]})


@router.get("/jobs")
def list_jobs(
    principal: PrincipalDep, store: StoreDep, settings: SettingsDep,
    state: Annotated[str | None, Query(description="one of " + ", ".join(STATES))] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Newest first; an admin key lists every owner's jobs."""
    if state is not None and state not in STATES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"state must be one of {', '.join(STATES)}")
    limit = min(limit, settings.page_size_max)
    owner = None if principal.admin else principal.name
    records, total = store.list(owner, state, offset, limit)
    return {"jobs": [public(r) for r in records], "total": total, "offset": offset,
            "limit": limit}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, principal: PrincipalDep, store: StoreDep) -> dict[str, Any]:
    return public(visible_job(store, principal, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, principal: PrincipalDep, store: StoreDep,
               redis: RedisDep) -> dict[str, Any]:
    """Queued: it never starts. Running: its process is killed. Finished: 409."""
    from service.jobs import utcnow

    visible_job(store, principal, job_id)
    updated = store.update(job_id, {"state": "cancelled", "message": "cancelled by user",
                                    "finished_at": utcnow(), "updated_at": utcnow()},
                           if_state=ACTIVE)
    if updated is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "job already finished")
    rq_queue.cancel(redis, job_id)
    return public(updated)


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: str, principal: PrincipalDep, store: StoreDep, redis: RedisDep,
               settings: SettingsDep) -> Response:
    """Finished jobs only: removes the record, the RQ data and the artifact folder."""
    record = visible_job(store, principal, job_id)
    if record["state"] not in FINISHED:
        raise HTTPException(status.HTTP_409_CONFLICT, "cancel the job before deleting it")
    artifacts.remove(artifacts.artifact_dir(settings, job_id))
    rq_queue.delete_rq_job(redis, job_id)
    store.delete(record)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request, principal: PrincipalDep) -> StreamingResponse:
    """SSE: the current record, then every change, until the job ends."""
    store = request.app.state.store
    visible_job(store, principal, job_id)

    def initial() -> list[dict[str, Any]]:
        record = store.get(job_id)
        return [record] if record else []

    stream = events.job_updates(
        async_redis(request.app.state), store.keys.events(), lambda r: r.get("id") == job_id,
        initial, request.is_disconnected, until_finished=True, decorate=public,
    )
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _published(settings: Settings, store: Any, principal: Any, job_id: str):
    record = visible_job(store, principal, job_id)
    folder = artifacts.artifact_dir(settings, job_id)
    if record["state"] != "succeeded" or artifacts.manifest(folder) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"job {job_id} has no artifact (state: {record['state']})")
    return folder


@router.get("/jobs/{job_id}/report")
def job_report(job_id: str, principal: PrincipalDep, store: StoreDep,
               settings: SettingsDep) -> FileResponse:
    folder = _published(settings, store, principal, job_id)
    return FileResponse(folder / artifacts.REPORT, media_type="application/json")


@router.get("/jobs/{job_id}/artifact")
def job_artifact(job_id: str, principal: PrincipalDep, store: StoreDep,
                 settings: SettingsDep) -> StreamingResponse:
    """The checkpoint folder as an uncompressed .tar, streamed file by file."""
    folder = _published(settings, store, principal, job_id)
    filename = f"{job_id}.tar"
    return StreamingResponse(
        artifacts.stream_tar(folder, job_id), media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/jobs/{job_id}/files")
def job_files(job_id: str, principal: PrincipalDep, store: StoreDep,
              settings: SettingsDep) -> dict[str, Any]:
    folder = _published(settings, store, principal, job_id)
    base = links(job_id)["files"]
    files = [{**f, "url": f"{base}/{f['path']}"} for f in artifacts.list_files(folder)]
    return {"files": files}


@router.get("/jobs/{job_id}/files/{path:path}")
def job_file(job_id: str, path: str, principal: PrincipalDep, store: StoreDep,
             settings: SettingsDep) -> FileResponse:
    folder = _published(settings, store, principal, job_id)
    target = artifacts.safe_member(folder, path)
    if target is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {path!r} in this artifact")
    return FileResponse(target, filename=target.name)
