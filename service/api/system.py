"""Routes about the service itself: methods, the caller, workers, and the all-jobs stream."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from compressors.methods import method_schemas
from jobs import queue as rq_queue
from jobs.queue import WorkerInfo
from jobs.records import ACTIVE, JobRecord
from jobs.store import JobStore
from service import events
from service.api.deps import PrincipalDep, QueueDep, StoreDep
from service.api.schemas import Caller, MethodList, WorkersStatus
from service.auth import Principal

router = APIRouter(tags=["service"])


@router.get("/methods")
def list_methods() -> MethodList:
    """Each compression method's summary, job stage and parameter JSON schema."""
    return MethodList.model_validate({"methods": method_schemas()})


@router.get("/me")
def me(principal: PrincipalDep) -> Caller:
    return Caller(name=principal.name, admin=principal.admin)


@router.get("/workers")
def workers(queue: QueueDep, principal: PrincipalDep, store: StoreDep) -> WorkersStatus:
    """Workers online (heartbeat age, current job) and how many jobs wait in the queue.

    An admin sees every worker as RQ knows it. Any other key sees the same number of workers,
    anonymous (`worker 1`, ...; no host, PID or name), and a worker's current job only when
    that job is its own: another owner's job ids are none of its business.
    """
    found = rq_queue.workers(queue)
    if not principal.admin:
        found = [_anonymous(index, worker, store, principal) for index, worker in
                 enumerate(found, start=1)]
    return WorkersStatus(workers=found, online=len(found), queue_depth=queue.count)


def _anonymous(index: int, worker: WorkerInfo, store: JobStore,
               principal: Principal) -> WorkerInfo:
    job = store.get(worker.current_job) if worker.current_job else None
    own = job is not None and principal.can_see(job.owner)
    return WorkerInfo(name=f"worker {index}", state=worker.state,
                      current_job=worker.current_job if own else None,
                      heartbeat_age_s=worker.heartbeat_age_s)


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`job` and `deleted` events; data is a JobView"},
                       429: {"description": "MAX_STREAMS_PER_KEY streams are open"}})
async def all_events(request: Request, principal: PrincipalDep,
                     store: StoreDep) -> StreamingResponse:
    """SSE of every change to the jobs this key can see (data: the job's public view)."""

    def initial() -> list[JobRecord]:
        owner = None if principal.admin else principal.name
        return [r for r in store.get_many(store.list_ids(owner)[:50]) if r.state in ACTIVE]

    return await events.events_response(request, principal.name,
                                 lambda r: principal.can_see(r.owner), initial)
