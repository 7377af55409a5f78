"""/api/auth: login by username or email, cookies, logout, me, password change, throttling."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from http.cookies import SimpleCookie

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_api.app import create_app
from control_api.settings import Settings
from core.db import utcnow
from core.models import ActionLog, LoginAttempt, Role, User, UserSession
from tests.conftest import ADMIN_PASSWORD, Factory


def _login(c: TestClient, username: str, password: str):  # noqa: ANN202
    return c.post("/api/auth/login", json={"username": username, "password": password})


def _set_cookie_header(r) -> str:  # noqa: ANN001
    # The session cookie (the CSRF double-submit cookie is set beside it).
    headers = [v for k, v in r.headers.multi_items() if k.lower() == "set-cookie"
               and not v.startswith("inventiv_csrf=")]
    assert len(headers) == 1, headers
    return headers[0]


class FakeClock:
    """A settable clock the throttle reads through ``app.state.clock``."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# ---------------------------------------------------------------- login, me, logout


def test_login_by_username_and_email_returns_token_and_cookie(
        client: TestClient, factory: Factory) -> None:
    org = factory.org("acme")
    u = factory.user(org, Role.ADMIN)
    for ident in (u.username, f"{u.username}@example.com", u.username.upper()):
        r = _login(client, ident, u.password)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "bearer"
        assert body["user"] == {"id": str(u.id), "username": u.username,
                                "email": f"{u.username}@example.com",
                                "is_platform_admin": False}
        assert datetime.fromisoformat(body["expires_at"]) > utcnow()
        me = client.get("/api/auth/me",
                        headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.status_code == 200, me.text
        assert me.json()["memberships"] == [
            {"org_id": str(org), "org_name": "acme", "role": "admin"}]
        assert "password" not in r.text


def test_login_creates_session_row_with_ip_agent_and_expiry(
        client: TestClient, factory: Factory, db: sessionmaker[Session],
        settings: Settings) -> None:
    u = factory.user()
    before = utcnow()
    r = client.post("/api/auth/login", json={"username": u.username, "password": u.password},
                    headers={"User-Agent": "pytest-agent/1"})
    assert r.status_code == 200
    with db() as s:
        sess = s.scalars(select(UserSession).where(UserSession.user_id == u.id)
                         .order_by(UserSession.created_at.desc())).first()
        assert sess is not None
        assert sess.ip == "testclient"
        assert sess.user_agent == "pytest-agent/1"
        ttl = (sess.expires_at - before).total_seconds()
        assert settings.jwt_ttl_seconds - 5 <= ttl <= settings.jwt_ttl_seconds + 5
        logs = s.scalars(select(ActionLog).where(ActionLog.type == "auth.login",
                                                 ActionLog.user_id == u.id)).all()
        assert [lg.status for lg in logs] == ["success"]


@pytest.mark.parametrize("body", [
    {"username": "admin", "password": "wrong-password"},
    {"username": "nobody-here", "password": ADMIN_PASSWORD},
    {"username": "admin@localhost", "password": "wrong-password"},
])
def test_bad_credentials_are_401_and_logged_without_password(
        client: TestClient, db: sessionmaker[Session], body: dict[str, str]) -> None:
    r = client.post("/api/auth/login", json=body)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert "set-cookie" not in r.headers
    with db() as s:
        logs = s.scalars(select(ActionLog).where(ActionLog.type == "auth.login")).all()
        assert [(lg.status, lg.error_code) for lg in logs] == [("failure", "bad_credentials")]
        assert body["password"] not in str(logs[0].details)
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == 1


def test_inactive_user_cannot_log_in(client: TestClient, factory: Factory,
                                     db: sessionmaker[Session]) -> None:
    u = factory.user()
    with db() as s, s.begin():
        s.get(User, u.id).is_active = False  # type: ignore[union-attr]
    r = _login(client, u.username, u.password)
    assert r.status_code == 401
    # Its existing session token stops working too.
    assert client.get("/api/auth/me", headers=u.headers).status_code == 401


@pytest.mark.parametrize("body", [
    {},
    {"username": "admin"},
    {"username": "admin", "password": ADMIN_PASSWORD, "is_platform_admin": True},
    {"username": 5, "password": ADMIN_PASSWORD},
    {"username": "", "password": "x"},
    {"username": "admin", "password": "x" * 2000},
])
def test_malformed_login_is_422(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/api/auth/login", json=body)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"
    assert ADMIN_PASSWORD not in r.text


def test_me_requires_auth(client: TestClient) -> None:
    r = client.get("/api/auth/me")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_cookie_attributes_plain_http(client: TestClient) -> None:
    r = _login(client, "admin", ADMIN_PASSWORD)
    header = _set_cookie_header(r)
    cookie = SimpleCookie()
    cookie.load(header)
    morsel = cookie["inventiv_session"]
    assert morsel.value == r.json()["access_token"]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["path"] == "/"
    assert not morsel["secure"]
    assert not morsel["domain"]


@pytest.fixture
def secure_app(client: TestClient, settings: Settings) -> Iterator[TestClient]:
    """A second app on the same database, served as over HTTPS (``cookie_secure``)."""
    app = create_app(settings.model_copy(update={"cookie_secure": True}))
    with TestClient(app, base_url="https://testserver") as c:
        yield c


def test_cookie_attributes_secure_follow_host_prefix_rules(secure_app: TestClient) -> None:
    r = _login(secure_app, "admin", ADMIN_PASSWORD)
    assert r.status_code == 200
    header = _set_cookie_header(r)
    assert header.startswith("__Host-inventiv_session=")
    attrs = [a.strip().lower() for a in header.split(";")[1:]]
    assert "secure" in attrs and "httponly" in attrs and "path=/" in attrs
    assert "samesite=lax" in attrs
    assert not any(a.startswith("domain") for a in attrs)
    # The cookie alone authenticates, and logout clears it (same attributes, expired).
    assert secure_app.get("/api/auth/me").status_code == 200
    # (A cookie-authenticated POST: same origin, and JSON or the CSRF token.)
    out = secure_app.post("/api/auth/logout", headers={"Sec-Fetch-Site": "same-origin",
                                                       "Content-Type": "application/json"})
    assert out.status_code == 204
    cleared = _set_cookie_header(out).lower()
    assert cleared.startswith("__host-inventiv_session=")
    assert "max-age=0" in cleared and "secure" in cleared and "path=/" in cleared
    assert secure_app.get("/api/auth/me").status_code == 401


def test_logout_revokes_the_session(client: TestClient, db: sessionmaker[Session]) -> None:
    token = _login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    h = {"Authorization": f"Bearer {token}"}
    other = _login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    client.cookies.clear()
    r = client.post("/api/auth/logout", headers=h)
    assert r.status_code == 204
    assert "max-age=0" in _set_cookie_header(r).lower()
    assert client.get("/api/auth/me", headers=h).status_code == 401
    assert client.post("/api/auth/logout", headers=h).status_code == 401
    # Only that session: the other login still works.
    assert client.get("/api/auth/me",
                      headers={"Authorization": f"Bearer {other}"}).status_code == 200
    with db() as s:
        assert s.scalar(select(func.count()).select_from(ActionLog)
                        .where(ActionLog.type == "auth.logout")) == 1


# ---------------------------------------------------------------- password change


def test_password_change_revokes_other_sessions(client: TestClient, factory: Factory,
                                                db: sessionmaker[Session]) -> None:
    u = factory.user()  # u.headers is one session
    t2 = _login(client, u.username, u.password).json()["access_token"]
    h2 = {"Authorization": f"Bearer {t2}"}
    client.cookies.clear()
    r = client.post("/api/auth/password", headers=h2,
                    json={"current_password": u.password, "new_password": "brand-new-pass-1"})
    assert r.status_code == 204, r.text
    assert client.get("/api/auth/me", headers=u.headers).status_code == 401
    assert client.get("/api/auth/me", headers=h2).status_code == 200  # the caller's own
    assert _login(client, u.username, u.password).status_code == 401
    assert _login(client, u.username, "brand-new-pass-1").status_code == 200
    with db() as s:
        log = s.scalars(select(ActionLog).where(ActionLog.type == "auth.password_change",
                                                ActionLog.status == "success")).one()
        assert log.user_id == u.id
        assert "brand-new-pass-1" not in str(log.details)


def test_password_change_checks_current_and_strength(client: TestClient,
                                                    factory: Factory) -> None:
    u = factory.user()
    r = client.post("/api/auth/password", headers=u.headers,
                    json={"current_password": "not-it", "new_password": "another-pass-1"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_password"
    r = client.post("/api/auth/password", headers=u.headers,
                    json={"current_password": u.password, "new_password": "short"})
    assert r.status_code == 422
    r = client.post("/api/auth/password", headers=u.headers,
                    json={"current_password": u.password, "new_password": "long-enough-1",
                          "user_id": "x"})
    assert r.status_code == 422
    assert client.get("/api/auth/me", headers=u.headers).status_code == 200


# ---------------------------------------------------------------- throttling


@pytest.fixture
def throttled_app(client: TestClient, settings: Settings) -> tuple[FastAPI, FakeClock]:
    app = create_app(settings.model_copy(update={
        "login_max_failures_per_account": 3, "login_max_failures_per_ip": 5,
        "login_window_seconds": 600}))
    clock = FakeClock(utcnow())
    app.state.clock = clock
    return app, clock


def test_throttle_per_account(throttled_app: tuple[FastAPI, FakeClock],
                              factory: Factory) -> None:
    app, clock = throttled_app
    u = factory.user()
    c = TestClient(app, client=("10.0.0.1", 1000))
    other_ip = TestClient(app, client=("10.0.0.2", 1000))
    for i in range(3):
        assert _login(c, u.username, f"wrong-{i}").status_code == 401
        clock.advance(10)
    # Over the limit from this IP: even the right password (or via email) waits the backoff
    # (1 s doubling per further failure, counted from the last failure 10 s ago: free now+1).
    for ident in (u.username, f"{u.username}@example.com"):
        clock.advance(-10)
        r = _login(c, ident, u.password)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "too_many_requests"
        assert int(r.headers["retry-after"]) == 1
        clock.advance(10)
    # Another IP is not locked out (per account and address).
    assert _login(other_ip, u.username, u.password).status_code == 200
    assert _login(c, u.username, u.password).status_code == 200
    # A success clears the account's counter.
    for i in range(2):
        assert _login(c, u.username, f"wrong-{i}").status_code == 401
    assert _login(c, u.username, u.password).status_code == 200


def test_throttle_per_ip_and_success_keeps_other_accounts_failures(
        throttled_app: tuple[FastAPI, FakeClock], factory: Factory,
        db: sessionmaker[Session]) -> None:
    app, clock = throttled_app
    mine = factory.user()
    attacker = TestClient(app, client=("192.0.2.7", 4000))
    elsewhere = TestClient(app, client=("198.51.100.9", 4000))
    for i in range(4):  # four different accounts, one failure each: no account limit reached
        assert _login(attacker, f"victim{i}", "guess").status_code == 401
    # The attacker's own successful login does not reset the IP's failures on other accounts.
    assert _login(attacker, mine.username, mine.password).status_code == 200
    assert _login(attacker, "victim9", "guess").status_code == 401  # fifth failure
    r = _login(attacker, mine.username, mine.password)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) == 600
    # Other IPs are not affected.
    assert _login(elsewhere, mine.username, mine.password).status_code == 200
    # Throttled attempts are not counted and the password is not checked: no new rows.
    with db() as s:
        assert s.scalar(select(func.count()).select_from(LoginAttempt)
                        .where(LoginAttempt.ip == "192.0.2.7")) == 5
        throttled = s.scalars(select(ActionLog).where(ActionLog.error_code == "throttled")).all()
        assert len(throttled) == 1 and throttled[0].user_id == mine.id
    clock.advance(601)
    assert _login(attacker, mine.username, mine.password).status_code == 200


def test_forwarded_for_is_not_trusted(throttled_app: tuple[FastAPI, FakeClock]) -> None:
    app, _ = throttled_app
    c = TestClient(app, client=("203.0.113.5", 1))
    for i in range(5):
        r = c.post("/api/auth/login", json={"username": f"x{i}", "password": "p"},
                   headers={"X-Forwarded-For": f"10.9.9.{i}"})
        assert r.status_code == 401
    r = c.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD},
               headers={"X-Forwarded-For": "10.9.9.99"})
    assert r.status_code == 429


@pytest.mark.parametrize("raw", [
    '{"username": "ad\\u0000min", "password": "x"}',
    '{"username": "admin", "password": "\\ud800"}',
    '{"username": "\\udfff", "password": "x"}',
    '{"username": "admin", "password": "admin-password-for-tests"',
    '["admin", "admin-password-for-tests"]',
])
def test_unstorable_or_broken_login_input_is_422_not_500(client: TestClient, raw: str) -> None:
    r = client.post("/api/auth/login", content=raw.encode(),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
