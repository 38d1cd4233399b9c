"""The web dashboard: server-rendered page shells, sign-in/out, and the dashboard's static files.

Pages are thin Jinja2 shells; `static/dashboard.js` fills them from the REST API under
`/api/v1` and keeps them live with Server-Sent Events. The API key travels only in the HttpOnly
cookie set here at sign-in (SameSite=Strict, never in a URL or visible to scripts), which the
API's auth accepts alongside `X-API-Key` and `Authorization: Bearer`. Every page sends a
Content-Security-Policy that allows this origin only: the dashboard makes no external requests.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from compressors.safe_strings import can_name_a_file
from jobs.connection import redis_client
from jobs.records import JobState
from jobs.settings import get_settings
from service.auth import COOKIE_NAME, KeyStore, Principal, clear_key_cookie, set_key_cookie

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Calibration/evaluation budget fields on the submit page: (group, name, label, min, max, default).
BUDGET_FIELDS = [
    ("calibration", "samples", "Calibration windows", 1, 4096, 32),
    ("calibration", "seqlen", "Calibration window length", 8, 32768, 512),
    ("evaluation", "windows", "Evaluation windows", 0, 100000, 40),
    ("evaluation", "seqlen", "Evaluation window length", 8, 32768, 512),
]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


@lru_cache(maxsize=32)
def _static_version(name: str, mtime_ns: int) -> str:
    """A short content hash, so a changed file gets a new URL and caches never serve stale JS."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    """URL of a dashboard static file, versioned by its content."""
    path = STATIC_DIR / name
    return f"/static/{name}?v={_static_version(name, path.stat().st_mtime_ns)}"


templates.env.globals["static_url"] = static_url


def _settings(request: Request) -> Any:
    """The app's settings object if it keeps one, else the process-wide settings."""
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


def _key_store(request: Request) -> KeyStore:
    """The app's key store if it keeps one, else one over the configured Redis."""
    store = getattr(request.app.state, "keys", None)
    if isinstance(store, KeyStore):
        return store
    settings = _settings(request)
    redis = getattr(request.app.state, "redis", None)
    if redis is None:
        redis = redis_client(settings.redis_url)
    return KeyStore(redis, settings.key_prefix)


def current_principal(request: Request) -> Principal | None:
    """Who the sign-in cookie belongs to, or None when absent, revoked or unknown."""
    return _key_store(request).verify(request.cookies.get(COOKIE_NAME))


def _safe_next(target: str | None) -> str:
    """Only same-site absolute paths: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _page(request: Request, name: str, page: str, title: str, status_code: int = 200,
          **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, name, {"page": page, "title": title, "nav": page, **context},
        status_code=status_code,
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _signed_in_page(request: Request, name: str, page: str, title: str, **context: Any) -> Response:
    """Render a page for a signed-in user, or send the browser to sign in first."""
    principal = current_principal(request)
    if principal is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = "/signin" if path == "/" else f"/signin?next={_quote(path)}"
        return RedirectResponse(target, status_code=303)
    return _page(request, name, page, title, signed_in=True, principal=principal, **context)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


@router.get("/signin")
def signin_form(request: Request, next: str = "/", expired: bool = False) -> Response:
    """The sign-in form (already signed-in users go straight on)."""
    if current_principal(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    notice = "Your session ended; please sign in again." if expired else None
    return _page(request, "signin.html", "signin", "Sign in", signed_in=False,
                 next=_safe_next(next), error=None, notice=notice)


@router.post("/signin")
def signin(
    request: Request, api_key: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"
) -> Response:
    """Check the key and keep it in an HttpOnly cookie; the key never appears in a URL."""
    key = api_key.strip()
    if _key_store(request).verify(key) is None:
        return _page(request, "signin.html", "signin", "Sign in", status_code=401,
                     signed_in=False, next=_safe_next(next), notice=None,
                     error="That API key is not valid. Check it and try again.")
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_key_cookie(response, key, bool(getattr(_settings(request), "cookie_secure", False)))
    return response


@router.post("/signout")
def signout(request: Request) -> Response:
    """Forget the key in this browser."""
    response = RedirectResponse("/signin", status_code=303)
    clear_key_cookie(response)
    return response


@router.get("/")
def jobs_page(request: Request) -> Response:
    """The live jobs table."""
    return _signed_in_page(request, "jobs.html", "jobs", "Jobs", states=list(JobState))


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    """One job: status, timeline, messages, report, files (the API enforces who may see it)."""
    return _signed_in_page(request, "job.html", "job", "Job", job_id=job_id, nav="jobs")


@router.get("/compare")
def compare_page(request: Request, model: str = "") -> Response:
    """All of a model's finished jobs on one size / perplexity plot (`static/search.js`)."""
    return _signed_in_page(request, "compare.html", "compare", "Compare jobs",
                           model=model[:4096], nav="jobs")


@router.get("/submit")
def submit_page(request: Request) -> Response:
    """The recipe builder."""
    return _signed_in_page(request, "submit.html", "submit", "Submit a job",
                           budget_fields=BUDGET_FIELDS)


@router.get("/models")
def models_page(request: Request) -> Response:
    """The model registry: list, upload, delete."""
    return _signed_in_page(request, "models.html", "models", "Models")


@router.get("/workers")
def workers_page(request: Request) -> Response:
    """Workers online and the queue depth."""
    return _signed_in_page(request, "workers.html", "workers", "Workers")


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """The dashboard's own CSS and JS (flat folder; nothing outside it is reachable). A name
    the file system cannot look up (too long, say) is a 404, like any other unknown name."""
    if not can_name_a_file(name):
        raise HTTPException(status_code=404, detail="not found")
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or not path.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400",
                                       "X-Content-Type-Options": "nosniff"})
