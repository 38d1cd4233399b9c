"""Model uploads: a good archive becomes a usable model of its owner only; oversize, path
traversal, links and non-models are refused with a clear 4xx and leave nothing behind."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from service_helpers import FAST_JOB, auth


def _tar(entries: dict[str, bytes], links: dict[str, str] | None = None, gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buffer.getvalue()


def _model_files(folder: Path) -> dict[str, bytes]:
    return {f"mymodel/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a 256-token vocabulary and no tokenizer: a ~0.3 MB folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("small-model")
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _upload(client, key: str, name: str, body: bytes):
    return client.post(f"/api/v1/models?name={name}", headers=auth(key), content=body)


def _uploads_of(settings, owner: str) -> list[str]:
    folder = settings.uploads_dir / owner
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_upload_list_use_and_delete(client, keys, token, settings, small_model):
    body = _tar(_model_files(small_model))
    created = _upload(client, keys["alice"], "mine", body)
    assert created.status_code == 201, created.text
    listed = client.get("/api/v1/models", headers=auth(keys["alice"])).json()["models"]
    assert {"name": "mine", "kind": "uploaded"}.items() <= next(
        m for m in listed if m["name"] == "mine").items()
    assert (settings.uploads_dir / f"alice-{token}" / "mine" / "config.json").is_file()
    assert _upload(client, keys["alice"], "mine", body).status_code == 409

    other = client.get("/api/v1/models", headers=auth(keys["bob"])).json()["models"]
    assert "mine" not in {m["name"] for m in other}
    refused = client.post("/api/v1/jobs", headers=auth(keys["bob"]),
                          json={"model": "mine", "recipe": FAST_JOB})
    assert refused.status_code == 422
    assert client.delete("/api/v1/models/mine", headers=auth(keys["bob"])).status_code == 404

    job = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                      json={"model": "mine", "recipe": FAST_JOB})
    assert job.status_code == 202
    client.post(f"/api/v1/jobs/{job.json()['id']}/cancel", headers=auth(keys["alice"]))
    client.delete(f"/api/v1/jobs/{job.json()['id']}", headers=auth(keys["alice"]))
    assert client.delete("/api/v1/models/mine", headers=auth(keys["alice"])).status_code == 204
    assert "mine" not in _uploads_of(settings, f"alice-{token}")


def test_zip_upload_is_accepted(client, keys, small_model):
    body = _zip(_model_files(small_model))
    assert _upload(client, keys["bob"], "zipped", body).status_code == 201
    assert client.delete("/api/v1/models/zipped", headers=auth(keys["bob"])).status_code == 204


def test_oversize_upload_is_413_and_nothing_written(client, keys, settings, token):
    body = b"\0" * (settings.max_upload_bytes + 1)
    response = _upload(client, keys["alice"], "huge", body)
    assert response.status_code == 413
    assert _uploads_of(settings, f"alice-{token}") == []


CONFIG = b'{"model_type": "llama"}'
WEIGHTS = b"{}"
PAYLOAD = bytes(range(256)) * 2048  # 512 KiB: truncation lands inside a member


def _bad_crc_zip() -> bytes:
    """A stored member whose bytes were changed after its CRC was written."""
    body = bytearray(_zip({"config.json": CONFIG, "m.safetensors": PAYLOAD}))
    at = body.index(PAYLOAD[:64]) + 1000
    body[at] ^= 0xFF
    return bytes(body)


def _lying_zip() -> bytes:
    """A central directory that declares a smaller size than the member holds."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", CONFIG)
        zf.writestr("m.safetensors", PAYLOAD)
    body = bytearray(buffer.getvalue())
    central = body.rindex(b"PK\x01\x02")  # the last entry's central-directory header
    body[central + 24:central + 28] = (1000).to_bytes(4, "little")  # uncompressed size
    return bytes(body)


def _truncated_tar_gz() -> bytes:
    body = _tar({"config.json": CONFIG, "m.safetensors": PAYLOAD})
    return body[: len(body) // 2]
BAD_ARCHIVES = {
    "tar-dotdot": _tar({"../evil.txt": b"x", "config.json": CONFIG, "m.safetensors": WEIGHTS}),
    "tar-absolute": _tar({"/tmp/evil.txt": b"x", "config.json": CONFIG}),
    "tar-symlink": _tar({"config.json": CONFIG, "m.safetensors": WEIGHTS},
                        links={"escape": "/etc/passwd"}),
    "tar-symlink-dir": _tar({"config.json": CONFIG}, links={"sub": "../../.."}),
    "zip-dotdot": _zip({"../../evil.txt": b"x", "config.json": CONFIG}),
    "zip-symlink": _zip({"config.json": CONFIG, "m.safetensors": WEIGHTS},
                        links={"escape": "/etc/passwd"}),
    "no-config": _tar({"m.safetensors": WEIGHTS}),
    "pickle-only": _tar({"config.json": CONFIG, "model.pt": b"pickle"}),
    "not-an-archive": b"just some bytes that are not an archive",
    "zip-bad-crc": _bad_crc_zip(),
    "zip-lying-directory": _lying_zip(),
    "tar-gz-truncated": _truncated_tar_gz(),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archives_are_422_and_leave_nothing(client, keys, settings, token, case,
                                                service_root):
    response = _upload(client, keys["alice"], "bad", BAD_ARCHIVES[case])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    [error] = response.json()["detail"]
    assert error["msg"] and error["loc"] == []
    assert _uploads_of(settings, f"alice-{token}") == []
    assert not list((settings.uploads_dir / f"alice-{token}").glob(".*"))  # no scratch left
    assert not (service_root / "evil.txt").exists()
    assert not Path("/tmp/evil.txt").exists()


def test_upload_name_is_validated(client, keys):
    body = _tar({"config.json": CONFIG})
    assert _upload(client, keys["alice"], "..", body).status_code == 422
    assert _upload(client, keys["alice"], "smollm2-135m", body).status_code == 409
