"""The Docker Compose deployment, checked without a Docker engine.

compose.yaml is validated against the Compose Specification schema kept in the repo; its
variables against .env.example; its build targets, users and copied files against the
Dockerfile; its health checks against the app's routes and a real Redis; and every image's
entrypoint is run with --help as the project command it stands for.
"""

from __future__ import annotations

import copy
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_TEXT = (DOCKER / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SCHEMA = json.loads((DOCKER / "compose-spec.json").read_text())
ENV_EXAMPLE = (DOCKER / ".env.example").read_text()
SERVICES = COMPOSE["services"]
APP_SERVICES = ["api", "worker", "worker-cpu"]
TEST_PASSWORD = "0123456789abcdef"
# Variables Compose itself reads (not interpolated in compose.yaml).
COMPOSE_BUILTINS = {"COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}
# Settings that compose.yaml deliberately neither sets nor passes through.
SETTINGS_NOT_IN_COMPOSE = {"MODEL_ROOTS"}

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


# ---- helpers: Compose interpolation, .env.example, Dockerfile, .dockerignore ------------------

def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt}; $$ -> $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if missing else current
        if op in (":?", "?"):
            if missing:
                raise KeyError(f"required variable {name}: {arg}")
            return current
        if op in (":+", "+"):
            return "" if missing else arg
        return current or ""

    parts = value.split("$$")
    return "$".join(VAR.sub(one, part) for part in parts)


def strings(value) -> list[str]:
    """Every string of a loaded YAML document, keys included (comments are gone)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*strings(k), *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def variable_uses() -> list[tuple[str, str, str]]:
    """(name, operator, argument) of every interpolation in compose.yaml; $$ escapes skipped."""
    return [(m.group(1), m.group(2) or "", m.group(3) or "") for text in strings(COMPOSE)
            for part in text.split("$$") for m in VAR.finditer(part)]


def used_variables() -> dict[str, set[str]]:
    """Every interpolated variable of compose.yaml with the operators it is used with."""
    found: dict[str, set[str]] = {}
    for name, op, _ in variable_uses():
        found.setdefault(name, set()).add(op)
    return found


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source (volume name, host path or ${...}) of a service's volumes."""
    found = {}
    for entry in service.get("volumes", []):
        match = re.fullmatch(r"(.+):(/[^:]*)(?::(?:ro|rw))?", entry)
        assert match, f"not a short volume syntax: {entry}"
        found[match.group(2)] = match.group(1)
    return found


def passed_through() -> set[str]:
    """Environment keys without a value: Compose passes them from .env or the shell."""
    names = set()
    for name in APP_SERVICES:
        env = SERVICES[name].get("environment") or {}
        names |= {key for key, value in env.items() if value is None}
    return names


def env_example() -> dict[str, str]:
    """NAME -> value of every `NAME=value` or `# NAME=value` line of .env.example."""
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE, re.MULTILINE)}


def example_environment(**overrides: str) -> dict[str, str]:
    """What docker/.env would give after `cp .env.example .env`: active lines only."""
    env = {m.group(1): m.group(2) for m in
           re.finditer(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE, re.MULTILINE)}
    env.update(overrides)
    return env


def dockerfile() -> tuple[dict[str, str], dict[str, dict]]:
    """(global ARG defaults, stages by name with base, parent stage and instructions)."""
    text = (DOCKER / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines)).splitlines()
    args: dict[str, str] = {}
    stages: dict[str, dict] = {}
    current = None
    for line in logical:
        if not line.strip():
            continue
        instr, _, rest = line.strip().partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else base
            current = stages[name] = {"base": base, "parent": stages.get(base), "steps": []}
        elif current is None and instr == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default.strip('"')
        elif current is not None:
            current["steps"].append((instr, rest))
    return args, stages


def chain(stages: dict[str, dict], target: str) -> list[tuple[str, str]]:
    """Instructions in effect for a target: its ancestors' first."""
    steps: list[tuple[str, str]] = []
    stage = stages[target]
    while stage is not None:
        steps = stage["steps"] + steps
        stage = stage["parent"]
    return steps


def effective_argv(service: str) -> tuple[list[str], list[str]]:
    """(entrypoint, command) a Compose service's container runs, with Docker's rules."""
    _, stages = dockerfile()
    entrypoint: list[str] = []
    command: list[str] = []
    for instr, rest in chain(stages, SERVICES[service]["build"]["target"]):
        if instr == "ENTRYPOINT":
            entrypoint, command = json.loads(rest), []
        elif instr == "CMD":
            command = json.loads(rest)
    spec = interpolate(SERVICES[service], example_environment(REDIS_PASSWORD=TEST_PASSWORD))
    if "entrypoint" in spec:
        entrypoint, command = spec["entrypoint"], []
    if "command" in spec:
        command = spec["command"]
    return entrypoint, command


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        alternatives = [pattern] + ([pattern[3:]] if pattern.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(p, alt) for p in prefixes for alt in alternatives):
            ignored = not negate
    return ignored


def local_argv(argv: list[str]) -> list[str]:
    """An image's program as it runs in this checkout: the venv's python, docker/gpu-slot.sh."""
    local = {"python": sys.executable, "gpu-slot": str(DOCKER / "gpu-slot.sh")}
    program = []
    for arg in argv:  # the program, and the one a wrapper (gpu-slot) runs
        program.append(local.get(arg, arg))
        if arg not in local:
            break
    return program + argv[len(program):]


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_class():
    try:
        from jobs.settings import Settings
    except ImportError as exc:  # the service is not there yet
        pytest.skip(f"jobs.settings not importable: {exc}")
    return Settings


def settings_env_names(settings) -> dict[str, str]:
    """Plain environment name -> field name of every setting."""
    names = {}
    for field, info in settings.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None) or [field.upper()]
        for choice in choices:
            if isinstance(choice, str) and not choice.startswith("COMPRESSORS_"):
                names[choice] = field
    return names


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    assert parts and "".join(a + u for a, u in parts) == text, f"not a Compose duration: {text}"
    return sum(float(a) * units[u] for a, u in parts)


# ---- the schema and the file as a whole ---------------------------------------------------------

def test_schema_is_the_recorded_compose_spec():
    readme = (DOCKER / "README.md").read_text()
    digest = hashlib.sha256((DOCKER / "compose-spec.json").read_bytes()).hexdigest()
    assert digest in readme, "docker/README.md must record the schema's sha256 and source"
    assert SCHEMA["title"] == "Compose Specification"
    jsonschema.validators.validator_for(SCHEMA).check_schema(SCHEMA)


def test_compose_validates_against_the_compose_spec():
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert not errors, errors
    # As Compose sees it once docker/.env is filled in, too.
    rendered = interpolate(COMPOSE, example_environment(REDIS_PASSWORD=TEST_PASSWORD))
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(rendered)]
    assert not errors, errors


@pytest.mark.parametrize("mutate", [
    lambda c: c["services"]["worker"].update(gpus_per_worker=1),
    lambda c: c["services"]["api"].update(ports="8000:8000"),
    lambda c: c["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    .pop("capabilities"),
    lambda c: c.update(service={}),
], ids=["unknown-key", "wrong-type", "device-without-capabilities", "typo-top-level"])
def test_schema_rejects_broken_files(mutate):
    broken = copy.deepcopy(COMPOSE)
    mutate(broken)
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    assert list(validator.iter_errors(broken)), "the schema must catch this"


# ---- variables ----------------------------------------------------------------------------------

def test_every_variable_is_documented_in_env_example():
    documented = env_example()
    used = set(used_variables()) | passed_through()
    assert not used - set(documented), f"undocumented in .env.example: {used - set(documented)}"
    stale = set(documented) - used - COMPOSE_BUILTINS
    assert not stale, f".env.example documents variables compose.yaml never uses: {stale}"
    # Each documented variable sits under a comment that says what it is.
    for block in re.split(r"\n\s*\n", ENV_EXAMPLE):
        lines = block.strip().splitlines()
        if any(re.match(r"^#? ?[A-Z][A-Z0-9_]*=", line) for line in lines):
            prose = [ln for ln in lines if ln.startswith("#") and not re.match(r"^# ?[A-Z_]+=", ln)]
            assert prose, f"variables without an explanation:\n{block}"


def test_documented_defaults_match_compose_defaults():
    documented = env_example()
    for name, op, default in variable_uses():
        if op == ":-":
            assert documented[name] == default, f"{name}: .env.example says {documented[name]!r}"


def test_required_settings_use_the_error_form():
    used = used_variables()
    required = {name for name, ops in used.items() if ":?" in ops}
    assert required == {"REDIS_PASSWORD"}
    assert used["REDIS_PASSWORD"] == {":?"}, "every use of the password must be required"
    assert example_environment()["REDIS_PASSWORD"] == "", ".env.example must not ship a password"
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        interpolate(COMPOSE, example_environment())
    rendered = interpolate(COMPOSE, example_environment(REDIS_PASSWORD=TEST_PASSWORD))
    for name in APP_SERVICES:
        url = rendered["services"][name]["environment"]["REDIS_URL"]
        assert url == f"redis://:{TEST_PASSWORD}@redis:6379/0"


def test_compose_environment_matches_the_service_settings():
    Settings = settings_class()
    names = settings_env_names(Settings)
    documented = env_example()
    for service in APP_SERVICES:
        env = SERVICES[service]["environment"]
        extra = {"WORKER_GPUS"} if service == "worker" else set()
        unknown = set(env) - set(names) - extra
        assert not unknown, f"{service} sets variables the settings do not read: {unknown}"
        missing = set(names) - set(env) - SETTINGS_NOT_IN_COMPOSE
        assert not missing, f"{service}: settings neither set nor passed through: {missing}"
    for env_name in passed_through():
        value, field = documented[env_name], names[env_name]
        default = Settings.model_fields[field].default
        if value == "":
            assert default is None, f"{env_name}: .env.example must show the default {default}"
            continue
        parsed = getattr(Settings(**{field: value}), field)
        assert parsed == default, f".env.example: {env_name}={value}, service default {default}"


# ---- Dockerfile, build targets, images ---------------------------------------------------------

def test_every_build_target_exists_in_the_dockerfile():
    _, stages = dockerfile()
    built = {name: svc["build"] for name, svc in SERVICES.items() if "build" in svc}
    assert set(built) == set(APP_SERVICES)
    for name, build in built.items():
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        assert build["target"] in stages, f"{name}: no stage {build['target']!r}"
    assert {"api", "worker", "worker-cpu"} <= set(stages)


def test_worker_image_is_cuda_and_the_others_cpu():
    args, stages = dockerfile()
    cuda_base = r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+"
    assert re.fullmatch(cuda_base, stages["worker"]["base"]), stages["worker"]["base"]
    steps = {target: " ".join(rest for _, rest in chain(stages, target)) for target in stages}
    assert "build-cuda" in steps["worker"] and "build-cpu" not in steps["worker"]
    for target in ("api", "worker-cpu"):
        assert "build-cpu" in steps[target] and "build-cuda" not in steps[target]
    assert re.search(r"/whl/cu\d+$", args["TORCH_CUDA_INDEX_URL"])
    assert args["TORCH_CPU_INDEX_URL"].endswith("/whl/cpu")
    assert "TORCH_CUDA_INDEX_URL" in steps["build-cuda"]
    assert "torch.version.cuda" in steps["build-cuda"], "the CUDA build must check its torch"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    assert f"torch=={args['TORCH_VERSION']}" in deps, "Dockerfile and pyproject pin different torch"
    compose_torch = COMPOSE["x-build"]["args"]["TORCH_VERSION"]
    assert compose_torch == f"${{TORCH_VERSION:-{args['TORCH_VERSION']}}}"
    assert any(dep.startswith("bitsandbytes") for dep in deps), "the images install bitsandbytes"


def test_images_run_as_a_non_root_user_and_hold_no_secrets():
    args, stages = dockerfile()
    for target in APP_SERVICES:
        users = [rest for instr, rest in chain(stages, target) if instr == "USER"]
        assert users and users[-1] not in ("root", "0", "0:0"), f"{target} runs as root"
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.IGNORECASE)
    for name, stage in stages.items():
        for instr, rest in stage["steps"]:
            if instr in ("ENV", "ARG", "LABEL"):
                assert not secret.search(rest), f"{name}: {instr} {rest}"
            if instr in ("COPY", "ADD"):
                assert ".env" not in rest, f"{name}: copies an env file"
    assert not any(secret.search(name) for name in args)


def test_copied_files_exist_and_are_in_the_build_context():
    _, stages = dockerfile()
    copied = []
    for stage in stages.values():
        for instr, rest in stage["steps"]:
            words = rest.split()
            if instr == "COPY" and not any(w.startswith("--from") for w in words):
                copied += [w for w in words[:-1] if not w.startswith("--")]
    needed = {"pyproject.toml", "compressors", "jobs", "service", "worker",
              "docker/gpu-slot.sh"}
    assert needed <= set(copied), needed - set(copied)
    for source in copied:
        if any(ch in source for ch in "*?["):
            continue
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_local_state_out():
    for path in (".env", "docker/.env", ".git/config", ".venv/bin/python", "data/artifacts/x",
                 "service/__pycache__/app.cpython-311.pyc"):
        assert dockerignored(path), path
    for path in ("pyproject.toml", "README.md", "compressors/__init__.py", "docker/gpu-slot.sh"):
        assert not dockerignored(path), path


# ---- services -----------------------------------------------------------------------------------

def test_redis_is_durable_password_protected_and_checked():
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--requirepass ${REDIS_PASSWORD:?" in command
    assert redis["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert mounts(redis)["/data"] in COMPOSE["volumes"], "Redis data must live in a named volume"


def test_api_and_workers_wait_for_healthy_redis_and_share_storage():
    for name in APP_SERVICES:
        svc = SERVICES[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), name
        env = svc["environment"]
        assert mounts(svc)[env["DATA_DIR"]] == "${DATA_VOLUME:-data}", name
        assert mounts(svc)[env["MODELS_DIR"]] == "${MODELS_VOLUME:-models}", name
    assert {"data", "models", "redis-data", "gpu-slots"} <= set(COMPOSE["volumes"])
    assert SERVICES["api"]["ports"] == ["${API_BIND:-0.0.0.0}:${API_PORT:-8000}:8000"]


def test_workers_get_one_gpu_each_scale_and_stop_gracefully():
    worker = SERVICES["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # Every replica sees the host's GPUs; gpu-slot (the entrypoint) claims one for it.
    assert device["count"] == "all"
    assert effective_argv("worker")[0][0] == "gpu-slot"
    assert mounts(worker)["/run/gpu-slots"] in COMPOSE["volumes"]
    for name in ("worker", "worker-cpu"):
        svc = SERVICES[name]
        assert "container_name" not in svc and "ports" not in svc, f"{name} must scale"
        grace = interpolate(svc["stop_grace_period"], {})
        assert duration_seconds(grace) >= 300, f"{name}: {grace} is too short to finish a step"
    assert SERVICES["worker-cpu"]["profiles"] == ["cpu"]
    assert "profiles" not in worker and "profiles" not in SERVICES["api"]
    assert "deploy" not in SERVICES["worker-cpu"], "the CPU worker must not ask for a GPU"


# ---- health checks ------------------------------------------------------------------------------

def api_health_urls() -> list[str]:
    test = SERVICES["api"]["healthcheck"]["test"]
    return re.findall(r"https?://[^'\"\s]+", " ".join(test))


def test_api_healthcheck_names_real_endpoints():
    urls = api_health_urls()
    assert urls, "the API health check must call an endpoint"
    try:
        from jobs.settings import Settings
        from service.app import create_app
    except ImportError as exc:
        pytest.skip(f"service.app not importable: {exc}")
    from fastapi.testclient import TestClient

    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/15"))
    client = TestClient(app)
    _, command = effective_argv("api")
    port = command[command.index("--port") + 1]
    for url in urls:
        match = re.fullmatch(r"http://(127\.0\.0\.1|localhost):(\d+)(/[^?#]*)", url)
        assert match, url
        assert match.group(2) == port, f"{url}: the API listens on {port}"
        status = client.get(match.group(3)).status_code
        assert status not in (404, 405), f"{url}: no such route of the app"
        if match.group(3) == "/healthz":
            assert status == 200
    assert any(url.endswith("/healthz") for url in urls)


def test_api_healthcheck_passes_against_the_running_api(tmp_path):
    pytest.importorskip("service.app")
    entrypoint, command = effective_argv("api")
    port = str(free_port())
    command = [port if arg == "8000" else arg for arg in command]
    command[command.index("--host") + 1] = "127.0.0.1"
    env = {"REDIS_URL": "redis://127.0.0.1:6379/15", "DATA_DIR": str(tmp_path),
           "KEY_PREFIX": f"test-docker-{uuid.uuid4().hex[:8]}"}
    test = SERVICES["api"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    check = local_argv([arg.replace(":8000/", f":{port}/") for arg in test[1:]])
    assert run(check, timeout=30).returncode != 0, "the check must fail while nothing listens"
    log = tmp_path / "api.log"
    with open(log, "w") as out:
        server = subprocess.Popen(local_argv(entrypoint + command), cwd=ROOT,
                                  env={**os.environ, **env}, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while True:
            result = run(check, timeout=30)
            if result.returncode == 0:
                break
            assert server.poll() is None, f"the API exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, result.stderr[-2000:]
            time.sleep(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_redis_command_and_healthcheck_work_on_a_real_redis(tmp_path):
    for binary in ("redis-server", "redis-cli"):
        if subprocess.run(["which", binary], capture_output=True).returncode:
            pytest.skip(f"{binary} not installed")
    redis = interpolate(SERVICES["redis"], example_environment(REDIS_PASSWORD=TEST_PASSWORD))
    port = str(free_port())
    server = subprocess.Popen([*redis["command"], "--port", port, "--dir", str(tmp_path),
                               "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    check_kind, check = redis["healthcheck"]["test"]
    assert check_kind == "CMD-SHELL"
    check = check.replace("redis-cli", f"redis-cli -p {port}")

    def healthy(password: str) -> bool:
        result = subprocess.run(["sh", "-c", check], capture_output=True, timeout=10,
                                env={**os.environ, **redis["environment"],
                                     "REDISCLI_AUTH": password})
        return result.returncode == 0

    try:
        deadline = time.monotonic() + 20
        while not healthy(redis["environment"]["REDISCLI_AUTH"]):
            assert time.monotonic() < deadline, "Redis never became healthy"
            time.sleep(0.2)
        assert not healthy("wrong-password"), "the check must fail without the password"
        cli = ["redis-cli", "-p", port, "--no-auth-warning", "-a", TEST_PASSWORD]
        for key, want in (("appendonly", "yes"), ("maxmemory-policy", "noeviction")):
            out = subprocess.run([*cli, "config", "get", key], capture_output=True, text=True)
            assert out.stdout.split() == [key, want]
    finally:
        server.terminate()
        server.wait(timeout=20)


# ---- entrypoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("service", APP_SERVICES)
def test_image_entrypoint_is_a_project_command_that_answers_help(service):
    entrypoint, command = effective_argv(service)
    assert entrypoint[-2:] == ["-m", {"api": "service"}.get(service, "worker")], entrypoint
    # (gpu-slot runs --help at once: it needs no GPU, and there is none here.)
    result = run(local_argv([*entrypoint, "--help"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout.lower()
    # Every option the image or compose.yaml passes is one the command accepts.
    for option in (arg for arg in command if arg.startswith("--")):
        assert re.search(rf"(^|\s){re.escape(option)}\b", result.stdout), (
            f"{service}: {shlex.join(command)} passes {option}, unknown to the command")


def test_keys_command_of_the_docs_answers_help():
    result = run([sys.executable, "-m", "service", "keys", "create", "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--name" in result.stdout and "--admin" in result.stdout


def test_gpu_slot_gives_each_worker_its_own_gpu(tmp_path):
    slot = str(DOCKER / "gpu-slot.sh")
    env = {"WORKER_GPUS": "0,1", "GPU_SLOT_DIR": str(tmp_path)}
    env_without_cuda = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]

    def claim():
        return subprocess.run([slot, *show], env={**env_without_cuda, **env},
                              capture_output=True, text=True, timeout=30)

    assert claim().stdout.strip() == "0", "a free GPU 0 is taken first"
    with open(tmp_path / "gpu-0.lock", "a") as held:  # another container holds GPU 0
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert claim().stdout.strip() == "1"
        with open(tmp_path / "gpu-1.lock", "a") as held_too:
            fcntl.flock(held_too, fcntl.LOCK_EX | fcntl.LOCK_NB)
            full = claim()
            assert full.returncode != 0 and "already has a worker" in full.stderr
    assert claim().stdout.strip() == "0", "a claim ends with the process that held it"
    pinned = subprocess.run([slot, *show], env={**env_without_cuda, **env,
                                                "CUDA_VISIBLE_DEVICES": "3"},
                            capture_output=True, text=True, timeout=30)
    assert pinned.stdout.strip() == "3"


# ---- the deployment guide ----------------------------------------------------------------------

def test_deploy_guide_names_real_services_volumes_and_variables():
    readme = (ROOT / "docs" / "deployment.md").read_text()
    assert "\n## Deploy with Docker Compose\n" in readme
    guide = readme.split("\n## Deploy with Docker Compose\n", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```bash\n(.*?)```", guide, re.DOTALL))
    services = set(re.findall(r"--scale ([\w-]+)=", code))
    services |= set(re.findall(r"docker compose (?:exec|logs|pull|stop) ([\w-]+)", code))
    services |= set(re.findall(r"docker compose cp ([\w-]+):", code))
    assert {"worker", "worker-cpu", "api", "redis"} <= services
    assert services <= set(SERVICES), services - set(SERVICES)
    volumes = set(re.findall(rf"{COMPOSE['name']}_([\w-]+):", code))
    assert volumes and volumes <= set(COMPOSE["volumes"]), volumes - set(COMPOSE["volumes"])
    documented = set(env_example()) | {"COMPOSE_FILE"}
    assigned = set(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]+)=", code, re.MULTILINE))
    assert assigned and assigned <= documented, assigned - documented
