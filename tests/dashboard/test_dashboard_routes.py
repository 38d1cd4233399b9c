"""The dashboard's server side without a browser: sign-in cookie, redirects, static files.

Runs the real app in-process (FastAPI TestClient) on the real Redis, database 9, under a random
key prefix that is removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    from redis import Redis

    from jobs.settings import Settings
    from service.app import create_app
    from service.auth import KeyStore

    prefix = f"dashroutes-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix, queue_name=prefix,
                        data_dir=tmp_path)
    redis = Redis.from_url(REDIS_URL)
    keys = {"alice": KeyStore(redis, prefix).create("alice")}
    try:
        with TestClient(create_app(settings), base_url="http://testserver") as client:
            yield client, keys
    finally:
        doomed = list(redis.scan_iter(match=f"{prefix}:*")) + list(
            redis.scan_iter(match=f"rq:*{prefix}*"))
        if doomed:
            redis.delete(*doomed)
        redis.srem("rq:queues", f"rq:queue:{prefix}")
        redis.close()


def _cookie_header(response: Any) -> str:
    return "; ".join(response.headers.get_list("set-cookie"))


def test_pages_redirect_to_sign_in_when_signed_out(app_client: Any) -> None:
    client, _ = app_client
    for path in ("/", "/submit", "/models", "/workers", "/jobs/abc"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/signin"), path
    assert client.get("/submit", follow_redirects=False).headers["location"] == (
        "/signin?next=/submit")


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_clears_it(app_client: Any) -> None:
    client, keys = app_client
    bad = client.post("/signin", data={"api_key": "ck_wrong", "next": "/"},
                      follow_redirects=False)
    assert bad.status_code == 401
    assert "not valid" in bad.text
    assert "set-cookie" not in bad.headers

    good = client.post("/signin", data={"api_key": keys["alice"], "next": "/models"},
                       follow_redirects=False)
    assert good.status_code == 303
    assert good.headers["location"] == "/models"
    cookie = _cookie_header(good).lower()
    assert cookie.startswith("compressors_key=")
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert keys["alice"] not in good.headers["location"]

    page = client.get("/models")
    assert page.status_code == 200
    assert "alice" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert keys["alice"] not in page.text  # the key is never written into a page
    assert client.get("/api/v1/me").json()["name"] == "alice"  # the API accepts the cookie

    out = client.post("/signout", follow_redirects=False)
    assert out.status_code == 303
    assert 'compressors_key=""' in _cookie_header(out) or "Max-Age=0" in _cookie_header(out)
    client.cookies.clear()
    assert client.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil"])
def test_sign_in_never_redirects_off_site(app_client: Any, target: str) -> None:
    client, keys = app_client
    response = client.post("/signin", data={"api_key": keys["alice"], "next": target},
                           follow_redirects=False)
    assert response.headers["location"] == "/"


def test_static_files_are_served_and_confined(app_client: Any) -> None:
    client, _ = app_client
    js = client.get("/static/dashboard.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert client.get("/static/dashboard.css").status_code == 200
    for path in ("/static/..%2Fdashboard.py", "/static/../dashboard.py", "/static/nope.js"):
        assert client.get(path).status_code == 404, path


def test_pages_reference_only_local_assets(app_client: Any) -> None:
    client, keys = app_client
    client.post("/signin", data={"api_key": keys["alice"]})
    for path in ("/", "/submit", "/models", "/workers", "/jobs/0123"):
        html = client.get(path).text
        assert "http://" not in html and "https://" not in html, path
        assert 'src="/static/dashboard.js?v=' in html
