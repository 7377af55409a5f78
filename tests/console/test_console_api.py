"""The API routes the console added (own sessions, password-reset links, the playground's
checks) and the links to the Ray dashboard and Grafana, over plain HTTP against the live
console server of conftest (real Postgres, real uvicorn)."""

from __future__ import annotations

import httpx
import pytest

from tests.console.conftest import World
from tests.console.test_console_http import _session


def _admin(world: World) -> httpx.Client:
    """A bearer-token client of the admin (a script's way; the cookie's needs a same-site
    Origin on writes)."""
    tok = _login(world, "admin", world.admin_password, "admin-script/1")
    return httpx.Client(base_url=world.base, timeout=30,
                        headers={"Authorization": f"Bearer {tok}"})

pytestmark = pytest.mark.postgres


def _login(world: World, username: str, password: str, agent: str) -> str:
    r = httpx.post(world.base + "/api/auth/login", headers={"User-Agent": agent},
                   json={"username": username, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_own_sessions_are_listed_and_one_is_revoked(console_world: World) -> None:
    m = console_world.member_a
    one = {"Authorization": "Bearer " + _login(console_world, m.username, m.password, "first/1")}
    two = {"Authorization": "Bearer " + _login(console_world, m.username, m.password, "second/2")}
    base = console_world.base
    items = httpx.get(base + "/api/sessions", headers=one, timeout=30).json()["items"]
    agents = {i["user_agent"]: i for i in items}
    assert agents["first/1"]["current"] is True and agents["second/2"]["current"] is False
    # Another user cannot see nor end them: 404, as for a session that does not exist.
    other = console_world.member_b.headers
    assert all(i["id"] not in httpx.get(base + "/api/sessions", headers=other,
                                        timeout=30).text for i in items)
    r = httpx.delete(f"{base}/api/sessions/{agents['second/2']['id']}", headers=other, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(f"{base}/api/sessions/{agents['second/2']['id']}", headers=one, timeout=30)
    assert r.status_code == 204
    assert httpx.get(base + "/api/auth/me", headers=two, timeout=30).status_code == 401
    assert httpx.get(base + "/api/auth/me", headers=one, timeout=30).status_code == 200
    again = httpx.delete(f"{base}/api/sessions/{agents['second/2']['id']}", headers=one,
                         timeout=30)
    assert again.status_code == 404
    assert httpx.delete(base + "/api/sessions/not-a-uuid", headers=one,
                        timeout=30).status_code == 422


def test_a_reset_link_sets_the_password_once(console_world: World) -> None:
    base = console_world.base
    with _admin(console_world) as admin:
        made = admin.post("/api/users", json={"username": "reset-me", "email": "r@example.com",
                                              "password": "the-first-password"})
        assert made.status_code == 201, made.text
        target = made.json()
        r = admin.post(f"/api/users/{target['id']}/reset-link", json={})
        assert r.status_code == 201, r.text
        link = r.json()
    assert link["url"].startswith("/reset#")
    token = link["url"].split("#", 1)[1]
    # Only platform admins make links.
    r = httpx.post(f"{base}/api/users/{target['id']}/reset-link",
                   headers=console_world.member_a.headers, json={}, timeout=30)
    assert r.status_code == 403
    # The page is public and its HTML never holds the token (it stays in the fragment).
    page = httpx.get(base + "/reset", timeout=30)
    assert page.status_code == 200 and 'id="reset-form"' in page.text
    bad = httpx.post(base + "/api/auth/password-reset",
                     json={"token": token[:-2] + "xx", "new_password": "a-new-password-1"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_reset_token"
    old_session = {"Authorization": "Bearer " + _login(console_world, "reset-me",
                                                        "the-first-password", "old/1")}
    ok = httpx.post(base + "/api/auth/password-reset",
                    json={"token": token, "new_password": "a-new-password-1"}, timeout=30)
    assert ok.status_code == 204, ok.text
    assert httpx.get(base + "/api/auth/me", headers=old_session, timeout=30).status_code == 401
    reused = httpx.post(base + "/api/auth/password-reset",
                        json={"token": token, "new_password": "another-password-2"}, timeout=30)
    assert reused.status_code == 400  # single use: the password hash it was bound to changed
    _login(console_world, "reset-me", "a-new-password-1", "reset/1")
    short = httpx.post(base + "/api/auth/password-reset", json={"token": token,
                                                                "new_password": "x"})
    assert short.status_code == 422


def test_playground_checks_membership_deployment_and_configuration(
        console_world: World) -> None:
    base = console_world.base
    m = console_world.member_a
    body = {"org_id": str(console_world.org_a), "model": "nope",
            "messages": [{"role": "user", "content": "hi"}]}
    # A member of another org: refused (the org is named in the body).
    r = httpx.post(base + "/api/playground/chat", json=body,
                   headers=console_world.member_b.headers, timeout=30)
    assert r.status_code == 403
    r = httpx.post(base + "/api/playground/chat", json=body, headers=m.headers, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    models = httpx.get(base + "/api/playground/models", params={"org_id": str(console_world.org_a)},
                       headers=m.headers, timeout=30)
    assert models.status_code == 200
    bad = httpx.post(base + "/api/playground/chat", headers=m.headers, timeout=30,
                     json={**body, "messages": [{"role": "tool", "content": "x"}]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    # A platform admin who is no member of the org: told to join (usage is billed to a key
    # of a member), not a 500.
    with _admin(console_world) as admin:
        r = admin.post("/api/playground/chat", json=body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "playground_needs_membership"


def test_links_to_the_ray_dashboard_and_grafana_when_configured(console_world: World) -> None:
    app = console_world.app
    before = app.state.settings
    with _session(console_world) as c:
        assert "Ray dashboard" not in c.get("/costs").text
        app.state.settings = before.model_copy(
            update={"ray_dashboard_url": "http://ray.example.test:8265"})
        try:
            page = c.get("/costs").text
        finally:
            app.state.settings = before
    assert 'href="http://ray.example.test:8265"' in page and "Ray dashboard" in page
