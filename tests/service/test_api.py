"""API contract without a worker: auth, key isolation, validation, cancel/delete of queued jobs,
listing, methods, health, and that rejected submissions leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from service_helpers import FAST_JOB, auth, job_state, submit

BAD_RECIPES = [
    ({"steps": [{"method": "nosuchmethod", "sparsity": 0.5}]}, ["method"], "magnitude"),
    ({"steps": [{"method": "wanda", "sparsity": 1.5}]}, ["sparsity"], "less than"),
    ({"steps": [{"method": "magnitude", "sparsity": 0.5, "speed": 3}]}, ["speed"], "xtra"),
    ({"steps": []}, ["steps"], "at least 1"),
    ({"steps": [{"method": "magnitude", "sparsity": 0.5}],
      "calibration": {"text": "/etc/passwd"}}, ["calibration", "text"], "allowed"),
]


def _nothing_enqueued(app) -> bool:
    return app.state.queue.count == 0


def _jobs_of(client, key: str) -> list[str]:
    return [j["id"] for j in client.get("/api/v1/jobs", headers=auth(key)).json()["jobs"]]


def test_health_is_open_and_readyz_needs_a_worker(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["redis"] == "ok" and ready.json()["workers"] == 0


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs/x"),
    ("GET", "/api/v1/models"), ("POST", "/api/v1/models?name=m"), ("GET", "/api/v1/methods"),
    ("GET", "/api/v1/workers"), ("GET", "/api/v1/me"), ("GET", "/api/v1/events"),
    ("GET", "/metrics"),
])
def test_every_route_needs_a_key(client, method, path):
    assert client.request(method, path).status_code == 401
    assert client.request(method, path, headers=auth("ck_not-a-key")).status_code == 401


def test_key_accepted_from_header_bearer_and_cookie(client, keys, token):
    expected = {"name": f"alice-{token}", "admin": False}
    assert client.get("/api/v1/me", headers=auth(keys["alice"])).json() == expected
    bearer = {"Authorization": f"Bearer {keys['alice']}"}
    assert client.get("/api/v1/me", headers=bearer).json() == expected
    signed_in = client.post("/api/v1/session", json={"key": keys["alice"]})
    assert signed_in.status_code == 200
    assert "httponly" in signed_in.headers["set-cookie"].lower()
    assert client.get("/api/v1/me").json() == expected  # the cookie alone
    client.delete("/api/v1/session")
    client.cookies.clear()
    assert client.get("/api/v1/me").status_code == 401


def test_metrics_need_an_admin_key(client, keys):
    assert client.get("/metrics", headers=auth(keys["alice"])).status_code == 403
    text = client.get("/metrics", headers=auth(keys["admin"])).text
    assert "compressors_queue_depth" in text and 'compressors_jobs{state="queued"}' in text


def test_methods_lists_each_schema(client, keys):
    methods = client.get("/api/v1/methods", headers=auth(keys["alice"])).json()["methods"]
    assert {"magnitude", "wanda"} <= set(methods)
    assert "sparsity" in methods["wanda"]["schema"]["properties"]


def test_models_lists_bundled_and_server_models(client, keys, tiny_model):
    models = client.get("/api/v1/models", headers=auth(keys["alice"])).json()["models"]
    names = {m["name"]: m["kind"] for m in models}
    assert names["smollm2-135m"] == "bundled" and names["tiny"] == "server"


@pytest.mark.parametrize("recipe,loc,hint", BAD_RECIPES)
def test_bad_recipe_is_422_naming_the_field(client, app, keys, tiny_model, recipe, loc, hint):
    before = _jobs_of(client, keys["alice"])
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                           json={"model": "tiny", "recipe": recipe})
    assert response.status_code == 422
    errors = response.json()["detail"]
    named = [f"{err['loc']} {err['msg']}" for err in errors]
    assert any(all(f"'{part}'" in text for part in loc) for text in named), errors
    assert hint in str(errors)
    assert _nothing_enqueued(app) and _jobs_of(client, keys["alice"]) == before


@pytest.mark.parametrize("model", ["meta-llama/Llama-2-7b-hf", "no-such-model", "/etc",
                                   "../models/tiny"])
def test_unknown_or_forbidden_model_is_422(client, app, keys, model):
    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                           json={"model": model, "recipe": FAST_JOB})
    assert response.status_code == 422
    assert "unknown model" in str(response.json()["detail"])
    assert _nothing_enqueued(app)


def test_malformed_json_and_unknown_fields_are_422(client, app, keys):
    headers = {**auth(keys["alice"]), "Content-Type": "application/json"}
    assert client.post("/api/v1/jobs", headers=headers, content=b'{"model": ').status_code == 422
    extra = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                        json={"model": "tiny", "recipe": FAST_JOB, "priority": 1})
    assert extra.status_code == 422 and "priority" in str(extra.json())
    assert _nothing_enqueued(app)


def test_key_isolation_and_admin_view(client, app, keys, tiny_model):
    job = submit(client, keys["alice"], name="isolation")
    job_id = job["id"]
    try:
        assert job["state"] == "queued" and job["links"]["self"] == f"/api/v1/jobs/{job_id}"
        for method, suffix in [("GET", ""), ("GET", "/events"), ("GET", "/report"),
                               ("GET", "/artifact"), ("GET", "/files"),
                               ("POST", "/cancel"), ("DELETE", "")]:
            response = client.request(method, f"/api/v1/jobs/{job_id}{suffix}",
                                      headers=auth(keys["bob"]))
            assert response.status_code == 404, (method, suffix)
        assert job_id not in _jobs_of(client, keys["bob"])
        assert job_id in _jobs_of(client, keys["admin"])
        assert job_state(client, keys["admin"], job_id)["owner"] == job["owner"]
    finally:
        client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(keys["alice"]))
        client.delete(f"/api/v1/jobs/{job_id}", headers=auth(keys["alice"]))


def test_cancel_queued_then_delete(client, app, keys, tiny_model):
    job_id = submit(client, keys["alice"])["id"]
    assert app.state.queue.count == 1
    assert client.delete(f"/api/v1/jobs/{job_id}", headers=auth(keys["alice"])).status_code == 409
    cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(keys["alice"]))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert app.state.queue.count == 0  # it left the RQ queue too
    again = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(keys["alice"]))
    assert again.status_code == 409
    assert client.get(f"/api/v1/jobs/{job_id}/artifact",
                      headers=auth(keys["alice"])).status_code == 404
    assert client.delete(f"/api/v1/jobs/{job_id}", headers=auth(keys["alice"])).status_code == 204
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth(keys["alice"])).status_code == 404


def test_list_filters_by_state_newest_first_and_pages(client, keys, tiny_model):
    ids = [submit(client, keys["bob"], name=f"page-{i}")["id"] for i in range(3)]
    try:
        client.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=auth(keys["bob"]))
        page = client.get("/api/v1/jobs?limit=2", headers=auth(keys["bob"])).json()
        assert [j["id"] for j in page["jobs"]] == [ids[2], ids[1]] and page["total"] == 3
        queued = client.get("/api/v1/jobs?state=queued", headers=auth(keys["bob"])).json()
        assert {j["id"] for j in queued["jobs"]} == {ids[1], ids[2]}
        assert client.get("/api/v1/jobs?state=bogus",
                          headers=auth(keys["bob"])).status_code == 422
    finally:
        for job_id in ids:
            client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(keys["bob"]))
            client.delete(f"/api/v1/jobs/{job_id}", headers=auth(keys["bob"]))


def test_workers_and_queue_depth(client, keys):
    body = client.get("/api/v1/workers", headers=auth(keys["alice"])).json()
    assert body["workers"] == [] and body["queue_depth"] == 0


def test_cli_manages_keys(service_env, token):
    import os

    env = {**os.environ, **service_env}
    name = f"cli-{token}"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service", "keys", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    created = cli("create", "--name", name)
    assert created.returncode == 0 and created.stdout.strip().startswith("ck_")
    assert cli("create", "--name", name).returncode == 1  # names are unique
    assert name in cli("list").stdout and created.stdout.strip() not in cli("list").stdout
    assert cli("revoke", "--name", name).returncode == 0
    assert name not in cli("list").stdout


@pytest.mark.parametrize("module", ["service", "worker"])
def test_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "usage" in result.stdout


def test_worker_parent_imports_no_torch():
    """The RQ parent process must never initialise CUDA: it must not even import torch.
    Nor may the jobs core, which the API imports too."""
    code = ("import sys, worker.__main__, worker.runner, worker.tasks, jobs.artifacts, "
            "jobs.connection, jobs.model_registry, jobs.policy, jobs.queue, jobs.records, "
            "jobs.settings, jobs.store, jobs.uploads; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_api_validates_recipes_without_torch():
    """The API validates every method's recipe and lists schemas without importing torch:
    torch would cost each API process seconds of start-up, hundreds of MB, and ~200 ms
    garbage-collector pauses walking its objects under load."""
    code = ("import sys, service.app; from compressors.recipe import parse_recipe; "
            "from compressors.methods import METHODS, method_schemas; method_schemas(); "
            "parse_recipe({'steps': [{'method': 'wanda', 'sparsity': 0.5}, "
            "{'method': 'perp', 'steps': 2}, {'method': 'quantize', 'bits': 4}]}); "
            "parse_recipe({'steps': [{'method': 'sparsegpt', 'pattern': '2:4'}, "
            "{'method': 'gptq'}]}); "
            "parse_recipe({'steps': [{'method': 'lowrank', 'ratio': 2}]}); "
            "assert {'magnitude', 'wanda', 'sparsegpt', 'perp', 'quantize', 'lowrank', "
            "'gptq', 'rtn'} <= set(METHODS); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_all_jobs_stream_shows_only_the_keys_jobs(client, keys, tiny_model):
    import json
    import threading

    seen: list[dict] = []
    subscribed = threading.Event()
    target: dict[str, str] = {}

    def read() -> None:
        with client.stream("GET", "/api/v1/events", headers=auth(keys["bob"])) as response:
            for line in response.iter_lines():
                subscribed.set()  # the first line comes once the server has subscribed
                if line.startswith("data: "):
                    record = json.loads(line[len("data: "):])
                    seen.append(record)
                    if record["id"] == target.get("id") and record["state"] == "cancelled":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    subscribed.wait(timeout=60)
    others = submit(client, keys["alice"])["id"]
    mine = submit(client, keys["bob"])["id"]
    target["id"] = mine
    for key, job_id in ((keys["alice"], others), (keys["bob"], mine)):
        client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(key))
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert [r["state"] for r in seen if r["id"] == mine][-1] == "cancelled"
    assert all(r["id"] != others for r in seen)
    for key, job_id in ((keys["alice"], others), (keys["bob"], mine)):
        client.delete(f"/api/v1/jobs/{job_id}", headers=auth(key))


def _start_api_processes(service_env: dict[str, str], count: int):
    """`python -m service --workers count` on a free port, once every process listens."""
    import socket
    import time

    import psutil

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--workers",
                             str(count), "--log-level", "warning"],
                            env={**os.environ, **service_env})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = [c for c in psutil.Process(proc.pid).children()
                    if any(conn.laddr.port == port for conn in c.net_connections("tcp")
                           if conn.status == psutil.CONN_LISTEN)]
        if len(children) == count:
            return proc, port, children
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{count} listening API processes expected")


def test_several_api_processes_serve_on_one_port_and_stop_cleanly(service_env):
    """`--workers 2`: two processes on their own SO_REUSEPORT sockets; SIGTERM stops both."""
    import signal

    import httpx
    import psutil

    proc, port, children = _start_api_processes(service_env, 2)
    try:
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {
                "status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs", timeout=5).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                       for child in children)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_dead_api_process_stops_the_rest(service_env):
    """No half-running API: the supervisor exits 1 so the process manager restarts it whole."""
    proc, _port, children = _start_api_processes(service_env, 2)
    try:
        children[0].kill()
        assert proc.wait(timeout=40) == 1
        children[1].wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_openapi_documents_the_typed_responses(client, keys, tiny_model):
    """Every JSON route names its response model; POST /jobs answers exactly a JobView."""
    from compressors.version import __version__
    from jobs.records import JobView

    spec = client.get("/openapi.json").json()
    assert spec["info"]["version"] == __version__

    def model(path: str, method: str, code: str) -> str:
        content = spec["paths"][path][method]["responses"][code]["content"]
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert model("/api/v1/jobs", "post", "202") == "JobView"
    assert model("/api/v1/jobs", "get", "200") == "JobPage"
    assert model("/api/v1/jobs/{job_id}", "get", "200") == "JobView"
    assert model("/api/v1/jobs/{job_id}/cancel", "post", "200") == "JobView"
    assert model("/api/v1/jobs/{job_id}/files", "get", "200") == "FileList"
    assert model("/api/v1/models", "get", "200") == "ModelList"
    assert model("/api/v1/methods", "get", "200") == "MethodList"
    assert model("/api/v1/me", "get", "200") == "Caller"
    assert model("/api/v1/workers", "get", "200") == "WorkersStatus"
    assert model("/api/v1/jobs/{job_id}/report", "get", "200") == "CompressionReport"
    assert model("/readyz", "get", "503") == "Readiness"
    view = spec["components"]["schemas"]["JobView"]["properties"]
    assert "links" in view and "model_path" not in view
    assert set(spec["components"]["schemas"]["JobState"]["enum"]) == {
        "queued", "running", "succeeded", "failed", "cancelled"}

    response = client.post("/api/v1/jobs", headers=auth(keys["alice"]),
                           json={"model": "tiny", "recipe": FAST_JOB})
    job = response.json()
    try:
        assert response.headers["location"] == job["links"]["self"]
        assert list(job) == list(JobView.model_fields)  # the declared fields, in order
        assert JobView.model_validate(job).model == "tiny"
    finally:
        client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth(keys["alice"]))
        client.delete(f"/api/v1/jobs/{job['id']}", headers=auth(keys["alice"]))


def test_all_jobs_stream_says_when_a_job_is_deleted(client, keys, tiny_model):
    """A deletion reaches the stream as a `deleted` event, so open pages drop the row."""
    import threading

    frames: list[tuple[str, dict]] = []
    subscribed = threading.Event()
    target: dict[str, str] = {}

    def read() -> None:
        import json

        event = "message"
        with client.stream("GET", "/api/v1/events", headers=auth(keys["bob"])) as response:
            for line in response.iter_lines():
                subscribed.set()
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    frames.append((event, json.loads(line[len("data: "):])))
                    if event == "deleted" and frames[-1][1]["id"] == target.get("id"):
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    subscribed.wait(timeout=60)
    job_id = submit(client, keys["bob"])["id"]
    target["id"] = job_id
    client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth(keys["bob"]))
    assert client.delete(f"/api/v1/jobs/{job_id}", headers=auth(keys["bob"])).status_code == 204
    reader.join(timeout=120)
    assert not reader.is_alive()
    mine = [(event, data["state"]) for event, data in frames if data["id"] == job_id]
    assert mine[-1] == ("deleted", "cancelled") and ("job", "queued") in mine
    assert all("model_path" not in data for _, data in frames)
