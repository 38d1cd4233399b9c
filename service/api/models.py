"""Model routes: list what a key may use, upload an archive of an HF folder, delete an upload.

Uploads are the raw request body (tar, tar.gz or zip), streamed to a temporary file with a
running byte count, so an oversize upload is refused as soon as it passes the limit instead of
after it has filled the disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service import models as registry
from service.api.deps import PrincipalDep, SettingsDep
from service.uploads import UnsafeArchive, unpack_model

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(principal: PrincipalDep, settings: SettingsDep) -> dict[str, Any]:
    return {"models": registry.list_models(settings, principal.name)}


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


@router.post("/models", status_code=status.HTTP_201_CREATED)
async def upload_model(
    request: Request, principal: PrincipalDep, settings: SettingsDep,
    name: Annotated[str, Query(pattern=registry.NAME.pattern, description="name to use in jobs")],
) -> dict[str, Any]:
    """Body: an archive (tar, tar.gz, zip) of an HF model folder; `?name=` names it."""
    if name in registry.bundled_names():
        raise HTTPException(status.HTTP_409_CONFLICT, f"{name!r} is a bundled model's name")
    owner_dir = registry.owner_uploads(settings, principal.name)
    owner_dir.mkdir(parents=True, exist_ok=True)
    destination = owner_dir / name
    if destination.exists():
        raise HTTPException(status.HTTP_409_CONFLICT, f"model {name!r} exists; delete it first")
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
    return {"name": name, "kind": "uploaded", "owner": principal.name, "archive_bytes": size}


@router.delete("/models/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(name: str, principal: PrincipalDep, settings: SettingsDep) -> Response:
    """Only your own uploads; bundled and server models are not deletable over HTTP."""
    if not registry.NAME.match(name) or not registry.delete_upload(settings, principal.name,
                                                                    name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
