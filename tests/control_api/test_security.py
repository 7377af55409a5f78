"""Token forgery, session revocation, API key format and hash-only storage, argon2 rehash."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from control_api.app import create_app
from control_api.security import Passwords
from control_api.settings import Settings
from core.keys import BASE62, KEY_PREFIX, api_key_well_formed, generate_api_key, sha256_hex
from core.models import ApiKey, Role, User, UserSession
from tests.conftest import Factory

# ---------------------------------------------------------------- JWTs


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(user_id: uuid.UUID, session_id: uuid.UUID, settings: Settings,
            **over: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(user_id), "sid": str(session_id), "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience, "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
    }
    for k, v in over.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def _session_of(db: sessionmaker[Session], user_id: uuid.UUID) -> uuid.UUID:
    with db() as s:
        sid = s.scalar(select(UserSession.id).where(UserSession.user_id == user_id))
        assert sid is not None
        return sid


def _secret(settings: Settings) -> str:
    assert settings.jwt_secret is not None
    return settings.jwt_secret.get_secret_value()


def _rsa_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _forgeries(settings: Settings, uid: uuid.UUID, sid: uuid.UUID
               ) -> dict[str, Callable[[], str]]:
    secret = _secret(settings)
    past = datetime.now(UTC) - timedelta(hours=2)
    private, _public = _rsa_pair()
    good = _claims(uid, sid, settings)

    def none_alg() -> str:
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}."

    def none_alg_with_sig() -> str:
        signed = jwt.encode(good, secret, algorithm="HS256")
        return _b64({"alg": "none", "typ": "JWT"}) + "." + signed.split(".", 1)[1]

    forgeries: dict[str, Callable[[], str]] = {
        "wrong secret": lambda: jwt.encode(good, "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": lambda: jwt.encode(
            _claims(uid, sid, settings, iat=int(past.timestamp()),
                    exp=int((past + timedelta(minutes=5)).timestamp())),
            secret, algorithm="HS256"),
        "alg none": none_alg,
        "alg none keeping signature": none_alg_with_sig,
        "RS256 signed (HS/RS confusion)": lambda: jwt.encode(good, private, algorithm="RS256"),
        "HS512 with the right secret (algorithm not pinned)":
            lambda: jwt.encode(good, secret, algorithm="HS512"),
        "wrong issuer": lambda: jwt.encode(_claims(uid, sid, settings, iss="evil"), secret,
                                           algorithm="HS256"),
        "wrong audience": lambda: jwt.encode(_claims(uid, sid, settings, aud="other-api"),
                                             secret, algorithm="HS256"),
        "tampered payload": lambda: (lambda t: t.split(".")[0] + "." + _b64(
            {**good, "sub": str(uuid.uuid4())}) + "." + t.split(".")[2])(
            jwt.encode(good, secret, algorithm="HS256")),
        "sid of another session": lambda: jwt.encode(
            _claims(uid, uuid.uuid4(), settings), secret, algorithm="HS256"),
        "garbage": lambda: "not.a.jwt",
        "non-uuid sub": lambda: jwt.encode(_claims(uid, sid, settings, sub="admin"), secret,
                                           algorithm="HS256"),
    }
    for claim in ("exp", "iat", "sub", "sid", "iss", "aud"):
        forgeries[f"missing {claim}"] = (
            lambda c=claim: jwt.encode(_claims(uid, sid, settings, **{c: None}), secret,
                                       algorithm="HS256"))
    return forgeries


def test_the_control_token_is_accepted(client: TestClient, factory: Factory,
                                       db: sessionmaker[Session], settings: Settings) -> None:
    """The forgeries below differ from this accepted token in one way each."""
    u = factory.user()
    sid = _session_of(db, u.id)
    token = jwt.encode(_claims(u.id, sid, settings), _secret(settings), algorithm="HS256")
    r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["id"] == str(u.id)


def test_forged_tokens_are_rejected(client: TestClient, factory: Factory,
                                    db: sessionmaker[Session], settings: Settings) -> None:
    u = factory.user()
    sid = _session_of(db, u.id)
    failures = []
    for name, make in _forgeries(settings, u.id, sid).items():
        token = make()
        for how in ("bearer", "cookie"):
            client.cookies.clear()
            if how == "bearer":
                r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
            else:
                client.cookies.set(settings.cookie_name, token)
                r = client.get("/api/auth/me")
            if r.status_code != 401 or r.json()["error"]["code"] != "unauthorized":
                failures.append((name, how, r.status_code))
    client.cookies.clear()
    assert failures == []


def test_revoked_and_expired_sessions_are_rejected(
        client: TestClient, factory: Factory, db: sessionmaker[Session]) -> None:
    u = factory.user()
    assert client.get("/api/auth/me", headers=u.headers).status_code == 200
    with db() as s, s.begin():
        sess = s.scalars(select(UserSession).where(UserSession.user_id == u.id)).one()
        sess.revoked_at = datetime.now(UTC)
    assert client.get("/api/auth/me", headers=u.headers).status_code == 401
    v = factory.user()
    with db() as s, s.begin():
        sess = s.scalars(select(UserSession).where(UserSession.user_id == v.id)).one()
        sess.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    # The JWT itself is still valid: the session row decides.
    assert client.get("/api/auth/me", headers=v.headers).status_code == 401


# ---------------------------------------------------------------- API keys


def test_api_key_format_and_checksum() -> None:
    secret = b"server-secret-for-the-checksum"
    key = generate_api_key(secret)
    assert key.secret.startswith(KEY_PREFIX) and api_key_well_formed(key.secret, secret)
    # The checksum is keyed: without the secret nobody mints a key that passes.
    assert not api_key_well_formed(key.secret, b"another secret")
    assert not api_key_well_formed(generate_api_key().secret, secret)
    assert api_key_well_formed(key.secret)  # format only, when the secret is not known
    assert key.hash == sha256_hex(key.secret) and key.secret.startswith(key.prefix)
    assert len({generate_api_key().secret for _ in range(50)}) == 50
    body = key.secret[len(KEY_PREFIX):]
    for i in (0, 10, 42, len(body) - 1):  # flip a character of the body or of the checksum
        c = body[i]
        if c == "-":
            continue
        flipped = BASE62[(BASE62.index(c) + 1) % 62]
        bad = KEY_PREFIX + body[:i] + flipped + body[i + 1:]
        assert not api_key_well_formed(bad, secret), i
    assert not api_key_well_formed(key.secret[:-1])
    assert not api_key_well_formed(key.secret + "0")
    assert not api_key_well_formed("sk-" + body)
    assert not api_key_well_formed("IA-" + body)
    assert not api_key_well_formed(key.secret.replace("-", "_"))
    assert not api_key_well_formed("")


def test_only_the_key_hash_is_stored(client: TestClient, factory: Factory,
                                     db: sessionmaker[Session], engine: Any,
                                     caplog: pytest.LogCaptureFixture) -> None:
    org = factory.org()
    m = factory.user(org, Role.MEMBER)
    with caplog.at_level(logging.DEBUG):
        r = client.post("/api/api-keys", json={"name": "k"}, headers=m.headers)
    assert r.status_code == 201
    key = r.json()["key"]
    assert key not in caplog.text
    secret_part = key[len(r.json()["prefix"]):]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
        logs = conn.execute(text("SELECT * FROM action_logs")).all()
    assert len(rows) == 1
    dumped = repr([tuple(row) for row in rows]) + repr([tuple(row) for row in logs])
    assert key not in dumped and secret_part not in dumped
    with db() as s:
        row = s.scalars(select(ApiKey)).one()
        assert row.key_hash == sha256_hex(key)
        cols = [c.key for c in inspect(ApiKey).columns]
        assert {"key", "secret"}.isdisjoint(cols)


# ---------------------------------------------------------------- passwords


def test_password_rehash_when_argon2_params_change(client: TestClient, factory: Factory,
                                                   db: sessionmaker[Session],
                                                   settings: Settings) -> None:
    u = factory.user()  # hashed with the test parameters (t=1, m=8192)
    with db() as s:
        old_hash = s.get(User, u.id).password_hash  # type: ignore[union-attr]
    assert "t=1" in old_hash and "m=8192" in old_hash
    stronger = settings.model_copy(update={"argon2_time_cost": 2, "argon2_memory_cost": 9216})
    with TestClient(create_app(stronger)) as c2:
        r = c2.post("/api/auth/login", json={"username": u.username, "password": u.password})
        assert r.status_code == 200, r.text
        with db() as s:
            new_hash = s.get(User, u.id).password_hash  # type: ignore[union-attr]
        assert new_hash != old_hash and "m=9216,t=2" in new_hash
        assert Passwords(2, 9216).verify(new_hash, u.password)
        assert not Passwords(2, 9216).needs_rehash(new_hash)
        # A second login with the same parameters keeps the hash.
        assert c2.post("/api/auth/login", json={"username": u.username,
                                                "password": u.password}).status_code == 200
        with db() as s:
            assert s.get(User, u.id).password_hash == new_hash  # type: ignore[union-attr]
    # A failed login never rehashes.
    weaker = settings.model_copy(update={"argon2_time_cost": 1, "argon2_memory_cost": 8192})
    with TestClient(create_app(weaker)) as c3:
        assert c3.post("/api/auth/login", json={"username": u.username,
                                                "password": "wrong-one"}).status_code == 401
    with db() as s:
        assert s.get(User, u.id).password_hash == new_hash  # type: ignore[union-attr]


def test_passwords_never_logged_or_echoed(client: TestClient, admin_headers: dict[str, str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    secret = "do-not-echo-this-password"
    with caplog.at_level(logging.DEBUG):
        r1 = client.post("/api/auth/login", json={"username": "admin", "password": secret})
        r2 = client.post("/api/users", json={"username": "bob", "email": "bob",
                                             "password": secret}, headers=admin_headers)
        r3 = client.post("/api/auth/password", headers=admin_headers,
                         json={"current_password": secret, "new_password": secret + "x"})
    assert (r1.status_code, r2.status_code, r3.status_code) == (401, 422, 400)
    for r in (r1, r2, r3):
        assert secret not in r.text
    assert secret not in caplog.text
