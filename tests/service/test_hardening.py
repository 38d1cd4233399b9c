"""The outside probe of issue 14, kept as tests against the real API, Redis and workers.

Each test is one probe an attacker or a careless client made: naming the server's own files in
recipe texts, malformed uploads, inputs that used to pass submission and fail (or silently
"succeed") at run time, oversize bodies, and what one key could see of another's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from service_helpers import FAST_JOB, auth

from compressors.methods import METHODS

# One valid step per method; a new method without an entry fails the walk below, on purpose.
MINIMAL_STEPS: dict[str, dict[str, Any]] = {
    "magnitude": {"sparsity": 0.5}, "wanda": {"sparsity": 0.5}, "sparsegpt": {"sparsity": 0.5},
    "perp": {"mode": "lora", "train_steps": 1, "lm_head_adapter": True}, "quantize": {},
    "gptq": {}, "rtn": {},
    "lowrank": {"rank": 4}, "w8a8": {}, "awq": {}, "fp8": {}, "nvfp4": {},
}


def _text_fields(schema: dict[str, Any], defs: dict[str, Any], path: tuple = ()):
    """Locations of every `text-ref` string in a JSON schema (through refs and unions)."""
    if "$ref" in schema:
        yield from _text_fields(defs[schema["$ref"].rsplit("/", 1)[1]], defs, path)
        return
    if schema.get("format") == "text-ref":
        yield path
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            yield from _text_fields(option, defs, path)
    for name, sub in schema.get("properties", {}).items():
        yield from _text_fields(sub, defs, (*path, name))


def _step(name: str) -> dict[str, Any]:
    assert name in MINIMAL_STEPS, f"add a minimal {name} step to MINIMAL_STEPS"
    return {"method": name, **MINIMAL_STEPS[name]}


def _post(client, key: str, recipe: dict[str, Any], model: str = "tiny"):
    return client.post("/api/v1/jobs", headers=auth(key), json={"model": model, "recipe": recipe})


@pytest.fixture(scope="module")
def secrets_on_server(settings, tmp_path_factory) -> list[str]:
    """Files no job may read: a key file in DATA_DIR, /etc/passwd, a relative path, and a
    link inside an allowed root that points into DATA_DIR."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key_file = settings.data_dir / "local-api-key"
    key_file.write_text("ck_the_admin_key\n")
    root = settings.allowed_model_roots()[0]
    root.mkdir(parents=True, exist_ok=True)
    link = root / f"innocent-{tmp_path_factory.getbasetemp().name}.txt"
    if not link.exists():
        link.symlink_to(key_file)
    return [str(key_file), "/etc/passwd", "data/local-api-key", str(link)]


def test_no_text_field_of_any_method_reads_a_server_file(client, app, keys, tiny_model,
                                                         secrets_on_server):
    """Walk every method's published schema: each text field, given each forbidden file, is a
    422 that names the field and echoes no path; nothing is queued."""
    methods = client.get("/api/v1/methods", headers=auth(keys["alice"])).json()["methods"]
    assert set(methods) == set(METHODS)
    checked = 0
    for name, info in methods.items():
        schema = info["schema"]
        fields = list(_text_fields(schema, schema.get("$defs", {})))
        for secret in secrets_on_server:
            for field in fields:
                step = {**_step(name), field[0]: secret}
                _expect_refused(client, app, keys["alice"], {"steps": [step]},
                                ["steps", 0, *field], secret)
                checked += 1
            for section in ("calibration", "evaluation"):
                recipe = {"steps": [_step(name)], section: {"text": secret}}
                _expect_refused(client, app, keys["alice"], recipe, [section, "text"], secret)
    perp = methods["perp"]["schema"]
    perp_fields = set(_text_fields(perp, perp.get("$defs", {})))
    assert {("text",), ("second_text",)} <= perp_fields and checked >= 8


def _expect_refused(client, app, key: str, recipe: dict[str, Any], loc: list, secret: str):
    response = _post(client, key, recipe)
    assert response.status_code == 422, (recipe, response.text)
    detail = response.json()["detail"]
    assert any(err["loc"][-len(loc):] == loc for err in detail), (loc, detail)
    assert secret not in response.text
    assert app.state.queue.count == 0


def test_data_dir_is_refused_even_inside_an_allowed_root(settings, tmp_path):
    """An operator may list a parent of DATA_DIR as a model root; DATA_DIR stays closed."""
    from compressors.recipe import parse_recipe
    from jobs.policy import allowed_model_path, model_source_allowed, recipe_violations
    from jobs.settings import Settings

    data = tmp_path / "data"
    (data / "uploads" / "bob" / "m").mkdir(parents=True)
    (data / "uploads" / "bob" / "m" / "config.json").write_text("{}")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "ok.txt").write_text("fine text " * 50)
    (data / "local-api-key").write_text("ck_secret")
    wide = Settings(data_dir=data, model_roots=str(tmp_path))
    recipe = parse_recipe({"steps": [{"method": "perp", "text": str(data / "local-api-key"),
                                      "second_text": str(tmp_path / "texts" / "ok.txt")}]})
    assert [loc for loc, _ in recipe_violations(wide, recipe)] == [("steps", 0, "text")]
    assert allowed_model_path(wide, str(data / "uploads" / "bob" / "m")) is None
    assert not model_source_allowed(wide, "alice", str(data / "uploads" / "bob" / "m"))
    assert model_source_allowed(wide, "bob", str(data / "uploads" / "bob" / "m"))


def test_local_admin_key_is_kept_outside_data_dir():
    serve = (Path(__file__).resolve().parents[2] / "scripts" / "serve").read_text()
    ensure = next(line for line in serve.splitlines() if "keys ensure" in line)
    assert "DATA_DIR" not in ensure and "$KEY_FILE" in ensure
    key_file_line = next(line for line in serve.splitlines() if line.startswith("KEY_FILE="))
    assert "DATA_DIR/" not in key_file_line.replace('"$DATA_DIR" |', "")


def test_job_record_with_forbidden_model_path_fails_in_the_worker(client, keys, workers,
                                                                  tiny_model, settings, redis):
    """Defence in depth: a record whose model path was rewritten past the API (to another
    owner's upload) fails in the worker before anything is loaded."""
    other = settings.uploads_dir / "someone-else" / "m"
    other.mkdir(parents=True, exist_ok=True)
    response = _post(client, keys["alice"], FAST_JOB)
    assert response.status_code == 202
    job = response.json()
    redis.hset(f"{settings.key_prefix}:job:{job['id']}", "model_path", json.dumps(str(other)))
    worker = workers.start()
    from service_helpers import wait_state

    from jobs.admission import limits_key, worker_limits

    assert json.loads(redis.hget(limits_key(settings), worker.worker_name))["ram_bytes"] > 2**28
    assert worker_limits(redis, settings).ram_bytes > 2**28  # what submission bounds jobs by
    record = wait_state(client, keys["alice"], job["id"], ("failed", "succeeded"))
    assert record["state"] == "failed" and record["error"].startswith("PermissionError: model")
    assert "someone-else" not in record["error"]


def test_redis_down_is_503_json_with_retry_after(settings, keys):
    """With Redis unreachable every route answers 503 JSON and says when to retry."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), raise_server_exceptions=False) as offline:
        for method, path in (("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs")):
            response = offline.request(method, path, headers=auth(keys["alice"]),
                                       json={"model": "tiny", "recipe": FAST_JOB})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert "Redis" in response.json()["detail"][0]["msg"]
        assert offline.get("/readyz").status_code == 503


def _wanda(**fields: Any) -> dict[str, Any]:
    return {**FAST_JOB, "steps": [{"method": "wanda", "sparsity": 0.5, **fields}]}


SUBMISSION_REFUSALS = [
    ({**FAST_JOB, "calibration": {"text": "sotu:abc"}}, ["calibration", "text"], "not a known"),
    ({**FAST_JOB, "calibration": {"text": "sotu:3000-3001"}}, ["calibration", "text"],
     "no State of the Union"),
    ({**FAST_JOB, "calibration": {"text": "sotu:1999-1900"}}, ["calibration", "text"], "before"),
    (_wanda(include=["("]), ["steps", 0, "wanda", "include"], "not a valid regex"),
    ({**FAST_JOB, "calibration": {"seed": 2**63}}, ["calibration", "seed"], "4294967295"),
    ({**FAST_JOB, "steps": [{"method": "wanda", "pattern": "2:99999999999"}]},
     ["steps", 0, "wanda", "pattern"], "N:M"),
    (_wanda(include=["zzzz"]), ["steps", 0, "include"], "no layer of this model matches"),
    (_wanda(exclude=["."]), ["steps", 0, "include"], "change nothing"),
    ({**FAST_JOB, "calibration": {"samples": 4096, "seqlen": 32768}}, ["calibration", "samples"],
     "less than or equal to 1024"),
    ({**FAST_JOB, "calibration": {"samples": 1024, "seqlen": 8192}}, ["calibration"],
     "2097152 calibration tokens"),
    ({**FAST_JOB, "evaluation": {"windows": 100000}}, ["evaluation", "windows"], "2048"),
    ({**FAST_JOB, "evaluation": {"windows": 2048, "seqlen": 8192}}, ["evaluation"],
     "4194304 evaluation tokens"),
    ({**FAST_JOB, "steps": [{"method": "wanda", "sparsity": "0.5"}]},
     ["steps", 0, "wanda", "sparsity"], "valid number"),
    ({**FAST_JOB, "calibration": {"samples": True}}, ["calibration", "samples"], "valid integer"),
    ({**FAST_JOB, "steps": [{"method": "quantize", "lorc_rank": False}]},
     ["steps", 0, "quantize", "lorc_rank"], "valid integer"),
    ({**FAST_JOB, "steps": [{"method": "quantize", "bits": 4.0}]},
     ["steps", 0, "quantize", "bits"], "integer"),
]


@pytest.mark.parametrize(("recipe", "loc", "words"), SUBMISSION_REFUSALS,
                         ids=[str(i) for i in range(len(SUBMISSION_REFUSALS))])
def test_bad_inputs_fail_at_submission(client, app, keys, tiny_model, recipe, loc, words):
    response = _post(client, keys["alice"], recipe)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    hit = [e for e in detail if e["loc"][2:2 + len(loc)] == loc]
    assert hit and words in hit[0]["msg"], detail
    assert app.state.queue.count == 0


def test_pydoc_topics_is_accepted_as_calibration_text(client, keys, tiny_model):
    response = _post(client, keys["alice"], {**FAST_JOB, "calibration": {
        "text": "pydoc:topics", "samples": 2, "seqlen": 64}})
    assert response.status_code == 202, response.text
    job = response.json()["id"]
    client.post(f"/api/v1/jobs/{job}/cancel", headers=auth(keys["alice"]))
    assert client.delete(f"/api/v1/jobs/{job}", headers=auth(keys["alice"])).status_code == 204


class _OneSmallWorker:
    """What the limits cache returns when the only worker online may use 1 GiB."""

    def get(self):
        from compressors.memory import GiB, Limits

        return Limits(1 * GiB, None, "cpu")


def _submitted_to_one_small_worker(client, app, key: str, bodies: list[dict[str, Any]]):
    """Each body's response while the only worker online may use 1 GiB; the accepted jobs
    are cancelled and deleted again."""
    real = app.state.limits
    app.state.limits = _OneSmallWorker()
    try:
        responses = [client.post("/api/v1/jobs", headers=auth(key), json={"model": "tiny", **b})
                     for b in bodies]
    finally:
        app.state.limits = real
    for accepted in (r for r in responses if r.status_code == 202):
        client.post(f"/api/v1/jobs/{accepted.json()['id']}/cancel", headers=auth(key))
        client.delete(f"/api/v1/jobs/{accepted.json()['id']}", headers=auth(key))
    return responses


def test_a_job_no_worker_can_hold_is_422_naming_the_bound(client, app, keys, tiny_model):
    recipe = {**_wanda(), "calibration": {"samples": 1024, "seqlen": 2048}}
    response, fits = _submitted_to_one_small_worker(
        client, app, keys["alice"], [{"recipe": recipe}, {"recipe": FAST_JOB}])
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert "1.0 GiB" in error["msg"] and "GiB of RAM" in error["msg"] and error["loc"][:2] == [
        "body", "recipe"]
    assert fits.status_code == 202


def test_a_goal_whose_recovery_no_worker_can_hold_is_422_naming_it(client, app, keys,
                                                                  tiny_model):
    """A goal's recovery step (PERP training, the heaviest run of a search) is bounded like
    the perp recipe it becomes; the same goal without it is accepted."""
    goal = {"max_perplexity_ratio": 1.1}
    heavy = {**goal, "recovery": {"batch_size": 64, "seqlen": 32768}}
    response, fits = _submitted_to_one_small_worker(
        client, app, keys["alice"], [{"goal": heavy}, {"goal": goal}])
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][:3] == ["body", "goal", "recovery"] and "1.0 GiB" in error["msg"]
    assert fits.status_code == 202, fits.text


def test_method_schemas_carry_the_rules_the_server_enforces(client, keys):
    """A client that builds recipes from GET /methods builds only ones the server accepts."""
    import jsonschema

    methods = client.get("/api/v1/methods", headers=auth(keys["alice"])).json()["methods"]

    def valid(name: str, step: dict[str, Any]) -> bool:
        return jsonschema.Draft202012Validator(methods[name]["schema"]).is_valid(
            {"method": name, **step})

    for name in ("magnitude", "wanda", "sparsegpt"):
        assert not valid(name, {}) and not valid(name, {"pattern": "unstructured"})
        assert valid(name, {"sparsity": 0.5}) and valid(name, {"pattern": "2:4"})
        assert not valid(name, {"sparsity": "0.5"}) and not valid(name, {"sparsity": 1.0})
    assert not valid("lowrank", {}) and not valid("lowrank", {"rank": 4, "ratio": 2.0})
    assert valid("lowrank", {"rank": 4}) and valid("lowrank", {"energy": 0.9})
    assert not valid("quantize", {"bits": 5}) and not valid("quantize", {"lorc_rank": False})
    assert not valid("perp", {"text": 3})


def _tar_folder(folder: Path, extra: dict[str, bytes] | None = None,
                config_update: dict[str, Any] | None = None, skip: tuple[str, ...] = ()) -> bytes:
    import io
    import tarfile

    files = {p.name: p.read_bytes() for p in folder.iterdir()
             if p.is_file() and p.name not in skip}
    if config_update:
        files["config.json"] = json.dumps({**json.loads(files["config.json"]),
                                           **config_update}).encode()
    files.update(extra or {})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"m/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _RunsCode:
    """Pickles to a call of `os.system`: what a malicious .bin holds (never loaded here)."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_what_one_key_learns_of_the_server_and_of_others(client, keys, workers, tiny_model,
                                                         settings, token):
    """Other owners' job ids, worker host names and PIDs, server paths in errors, remote-code
    keys in uploaded configs: none reach a key."""
    from service_helpers import wait_for

    worker = workers.start()
    slow = {**FAST_JOB, "evaluation": {"windows": 360, "seqlen": 512}}
    bobs = _post(client, keys["bob"], slow).json()["id"]
    wait_for(lambda: client.get(f"/api/v1/jobs/{bobs}", headers=auth(keys["bob"]))
             .json()["state"] == "running")
    seen = {who: client.get("/api/v1/workers", headers=auth(keys[who])).json()
            for who in ("alice", "bob", "admin")}
    client.post(f"/api/v1/jobs/{bobs}/cancel", headers=auth(keys["bob"]))
    assert client.delete(f"/api/v1/jobs/{bobs}", headers=auth(keys["bob"])).status_code == 204
    mine = [w for w in seen["admin"]["workers"] if w["name"] == worker.worker_name]
    assert mine and mine[0]["hostname"] and mine[0]["current_job"] == bobs
    assert seen["alice"]["online"] == seen["admin"]["online"] == len(seen["alice"]["workers"])
    text = json.dumps(seen["alice"])
    assert bobs not in text and worker.worker_name not in text and mine[0]["hostname"] not in text
    assert bobs in json.dumps(seen["bob"]) and worker.worker_name not in json.dumps(seen["bob"])

    remote = _tar_folder(tiny_model, extra={"modeling_evil.py": b"import os\n"},
                         config_update={"auto_map": {"AutoModel": "modeling_evil.Evil"},
                                        "trust_remote_code": True})
    limit, settings.max_upload_bytes = settings.max_upload_bytes, 64 * 2**20  # the tiny model
    try:
        assert client.post("/api/v1/models?name=remote", headers=auth(keys["alice"]),
                           content=remote).status_code == 201
    finally:
        settings.max_upload_bytes = limit
    upload = settings.uploads_dir / f"alice-{token}" / "remote"
    assert not list(upload.glob("*.py"))  # and so the published config.json cannot carry them:
    assert not {"auto_map", "trust_remote_code"} & set(json.loads((upload / "config.json")
                                                                  .read_text()))
    assert client.delete("/api/v1/models/remote", headers=auth(keys["alice"])).status_code == 204


def test_failures_tell_no_server_paths_and_never_advise_unsafe_loading(tiny_model, tmp_path):
    """The worker's record of a failure, for the real exception a malicious .bin raises when
    the library loads it, and for an error that names server paths."""
    import pickle
    import shutil

    from compressors.io.loading import load_model
    from worker.tasks import describe_failure

    evil = tmp_path / "uploads" / "local" / "m_remote2"
    shutil.copytree(tiny_model, evil)
    (evil / "model.safetensors").unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(Exception) as refused:
        load_model(evil)
    said = describe_failure(refused.value)
    assert "contains code" in said and "weights_only" not in said and str(tmp_path) not in said
    missing = describe_failure(FileNotFoundError(f"no file {evil}/config.json (see ./a/b)"))
    assert str(tmp_path) not in missing and "uploads" not in missing
    assert missing == "FileNotFoundError: no file …/config.json (see …/b)"


def test_request_bodies_are_bounded_and_errors_echo_nothing(client, app, keys, tiny_model):
    headers = {**auth(keys["alice"]), "Content-Type": "application/json"}
    regexes = ["a" * 4] * 2_000_000
    huge = json.dumps({"model": "tiny", "recipe": {"steps": [
        {"method": "wanda", "sparsity": 0.5, "include": regexes}]}}).encode()
    refused = client.post("/api/v1/jobs", headers=headers, content=huge)
    assert refused.status_code == 413 and len(refused.content) < 300
    assert "MAX_JSON_BYTES" in refused.json()["detail"][0]["msg"]

    def chunks():
        yield b'{"model": "tiny", "name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    streamed = client.post("/api/v1/jobs", headers=headers, content=chunks())
    assert streamed.status_code == 413

    long_name = "N" * 500_000
    named = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                        json={"model": "tiny", "recipe": FAST_JOB, "name": long_name})
    assert named.status_code == 422 and len(named.content) < 2000 and "NNNN" not in named.text
    odd_key = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                          json={"model": "tiny", "recipe": {**FAST_JOB, "k" * 200_000: 1}})
    assert odd_key.status_code == 422 and len(odd_key.content) < 2000

    steps = [{"method": "wanda", "sparsity": 0.5, "include": [f"{i}" + "a" * 400 for i in
                                                              range(64)]}] * 4
    stored = _post(client, keys["alice"], {**FAST_JOB, "steps": steps})
    assert stored.status_code == 422 and "MAX_RECIPE_BYTES" in stored.text
    assert len(stored.content) < 2000 and app.state.queue.count == 0
