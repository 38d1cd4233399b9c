"""Model routes: list what a key may use, upload an archive of an HF folder, delete an upload.

Uploads are the raw request body (tar, tar.gz or zip), streamed to a temporary file with a
running byte count, so an oversize upload is refused as soon as it passes the limit instead of
after it has filled the disk. What a key stores is bounded (models, bytes) and counted in Redis
(`jobs.upload_ledger`): a full key is refused before its body is read, an upload is unpacked
with at most the key's remaining bytes as its budget, and admitted atomically just before it
is renamed into place. Listing reads the same record, never the upload folders.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from jobs import model_registry as registry
from jobs.settings import Settings
from jobs.upload_ledger import QuotaExceeded, UploadLedger
from jobs.uploads import ArchiveTooLarge, UnsafeArchive, UploadSize, unpack_model
from service import errors
from service.api.deps import PrincipalDep, RedisDep, SettingsDep
from service.api.schemas import ModelList, UploadedModel
from service.quotas import stores_too_much

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(principal: PrincipalDep, settings: SettingsDep, redis: RedisDep) -> ModelList:
    """Bundled, server and own uploaded models; uploads with their recorded size."""
    stored = UploadLedger(redis, settings).stored(principal.name)
    return ModelList(models=registry.list_models(settings, principal.name, stored))


async def _receive(request: Request, target: Path, limit: int) -> int:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            f"upload larger than the limit of {limit} bytes")
    received = 0
    with target.open("wb") as out:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                    f"upload larger than the limit of {limit} bytes")
            out.write(chunk)
    if received == 0:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "empty upload: send the archive as body")
    return received


@router.post("/models", status_code=status.HTTP_201_CREATED,
             responses=errors.responses(400, 409, 413, 429),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}}})
async def upload_model(
    request: Request, principal: PrincipalDep, settings: SettingsDep, redis: RedisDep,
    name: Annotated[str, Query(pattern=registry.NAME.pattern, description="name to use in jobs")],
) -> UploadedModel:
    """Body: an archive (tar, tar.gz, zip) of an HF model folder; `?name=` names it.

    413 for an archive over MAX_UPLOAD_BYTES, MAX_UNPACKED_BYTES or MAX_ARCHIVE_MEMBERS; 429
    when the key's uploads would pass MAX_MODELS_PER_KEY or MAX_UPLOAD_BYTES_PER_KEY (or it
    has MAX_UPLOADS_PER_KEY uploads in progress)."""
    if name in registry.BUNDLED_MODELS:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{name!r} is a bundled model's name")
    owner_dir = registry.owner_uploads(settings, principal.name)
    owner_dir.mkdir(parents=True, exist_ok=True)
    destination = owner_dir / name
    if destination.exists():
        raise HTTPException(status.HTTP_409_CONFLICT, f"model {name!r} exists; delete it first")
    ledger = UploadLedger(redis, settings)
    try:
        room = await run_in_threadpool(ledger.check_room, principal.name)
    except QuotaExceeded as exc:
        raise stores_too_much(exc) from None
    release = request.app.state.upload_leases.take(principal.name)
    try:
        return await _receive_and_unpack(request, settings, ledger, principal.name, name,
                                         owner_dir, room)
    finally:
        release()


async def _receive_and_unpack(request: Request, settings: Settings, ledger: UploadLedger,
                              owner: str, name: str, owner_dir: Path,
                              room: int) -> UploadedModel:
    """Receive, unpack within the smaller of MAX_UNPACKED_BYTES and the key's `room`, admit
    against the quota just before the rename, and record the size once it is in place."""
    destination = owner_dir / name
    budget = min(settings.max_unpacked_bytes, room)
    admitted = False

    def admit(size: UploadSize) -> None:
        nonlocal admitted
        ledger.admit(owner, name, size)
        admitted = True

    with tempfile.TemporaryDirectory(dir=owner_dir, prefix=".upload-") as scratch:
        archive = Path(scratch) / "archive"
        received = await _receive(request, archive, settings.max_upload_bytes)
        try:
            size = await run_in_threadpool(unpack_model, archive, destination, budget,
                                           settings.max_archive_members, admit)
        except ArchiveTooLarge as exc:
            raise _too_large(exc, settings) from None
        except UnsafeArchive as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        except QuotaExceeded as exc:
            raise stores_too_much(exc) from None
        except FileExistsError:
            raise HTTPException(status.HTTP_409_CONFLICT, f"model {name!r} exists") from None
        finally:
            if admitted and not destination.is_dir():  # admitted, then the rename failed
                await run_in_threadpool(ledger.forget, owner, name)
    await run_in_threadpool(ledger.record, owner, name, size)
    return UploadedModel(name=name, owner=owner, archive_bytes=received)


def _too_large(exc: ArchiveTooLarge, settings: Settings) -> HTTPException:
    """413 naming the archive's cap, or 429 when the cap was what is left of the key's quota."""
    if exc.what == "members":
        return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                             f"{exc} (the limit, MAX_ARCHIVE_MEMBERS)")
    if exc.limit < settings.max_unpacked_bytes:
        return HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{exc}, what is left of this key's quota (the limit, MAX_UPLOAD_BYTES_PER_KEY = "
            f"{settings.max_upload_bytes_per_key} bytes over all its uploads); delete an "
            "upload first")
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"{exc} (the limit, MAX_UNPACKED_BYTES)")


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors.responses(404))
def delete_model(name: str, principal: PrincipalDep, settings: SettingsDep,
                 redis: RedisDep) -> Response:
    """Only your own uploads; bundled and server models are not deletable over HTTP. Frees
    the upload's share of the key's quota (a recorded upload whose folder is gone, too)."""
    if not registry.NAME.match(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} not found")
    removed = registry.delete_upload(settings, principal.name, name)
    forgotten = UploadLedger(redis, settings).forget(principal.name, name)
    if not removed and not forgotten:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
