"""The console over plain HTTP (no browser): sign-in redirects, headers, static files, the API
paths it must leave alone, and the OpenAPI security schemes that make Swagger's Authorize work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.console.conftest import World

pytestmark = pytest.mark.postgres


@contextmanager
def _session(world: World, username: str = "admin",
             password: str | None = None) -> Iterator[httpx.Client]:
    """A client holding the session cookie of a browser-style login."""
    with httpx.Client(base_url=world.base, timeout=30, follow_redirects=False) as c:
        r = c.post("/api/auth/login", json={"username": username,
                                            "password": password or world.admin_password})
        assert r.status_code == 200, r.text
        yield c


@pytest.mark.parametrize("path", ["/", "/costs", "/instances", "/keys", "/logs", "/deployments",
                                  "/catalog", "/profile", "/people",
                                  "/playground"])
def test_pages_redirect_to_sign_in_when_signed_out(console_world: World, path: str) -> None:
    r = httpx.get(console_world.base + path, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")
    if path != "/":
        assert r.headers["location"] == f"/login?next={path}"


def test_sign_in_page_is_labelled_and_locked_down(console_world: World) -> None:
    r = httpx.get(console_world.base + "/login")
    assert r.status_code == 200
    assert '<label for="username">' in r.text and '<label for="password">' in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in r.text  # no inline script: the CSP would refuse it


@pytest.mark.parametrize("nxt", ["//evil.example", "https://evil.example/", "/\\evil.example"])
def test_sign_in_never_redirects_off_site(console_world: World, nxt: str) -> None:
    r = httpx.get(console_world.base + "/login", params={"next": nxt})
    assert 'data-next="/costs"' in r.text


def test_signed_in_pages_render_for_the_caller(console_world: World) -> None:
    with _session(console_world) as c:
        for path in ("/costs", "/instances", f"/instances/{console_world.live_instance}",
                     "/keys", "/logs", "/deployments", "/catalog", "/profile", "/people",
                     "/playground"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.status_code)
            assert ">admin<" in r.text or "admin <span" in r.text
        assert c.get("/login").status_code == 303  # already signed in
        assert c.get("/instances/not-a-uuid").status_code == 404


def test_member_sees_no_admin_controls(console_world: World) -> None:
    m = console_world.member_b
    with _session(console_world, m.username, m.password) as c:
        r = c.get(f"/instances/{console_world.live_instance}")
        assert r.status_code == 200
        assert 'id="terminate"' not in r.text
        assert 'data-admin="false"' in r.text
        assert "console-org-b" in c.get("/keys").text
        assert "console-org-a" not in c.get("/keys").text


def test_static_files_and_the_vendored_licence(console_world: World) -> None:
    for path, kind in [("/static/console.js", "javascript"), ("/static/console.css", "css"),
                       ("/static/vendor/uplot/uPlot.iife.min.js", "javascript")]:
        r = httpx.get(console_world.base + path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
    lic = httpx.get(console_world.base + "/static/vendor/uplot/LICENSE")
    assert lic.status_code == 200 and "MIT License" in lic.text
    assert httpx.get(console_world.base + "/static/../app.py").status_code == 404


def test_api_paths_keep_their_json_errors(console_world: World) -> None:
    base = console_world.base
    r = httpx.get(base + "/api/no-such-route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.put(base + "/api/instances", json={})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(base + "/healthz").status_code == 200
    assert httpx.get(base + "/api/docs").status_code == 200


def test_openapi_security_schemes_follow_access_levels(console_world: World) -> None:
    schema = httpx.get(console_world.base + "/api/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["session"]["scheme"] == "bearer"
    assert schemes["sessionCookie"]["in"] == "cookie"
    paths = schema["paths"]
    assert "security" not in paths["/api/auth/login"]["post"]
    assert paths["/api/instances"]["get"]["security"] == [{"session": []},
                                                          {"sessionCookie": []}]
    assert paths["/api/internal/usage"]["post"]["security"] == [{"serviceToken": []}]
    assert not any(p == "/costs" or p.startswith("/static") for p in paths)


def test_a_swagger_style_bearer_call_works(console_world: World) -> None:
    tok = httpx.post(console_world.base + "/api/auth/login",
                     json={"username": "admin", "password": console_world.admin_password}
                     ).json()["access_token"]
    r = httpx.get(console_world.base + "/api/auth/me", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200 and r.json()["username"] == "admin"


def test_inventiv_up_prints_the_console_url() -> None:
    from cli.up import console_url

    assert console_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/"
