"""Model routes: list what a key may use, upload an archive of an HF folder, delete an upload.

Uploads are the raw request body (tar, tar.gz or zip), streamed to a temporary file with a
running byte count, so an oversize upload is refused as soon as it passes the limit instead of
after it has filled the disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from jobs import model_registry as registry
from jobs.settings import Settings
from jobs.uploads import UnsafeArchive, unpack_model
from service import errors
from service.api.deps import PrincipalDep, SettingsDep
from service.api.schemas import ModelList, UploadedModel

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(principal: PrincipalDep, settings: SettingsDep) -> ModelList:
    return ModelList(models=registry.list_models(settings, principal.name))


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
             responses=errors.responses(400, 409),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}}})
async def upload_model(
    request: Request, principal: PrincipalDep, settings: SettingsDep,
    name: Annotated[str, Query(pattern=registry.NAME.pattern, description="name to use in jobs")],
) -> UploadedModel:
    """Body: an archive (tar, tar.gz, zip) of an HF model folder; `?name=` names it."""
    if name in registry.BUNDLED_MODELS:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{name!r} is a bundled model's name")
    owner_dir = registry.owner_uploads(settings, principal.name)
    owner_dir.mkdir(parents=True, exist_ok=True)
    destination = owner_dir / name
    if destination.exists():
        raise HTTPException(status.HTTP_409_CONFLICT, f"model {name!r} exists; delete it first")
    release = request.app.state.upload_leases.take(principal.name)
    try:
        return await _receive_and_unpack(request, settings, principal.name, name, owner_dir)
    finally:
        release()


async def _receive_and_unpack(request: Request, settings: Settings, owner: str, name: str,
                              owner_dir: Path) -> UploadedModel:
    destination = owner_dir / name
    with tempfile.TemporaryDirectory(dir=owner_dir, prefix=".upload-") as scratch:
        archive = Path(scratch) / "archive"
        size = await _receive(request, archive, settings.max_upload_bytes)
        try:
            await run_in_threadpool(unpack_model, archive, destination,
                                    settings.max_unpacked_bytes)
        except UnsafeArchive as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        except FileExistsError:
            raise HTTPException(status.HTTP_409_CONFLICT, f"model {name!r} exists") from None
    return UploadedModel(name=name, owner=owner, archive_bytes=size)


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT,
               responses=errors.responses(404))
def delete_model(name: str, principal: PrincipalDep, settings: SettingsDep) -> Response:
    """Only your own uploads; bundled and server models are not deletable over HTTP."""
    if not registry.NAME.match(name) or not registry.delete_upload(settings, principal.name,
                                                                    name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
