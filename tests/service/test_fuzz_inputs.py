"""Every bad byte is a 4xx (issue 25, item 4): hostile strings in every input, no 5xx.

An outside probe found NUL bytes in a model path, a recipe text path, an artifact file name
and a static file name each answered 500 with a traceback ("embedded null byte" from os
calls). These tests walk every route of the app (API, health, session, dashboard), fill each
path parameter, a query parameter of each route and every string of every JSON and form body
with each hostile string, with and without a valid key, and require that no answer is a 5xx
and nothing is logged at ERROR (the handler of last resort in `service.errors` logs each
unhandled error with its traceback).

The app under test has a key prefix and a queue of its own, so the jobs these requests
submit reach no worker and touch no other test; one job is published by hand so that routes
which read an artifact run their file code on hostile names.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis import Redis

HOSTILE: dict[str, str] = {
    "nul": "a\x00b",
    "percent-nul": "%00",
    "lone-surrogate": "\ud800",
    "rtl-override": "abc\u202etxt.exe",
    "escape": "\x1b[2J",
    "crlf": "a\r\nSet-Cookie: x=1",
    "c1-control": "a\x85b",
    "64kB": "a" * 65536,
    "traversal": "../../etc/passwd",
    "encoded-traversal": "%2e%2e%2f",
}
STREAMS = "/events"  # routes ending so stream until the job ends: never given a passing query
URL_BUDGET = 60_000  # httpx refuses URLs over 64 kB: the 64 kB string is cut to fit in one


@dataclass
class Fuzz:
    app: Any
    client: Any
    keys: dict[str, str]
    job_id: str
    model_root: Path


def _headers(key: str | None) -> dict[str, str]:
    """The key both ways: the API reads the header, the dashboard the sign-in cookie."""
    if key is None:
        return {}
    from service.auth import COOKIE_NAME

    return {"X-API-Key": key, "Cookie": f"{COOKIE_NAME}={key}"}


def _published_job(app: Any, settings: Any, owner: str, model_path: Path) -> str:
    """A succeeded job with a small published artifact, written as the worker would."""
    from compressors.publish import write_manifest
    from jobs import artifacts
    from jobs.records import JobRecord, JobState, JobUpdate, utcnow

    record = JobRecord.submitted(owner, "published", "tiny", str(model_path),
                                 {"steps": [{"method": "magnitude", "sparsity": 0.5}]}, 1)
    app.state.store.create(record)
    folder = artifacts.artifact_dir(settings, record.id)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / artifacts.REPORT_FILE).write_text("{}", encoding="utf-8")
    write_manifest(folder)
    app.state.store.update(record.id, JobUpdate(state=JobState.succeeded, finished_at=utcnow(),
                                                artifact=True))
    return record.id


@pytest.fixture(scope="module")
def fuzz(settings, token, tiny_model) -> Iterator[Fuzz]:
    from fastapi.testclient import TestClient

    from jobs import artifacts
    from service.app import create_app

    own = settings.model_copy(update={"key_prefix": f"test-{token}-fuzz",
                                      "queue_name": f"q-{token}-fuzz",
                                      "max_active_jobs_per_key": 1_000_000})
    app = create_app(own)
    keys = {"user": app.state.keys.create(f"fuzz-{token}"),
            "admin": app.state.keys.create(f"fuzzadmin-{token}", admin=True)}
    job_id = _published_job(app, own, f"fuzz-{token}", tiny_model)
    root = own.allowed_model_roots()[0]
    try:
        with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
            yield Fuzz(app, client, keys, job_id, root)
    finally:
        artifacts.remove(artifacts.artifact_dir(own, job_id))
        redis = Redis.from_url(own.redis_url)
        doomed = set(redis.scan_iter(f"{own.key_prefix}:*")) | set(
            redis.scan_iter(f"rq:*{own.queue_name}*"))
        for job_key in redis.scan_iter(f"{own.key_prefix}:job:*"):
            doomed |= set(redis.scan_iter(f"rq:*{job_key.decode().rsplit(':', 1)[1]}*"))
        redis.srem("rq:queues", f"rq:queue:{own.queue_name}")
        if doomed:
            redis.delete(*doomed)


def _routes(app: Any) -> list[Any]:
    """Every route, those of included routers too (FastAPI keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def _encoded(value: str, raw: bool) -> str:
    """`value` for a URL: every byte escaped, or (`raw`) with '/', '%' and '.' left as the
    client typed them, so "%00" arrives as a NUL and "../" as a path step. Lone surrogates go
    as the bytes a careless encoder writes (ED A0 80), which are not UTF-8."""
    return quote(value[:URL_BUDGET].encode("utf-8", "surrogatepass"),
                 safe="/%." if raw else "")


def _fill(route: Any, fuzz: Fuzz, **override: str) -> str:
    valid = {"job_id": fuzz.job_id, "path": "config.json", "name": "tiny"}
    values = {name: quote(valid.get(name, "x"), safe="") for name in route.param_convertors}
    return route.path_format.format(**{**values, **override})


def _server_errors(response: Any, route: Any) -> bool:
    """A 5xx, except /readyz's documented 503 while no worker is up."""
    return response.status_code >= 500 and not (
        route.path == "/readyz" and response.status_code == 503)


def _logged_errors(caplog: Any) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def test_every_route_is_walked(fuzz):
    """The walk below reaches the API, the health routes and the dashboard alike."""
    paths = {route.path for route in _routes(fuzz.app)}
    assert {"/api/v1/jobs/{job_id}/files/{path:path}", "/api/v1/models/{name}", "/healthz",
            "/metrics", "/api/v1/session", "/jobs/{job_id}", "/static/{name}",
            "/compare"} <= paths
    assert len(paths) >= 30


def test_hostile_path_parameters_are_never_a_5xx(fuzz, caplog):
    """Each path parameter of each route, each hostile string (escaped and as typed), every
    method, no key, a user's key and an admin's; the other parameters name real things (the
    published job, its config.json), so the file code behind them runs on the hostile one."""
    failures: list[str] = []
    sent = 0
    with caplog.at_level(logging.ERROR):
        for route in _routes(fuzz.app):
            for param in route.param_convertors:
                for label, hostile in HOSTILE.items():
                    urls = {_fill(route, fuzz, **{param: _encoded(hostile, raw)})
                            for raw in (False, True)}
                    for url in sorted(urls):
                        for method in sorted(route.methods):
                            for key in (None, fuzz.keys["user"], fuzz.keys["admin"]):
                                response = fuzz.client.request(method, url, headers=_headers(key))
                                sent += 1
                                if _server_errors(response, route):
                                    failures.append(f"{method} {route.path} {param}={label}: "
                                                    f"{response.status_code}")
    assert sent > 400
    assert not failures, "\n".join(failures[:40])
    assert not _logged_errors(caplog)


def test_known_bad_urls_are_404_in_the_one_error_shape(fuzz):
    """The probe's URLs: NUL, invalid UTF-8, an encoded lone surrogate, a control or bidi
    character in a path are 404 with the usual body, with or without a key (refused before
    any route runs); a name too long for the file system is a 404 of the route itself."""
    job = fuzz.job_id
    refused = ("/static/a%00b", "/static/%ff", "/static/%ed%a0%80", "/static/a%1bb",
               f"/api/v1/jobs/{job}/files/%00", f"/api/v1/jobs/{job}/files/a%e2%80%aeb",
               "/jobs/a%00b", "/api/v1/models/a%00b")
    too_long = (f"/static/{'a' * 300}", f"/api/v1/jobs/{job}/files/{'a' * 300}",
                f"/api/v1/jobs/{job}/files/{'a/' * 3000}")
    for url, key in [(u, k) for u in refused for k in (None, fuzz.keys["user"])] + [
            (u, fuzz.keys["user"]) for u in too_long]:
        response = fuzz.client.get(url, headers=_headers(key))
        assert response.status_code == 404, (url, response.text)
        assert response.json()["detail"][0]["type"] == "not_found"


def test_hostile_query_parameters_are_never_a_5xx(fuzz, caplog):
    """Each declared query parameter of each route and one undeclared (`x`), each hostile
    value; a control, surrogate or bidi character or invalid UTF-8 is a 422 naming it."""
    failures: list[str] = []
    with caplog.at_level(logging.ERROR):
        for route in _routes(fuzz.app):
            dependant = getattr(route, "dependant", None)
            names = [q.name for q in dependant.query_params] if dependant else []
            for name in [*names, "x"]:
                for label, hostile in HOSTILE.items():
                    for raw in (False, True):
                        url = f"{_fill(route, fuzz)}?{name}={_encoded(hostile, raw)}"
                        for method in sorted(route.methods - {"DELETE"}):
                            for key in (None, fuzz.keys["user"], fuzz.keys["admin"]):
                                if key is not None and route.path.endswith(STREAMS):
                                    continue
                                response = fuzz.client.request(method, url, headers=_headers(key))
                                if _server_errors(response, route):
                                    failures.append(f"{method} {route.path}?{name}={label}: "
                                                    f"{response.status_code}")
    assert not failures, "\n".join(failures[:40])
    assert not _logged_errors(caplog)
    for value in ("%00", "a%1bb", "%ff", "%ed%a0%80", "a%e2%80%aeb"):
        response = fuzz.client.get(f"/api/v1/jobs?state={value}",
                                   headers=_headers(fuzz.keys["user"]))
        assert response.status_code == 422, (value, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", "state"]


def _recipe_job() -> dict[str, Any]:
    return {"model": "tiny", "name": "fuzz", "recipe": {
        "steps": [{"method": "wanda", "sparsity": 0.5, "include": ["layers"], "exclude": ["zz"]},
                  {"method": "perp", "mode": "lora", "train_steps": 1, "text": "pydoc:topics",
                   "second_text": "pydoc:topics"}],
        "calibration": {"samples": 2, "seqlen": 64, "text": "sotu:1900-1999"},
        "evaluation": {"windows": 2, "seqlen": 64, "text": "pydoc:topics"}}}


def _goal_job() -> dict[str, Any]:
    return {"model": "tiny", "name": "fuzz goal", "goal": {
        "minimize": "size_bytes", "max_perplexity_ratio": 1.5, "methods": ["quantize"],
        "dtypes": ["float32"], "sensitivity": {"samples": 2, "seqlen": 64, "text": "pydoc:topics"},
        "calibration": {"samples": 2, "seqlen": 64, "text": "sotu:1900-1999"},
        "evaluation": {"windows": 2, "seqlen": 64, "text": "pydoc:topics"}}}


Loc = tuple[str | int, ...]


def _strings(value: Any, loc: Loc = ()) -> Iterator[Loc]:
    """Locations of every string in a JSON value."""
    if isinstance(value, str):
        yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*loc, index))


def _objects(value: Any, loc: Loc = ()) -> Iterator[Loc]:
    """Locations of every object in a JSON value (a hostile key is added to each)."""
    if isinstance(value, dict):
        yield loc
        for key, item in value.items():
            yield from _objects(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _objects(item, (*loc, index))


def _mutations(body: dict[str, Any], hostile: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The body with `hostile` as each of its strings in turn, then as a key of each object."""
    for loc in _strings(body):
        mutated = copy.deepcopy(body)
        *parents, last = loc
        target: Any = mutated
        for part in parents:
            target = target[part]
        target[last] = hostile
        yield ".".join(map(str, loc)), mutated
    for loc in _objects(body):
        mutated = copy.deepcopy(body)
        target = mutated
        for part in loc:
            target = target[part]
        target[hostile] = "x"
        yield ".".join(map(str, loc)) + ".<key>", mutated


def _json_bodies(body: dict[str, Any]) -> list[bytes]:
    """The body as JSON escapes (how JSON carries a NUL or a lone surrogate: `\\ud800`) and as
    raw UTF-8 (where a lone surrogate becomes bytes that are not UTF-8)."""
    return [json.dumps(body).encode(),
            json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")]


def _post_json(fuzz: Fuzz, url: str, content: bytes, key: str | None) -> Any:
    return fuzz.client.post(url, content=content, headers={
        **_headers(key), "Content-Type": "application/json"})


def test_hostile_strings_in_json_bodies_are_never_a_5xx(fuzz, caplog):
    """Every string and a new key in every object of a recipe job, a goal job and a sign-in,
    each hostile string, both encodings; the unmodified bodies are accepted, so each mutation
    reaches as deep as validation, the file policy, model lookup and admission go."""
    user = fuzz.keys["user"]
    templates = [("/api/v1/jobs", _recipe_job(), user, 202),
                 ("/api/v1/jobs", _goal_job(), user, 202),
                 ("/api/v1/session", {"key": user}, None, 200)]
    failures: list[str] = []
    with caplog.at_level(logging.ERROR):
        for url, body, key, accepted in templates:
            baseline = _post_json(fuzz, url, json.dumps(body).encode(), key)
            assert baseline.status_code == accepted, baseline.text
            for label, hostile in HOSTILE.items():
                for where, mutated in _mutations(body, hostile):
                    for content in _json_bodies(mutated):
                        response = _post_json(fuzz, url, content, key)
                        if response.status_code >= 500:
                            failures.append(f"POST {url} {where}={label}: "
                                            f"{response.status_code}")
    assert not failures, "\n".join(failures[:40])
    assert not _logged_errors(caplog)


def test_hostile_strings_in_the_sign_in_form_are_never_a_5xx(fuzz, caplog):
    """The dashboard's sign-in form: each field, each hostile string, as a browser encodes it."""
    form = {"api_key": fuzz.keys["user"], "next": "/jobs"}
    with caplog.at_level(logging.ERROR):
        for field in form:
            for label, hostile in HOSTILE.items():
                fields = {**form, field: hostile}
                content = "&".join(f"{name}={_encoded(value, raw=False)}"
                                   for name, value in fields.items())
                response = fuzz.client.post("/signin", content=content.encode(), headers={
                    "Content-Type": "application/x-www-form-urlencoded"})
                assert response.status_code < 500, (field, label, response.status_code)
    assert not _logged_errors(caplog)


# Step fields: the error's `loc` also holds the method, the union's tag (steps.1.perp.text).
NAMES_AND_PATHS = [("model",), ("recipe", "calibration", "text"),
                   ("recipe", "evaluation", "text"), ("recipe", "steps", 1, "text"),
                   ("recipe", "steps", 1, "second_text")]
GOAL_PATHS = [("goal", "calibration", "text"), ("goal", "evaluation", "text"),
              ("goal", "sensitivity", "text")]
REFUSED = ["/srv/a\x00b", "/srv/a\x1bb", "/srv/a\x7fb", "/srv/a\x85b", "/srv/a\ud800b",
           "/srv/a\u202eb"]


def _with(body: dict[str, Any], loc: Loc, value: str) -> dict[str, Any]:
    mutated = copy.deepcopy(body)
    target: Any = mutated
    for part in loc[:-1]:
        target = target[part]
    target[loc[-1]] = value
    return mutated


@pytest.mark.parametrize("loc", NAMES_AND_PATHS + GOAL_PATHS,
                         ids=lambda loc: ".".join(map(str, loc)))
def test_names_and_paths_with_refused_characters_are_422_naming_the_field(fuzz, loc):
    """A model or text path holding a control, surrogate or bidi character is a 422 whose
    `loc` is that field, before any file is looked up."""
    body = _goal_job() if loc[0] == "goal" else _recipe_job()
    for value in REFUSED:
        response = _post_json(fuzz, "/api/v1/jobs", json.dumps(_with(body, loc, value)).encode(),
                              fuzz.keys["user"])
        assert response.status_code == 422, (value, response.text)
        steps = loc[1:2] == ("steps",)
        expected = ["body", *loc[:3], "perp", *loc[3:]] if steps else ["body", *loc]
        assert response.json()["detail"][0]["loc"] == expected, (value, response.text)


def test_paths_the_file_system_cannot_look_up_are_422(fuzz):
    """Inside an allowed root, a path part over NAME_MAX bytes used to raise ENAMETOOLONG
    from `stat`; as a model it is an unknown model, as a text an unusable path."""
    long_path = str(fuzz.model_root / ("a" * 300) / "b")
    for loc in (("model",), ("recipe", "calibration", "text")):
        body = _with(_recipe_job(), loc, long_path)
        response = _post_json(fuzz, "/api/v1/jobs", json.dumps(body).encode(),
                              fuzz.keys["user"])
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", *loc]


def test_a_label_is_free_text_but_not_a_control_sequence(fuzz):
    """A job's `name` is written by people: tabs, line breaks and bidi characters are fine,
    an escape sequence, a NUL or a lone surrogate is not."""
    user = fuzz.keys["user"]
    fine = _post_json(fuzz, "/api/v1/jobs",
                      json.dumps({**_recipe_job(), "name": "a\tb\r\n\u202bשלום\u202c"}).encode(),
                      user)
    assert fine.status_code == 202, fine.text
    for value in ("\x1b[2J", "a\x00b", "\ud800", "a\x85b"):
        response = _post_json(fuzz, "/api/v1/jobs",
                              json.dumps({**_recipe_job(), "name": value}).encode(), user)
        assert response.status_code == 422, (value, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "name"]
