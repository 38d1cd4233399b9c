"""What one key may store: members per archive (413), models and bytes per key (429), counted
from what each upload recorded when it completed, never by walking the upload folders.

Quota tests run on an app of their own with small limits and a fresh key each, so they share
nothing with other tests; the member cap runs on the session app with the default cap.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import auth

CONFIG = json.dumps({"model_type": "llama"}).encode()


def _safetensors(size: int) -> bytes:
    """A valid safetensors file of exactly `size` bytes (one uint8 tensor fills the rest):
    uploads read every header, so the weights must be a real file, of a size the quota
    tests can count on. The header is padded with spaces, as safetensors allows."""
    head_room = 128
    data = size - 8 - head_room
    head = json.dumps({"w": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}})
    return struct.pack("<Q", head_room) + head.ljust(head_room).encode() + b"w" * data


WEIGHTS = _safetensors(10 * 1024)


def _model(extra: int = 0, weights: bytes = WEIGHTS) -> dict[str, bytes]:
    """A minimal model folder (config.json and one weight file) plus `extra` tiny files."""
    files = {"mymodel/config.json": CONFIG, "mymodel/model.safetensors": weights}
    files.update({f"mymodel/extra/{i:06d}.txt": b"x" for i in range(extra)})
    return files


def _tar(entries: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _understated_zip(entries: dict[str, bytes], declared: int) -> bytes:
    """A zip whose end record declares `declared` members, fewer than it holds."""
    body = bytearray(_zip(entries))
    end = body.rindex(b"PK\x05\x06")
    body[end + 8:end + 12] = declared.to_bytes(2, "little") * 2  # on this disk, in total
    return bytes(body)


def _upload(client, key: str, name: str, body: bytes):
    return client.post(f"/api/v1/models?name={name}", headers=auth(key), content=body)


def _on_disk(settings, owner: str) -> list[str]:
    """Everything in the owner's upload folder, scratch folders included."""
    folder = settings.uploads_dir / owner
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _message(response) -> str:
    [error] = response.json()["detail"]
    return error["msg"]


@pytest.fixture
def fresh_key(app, token) -> Iterator[tuple[str, str]]:
    """(owner, key) of a key no other test has used."""
    import uuid

    owner = f"quota-{token}-{uuid.uuid4().hex[:6]}"
    yield owner, app.state.keys.create(owner)


@pytest.fixture
def strict(settings) -> Iterator[Any]:
    """A client of an app whose key quotas are small: 2 models, 25,000 bytes."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(settings.model_copy(update={"max_models_per_key": 2,
                                                 "max_upload_bytes_per_key": 25_000}))
    with TestClient(app) as client:
        yield client


def _strict_key(strict, token: str) -> tuple[str, str]:
    import uuid

    owner = f"strict-{token}-{uuid.uuid4().hex[:6]}"
    return owner, strict.app.state.keys.create(owner)


MEMBER_CASES = {
    "tar": lambda n: _tar(_model(extra=n), mode="w"),
    "tar.gz": lambda n: _tar(_model(extra=n)),
    "zip": lambda n: _zip(_model(extra=n)),
    "zip, count understated": lambda n: _understated_zip(_model(extra=n), declared=3),
}


@pytest.mark.parametrize("case", sorted(MEMBER_CASES))
def test_archive_over_the_member_cap_is_413_and_leaves_nothing(client, settings, fresh_key,
                                                               case):
    owner, key = fresh_key
    cap = settings.max_archive_members
    response = _upload(client, key, "many", MEMBER_CASES[case](cap - 1))  # cap + 1 members
    assert response.status_code == 413, response.text
    message = _message(response)
    assert str(cap) in message and "MAX_ARCHIVE_MEMBERS" in message
    assert _on_disk(settings, owner) == []  # no model, no scratch folder
    at_cap = _upload(client, key, "enough", MEMBER_CASES[case](cap - 2))  # exactly the cap
    assert at_cap.status_code == 201, at_cap.text
    assert client.delete("/api/v1/models/enough", headers=auth(key)).status_code == 204


def _probe(files: int) -> bytes:
    """A tar.gz of a model and `files` empty files, from raw headers (tarfile's `addfile`
    takes twice as long for 100,000 members)."""
    import gzip

    info = tarfile.TarInfo()

    def member(name: str, data: bytes = b"") -> bytes:
        info.name, info.size = name, len(data)
        return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)

    model = [member(name, data) for name, data in _model().items()]
    empty = [member(f"mymodel/extra/{i:06d}.txt") for i in range(files)]
    return gzip.compress(b"".join(model + empty) + b"\0" * 1024)


def test_the_probe_of_100000_files_is_refused_while_listing(client, settings, fresh_key):
    """The reported probe: a ~1 MB tar.gz of 100,000 files. Refused after the cap's worth of
    headers, long before 100,000 files could be written."""
    owner, key = fresh_key
    body = _probe(100_000)
    assert len(body) < 2 * 1024 * 1024
    began = time.monotonic()
    response = _upload(client, key, "probe", body)
    assert response.status_code == 413, response.text
    assert time.monotonic() - began < 10
    assert _on_disk(settings, owner) == []


def test_models_per_key_is_429_naming_the_limit_and_delete_frees_it(strict, settings, token):
    owner, key = _strict_key(strict, token)
    small = _tar(_model(weights=_safetensors(1000)))
    assert _upload(strict, key, "one", small).status_code == 201
    assert _upload(strict, key, "two", small).status_code == 201
    refused = _upload(strict, key, "three", small)
    assert refused.status_code == 429, refused.text
    assert "MAX_MODELS_PER_KEY" in _message(refused) and "2" in _message(refused)
    assert _on_disk(settings, owner) == ["one", "two"]
    assert strict.delete("/api/v1/models/one", headers=auth(key)).status_code == 204
    assert _upload(strict, key, "three", small).status_code == 201
    listed = _uploaded(strict, key)
    assert sorted(listed) == ["three", "two"]


def _uploaded(client, key: str) -> dict[str, dict[str, Any]]:
    models = client.get("/api/v1/models", headers=auth(key)).json()["models"]
    return {m["name"]: m for m in models if m["kind"] == "uploaded"}


def test_bytes_per_key_is_429_naming_the_limit_and_delete_frees_it(strict, settings, token):
    owner, key = _strict_key(strict, token)
    big = _tar(_model(weights=_safetensors(15_000)))  # 15,000 + config bytes: one fits in 25,000
    assert _upload(strict, key, "first", big).status_code == 201
    refused = _upload(strict, key, "second", big)  # past the room left while unpacking
    assert refused.status_code == 429, refused.text
    assert "MAX_UPLOAD_BYTES_PER_KEY" in _message(refused)
    assert _on_disk(settings, owner) == ["first"]
    stored = _uploaded(strict, key)["first"]
    assert stored["bytes"] == 15_000 + len(CONFIG) and stored["files"] == 2
    assert strict.delete("/api/v1/models/first", headers=auth(key)).status_code == 204
    assert _upload(strict, key, "second", big).status_code == 201


def test_a_full_key_is_refused_before_its_body_is_read(strict, token):
    _, key = _strict_key(strict, token)
    exact = _tar(_model(weights=_safetensors(25_000 - len(CONFIG))))  # exactly the quota
    assert _upload(strict, key, "all", exact).status_code == 201
    refused = _upload(strict, key, "more", b"not even an archive")
    assert refused.status_code == 429  # not 422: the archive was never looked at
    assert "MAX_UPLOAD_BYTES_PER_KEY" in _message(refused)


def test_concurrent_uploads_cannot_both_pass_a_quota_only_one_fits(strict, settings, token):
    """Two uploads at once, each fitting alone: one is stored, the other refused (whichever
    check it meets: the room before receiving, or the atomic admission before the rename)."""
    owner, key = _strict_key(strict, token)
    body = _tar(_model(weights=_safetensors(15_000)))
    start = threading.Barrier(2)
    answers: dict[str, int] = {}

    def upload(name: str) -> None:
        start.wait()
        answers[name] = _upload(strict, key, name, body).status_code

    threads = [threading.Thread(target=upload, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers.values()) == [201, 429], answers
    stored = [name for name, code in answers.items() if code == 201]
    assert _on_disk(settings, owner) == stored
    assert sorted(_uploaded(strict, key)) == stored


def test_admission_is_atomic_between_the_check_and_the_rename(app, settings, token):
    """The interleaving a race produces, made deterministic: both uploads saw room before
    either was admitted; the admission (one Lua script) lets only one through. Many threads
    admitting at once store exactly the quota."""
    from jobs.upload_ledger import QuotaExceeded, UploadLedger
    from jobs.uploads import UploadSize

    tight = settings.model_copy(update={"max_models_per_key": 3,
                                        "max_upload_bytes_per_key": 1000})
    ledger = UploadLedger(app.state.redis, tight)
    owner = f"ledger-{token}"
    size = UploadSize(bytes=600, files=2)
    assert ledger.check_room(owner) == 1000 and ledger.check_room(owner) == 1000
    ledger.admit(owner, "a", size)
    with pytest.raises(QuotaExceeded) as refused:
        ledger.admit(owner, "b", size)
    assert refused.value.setting == "MAX_UPLOAD_BYTES_PER_KEY"

    crowd = f"crowd-{token}"
    results: list[str] = []

    def admit(index: int) -> None:
        try:
            ledger.admit(crowd, f"m{index}", UploadSize(bytes=10, files=1))
            results.append("stored")
        except QuotaExceeded:
            results.append("refused")

    threads = [threading.Thread(target=admit, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results.count("stored") == 3 and results.count("refused") == 9
    assert len(ledger.stored(crowd)) == 3


def test_listing_reads_the_record_not_the_folders(client, settings, fresh_key, monkeypatch):
    """GET /models answers from what each upload recorded: with every way of listing or
    walking a folder under the uploads made to fail, it still lists the upload, sized."""
    owner, key = fresh_key
    assert _upload(client, key, "sized", _tar(_model(extra=500))).status_code == 201
    from jobs.uploads import measure

    expected = measure(settings.uploads_dir / owner / "sized")
    assert expected.files == 502
    uploads = str(settings.uploads_dir)

    def guard(original):
        def walk(*args, **kwargs):
            if args and os.fspath(args[0]).startswith(uploads):
                raise AssertionError(f"listed {args[0]} while listing models")
            return original(*args, **kwargs)
        return walk

    monkeypatch.setattr(Path, "iterdir", guard(Path.iterdir))
    monkeypatch.setattr(Path, "rglob", guard(Path.rglob))
    monkeypatch.setattr(Path, "glob", guard(Path.glob))
    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))
    response = client.get("/api/v1/models", headers=auth(key))
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    [entry] = [m for m in response.json()["models"] if m["kind"] == "uploaded"]
    assert entry["name"] == "sized"
    assert (entry["bytes"], entry["files"]) == (expected.bytes, expected.files)
    assert client.delete("/api/v1/models/sized", headers=auth(key)).status_code == 204


def test_a_lost_record_heals_from_disk(strict, settings, token, redis):
    """Redis that kept nothing (a restart on the CI machine): the first reader rebuilds the
    owner's record from its folder, and the quota holds again."""
    owner, key = _strict_key(strict, token)
    small = _tar(_model(weights=_safetensors(1000)))
    assert _upload(strict, key, "kept", small).status_code == 201
    assert _upload(strict, key, "also", small).status_code == 201
    before = _uploaded(strict, key)
    record = f"{settings.key_prefix}:uploads:{owner}"
    assert redis.delete(record) == 1
    assert _uploaded(strict, key) == before
    assert redis.hexists(record, "@complete")
    refused = _upload(strict, key, "third", small)
    assert refused.status_code == 429 and "MAX_MODELS_PER_KEY" in _message(refused)
    redis.delete(record)  # lost again: an upload's own admission heals it too
    assert strict.delete("/api/v1/models/kept", headers=auth(key)).status_code == 204
    assert _upload(strict, key, "third", small).status_code == 201
    assert sorted(_uploaded(strict, key)) == ["also", "third"]


def test_a_record_without_a_folder_can_be_deleted(client, app, settings, fresh_key):
    """An upload admitted whose process died before the rename leaves a record and no folder:
    DELETE frees it, so the key is never stuck over its quota."""
    from jobs.upload_ledger import UploadLedger
    from jobs.uploads import UploadSize

    owner, key = fresh_key
    ledger = UploadLedger(app.state.redis, settings)
    ledger.stored(owner)  # a complete (empty) record, then one admitted upload
    ledger.admit(owner, "ghost", UploadSize(bytes=5, files=1))
    assert "ghost" in _uploaded(client, key)
    assert client.delete("/api/v1/models/ghost", headers=auth(key)).status_code == 204
    assert "ghost" not in _uploaded(client, key)
    assert client.delete("/api/v1/models/ghost", headers=auth(key)).status_code == 404


def test_the_ledger_is_torch_free():
    """The API imports it: listing and quotas must not pull in torch."""
    code = ("import sys, jobs.upload_ledger, service.api.models; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
