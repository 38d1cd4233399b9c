"""Service settings, read once from the environment (prefix `COMPRESSORS_` or the plain name).

One object holds every knob the API, the worker and the run script share, so the three agree
on where Redis is, where artifacts live and how long a job may run.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str, default, description: str, **kwargs):
    """A field readable as `COMPRESSORS_<NAME>` or plain `<NAME>` (the prefixed one wins)."""
    return Field(
        default,
        validation_alias=AliasChoices(f"COMPRESSORS_{name}", name),
        description=description,
        **kwargs,
    )


class Settings(BaseSettings):
    """Everything configurable; see the settings table in docs/service.md."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str = _env("REDIS_URL", "redis://127.0.0.1:6379/0",
                          "Redis holding queue, jobs, keys")
    data_dir: Path = _env("DATA_DIR", Path("./data"), "artifacts/, uploads/ and staging live here")
    models_dir: Path | None = _env("MODELS_DIR", None, "server-side models folder, listed to all")
    model_roots: str = _env(
        "MODEL_ROOTS", "", "extra folders (os.pathsep-separated) a job may name by server path"
    )
    key_prefix: str = _env("KEY_PREFIX", "compressors", "prefix of the service's own Redis keys")
    queue_name: str = _env("QUEUE_NAME", "compressors", "RQ queue name")
    job_timeout: int = _env("JOB_TIMEOUT", 6 * 3600, "seconds a job may run before it is killed",
                            ge=10)
    job_retries: int = _env("JOB_RETRIES", 2, "re-runs of a job whose worker died", ge=0, le=10)
    result_ttl: int = _env("RESULT_TTL", 7 * 86400, "seconds RQ keeps its own finished-job data")
    max_upload_bytes: int = _env("MAX_UPLOAD_BYTES", 2 * 1024**3, "largest accepted model upload")
    max_unpacked_bytes: int = _env("MAX_UNPACKED_BYTES", 8 * 1024**3,
                                   "largest total size of an unpacked upload")
    max_archive_members: int = _env("MAX_ARCHIVE_MEMBERS", 1000,
                                    "most files and folders one uploaded archive may hold (413 "
                                    "beyond; an HF model folder holds tens)", ge=1)
    max_models_per_key: int = _env("MAX_MODELS_PER_KEY", 20,
                                   "uploaded models one key may store (429 beyond)", ge=1)
    max_upload_bytes_per_key: int = _env("MAX_UPLOAD_BYTES_PER_KEY", 32 * 1024**3,
                                         "unpacked bytes of all of one key's uploads together "
                                         "(429 beyond)", ge=1)
    worker_ttl: int = _env("WORKER_TTL", 60,
                           "worker heartbeat TTL; idle workers wake every TTL-15 s", ge=16)
    job_monitoring_interval: int = _env("JOB_MONITORING_INTERVAL", 10,
                                        "seconds between a busy worker's heartbeats", ge=1)
    heartbeat_grace: int = _env("HEARTBEAT_GRACE", 30,
                                "seconds past a missed heartbeat before a job counts as abandoned",
                                ge=1)
    maintenance_interval: int = _env("MAINTENANCE_INTERVAL", 30,
                                     "seconds between a worker's sweeps for abandoned jobs", ge=1)
    progress_interval: float = _env("PROGRESS_INTERVAL", 2.0,
                                    "a running job rewrites its record at least this often (s)")
    device: str | None = _env("DEVICE", None, "torch device for jobs (default: cuda if visible)")
    torch_threads: int | None = _env("TORCH_THREADS", None, "torch CPU threads inside a job")
    page_size_max: int = _env("PAGE_SIZE_MAX", 200, "largest page of GET /jobs")
    max_json_bytes: int = _env("MAX_JSON_BYTES", 1024**2,
                               "largest request body other than a model upload (413 beyond)",
                               ge=1024)
    max_streams_per_key: int = _env("MAX_STREAMS_PER_KEY", 16,
                                    "open event streams one key may hold per API process "
                                    "(429 beyond)", ge=1)
    max_uploads_per_key: int = _env("MAX_UPLOADS_PER_KEY", 2,
                                    "uploads one key may have in progress per API process", ge=1)
    max_active_jobs_per_key: int = _env("MAX_ACTIVE_JOBS_PER_KEY", 100,
                                        "queued and running jobs one key may have", ge=1)
    max_recipe_bytes: int = _env("MAX_RECIPE_BYTES", 32 * 1024,
                                 "largest recipe or goal, as JSON with defaults filled in "
                                 "(422 beyond): it is stored with the job and sent on every "
                                 "job page",
                                 ge=1024)
    submission_check_seconds: float = _env(
        "SUBMISSION_CHECK_SECONDS", 20.0, "deadline of a submission's file checks (model "
        "folder, headers, layer patterns, memory estimate); 503 beyond", gt=0)
    submission_check_processes: int = _env(
        "SUBMISSION_CHECK_PROCESSES", 2, "child processes per API process that run "
        "submission checks off the event loop, one check at a time each", ge=1, le=64)
    cookie_secure: bool = _env("COOKIE_SECURE", False, "mark the sign-in cookie Secure (HTTPS)")

    @model_validator(mode="after")
    def _redis_of_scripts_serve(self) -> Settings:
        """With REDIS_URL unset, the Redis that scripts/serve runs for this DATA_DIR (it writes
        the URL to DATA_DIR/redis/url), so the CLI and a worker started by hand talk to the
        same Redis as the service instead of an empty one on the default port."""
        if "redis_url" not in self.model_fields_set:
            written = self.data_dir / "redis" / "url"
            if written.is_file():
                self.redis_url = written.read_text(encoding="utf-8").strip() or self.redis_url
        return self

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def allowed_model_roots(self) -> list[Path]:
        """Folders whose contents a job may name by absolute server path."""
        roots = [Path(p) for p in self.model_roots.split(":") if p]
        if self.models_dir is not None:
            roots.append(self.models_dir)
        return [root.resolve() for root in roots]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests clear the cache after changing the environment)."""
    return Settings()
