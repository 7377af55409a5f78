"""Shared fixtures. Every database test runs twice: on the real Postgres server and on SQLite.

Postgres: a fresh database per test session (``inventiv_test_<random>``), dropped at the end.
Set ``INVENTIV_REQUIRE_POSTGRES=1`` (``.ci/run`` does) to fail instead of skip when it is down.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from control_api import migrate
from control_api.app import create_app
from control_api.settings import Settings
from core.db import Base, make_engine, make_sessionmaker, utcnow
from core.models import Membership, Org, Role, User, UserSession

PG_ADMIN_URL = os.environ.get(
    "INVENTIV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("INVENTIV_REQUIRE_POSTGRES") == "1"
ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "test-secret-" + "x" * 40
SERVICE_TOKEN = "ist-test-bootstrap-service-token"


def _postgres_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


@contextmanager
def migrated_postgres_database(prefix: str) -> Iterator[str]:
    """A fresh, migrated Postgres database named ``<prefix>_<random>``, dropped afterwards.

    Skips (or fails under ``INVENTIV_REQUIRE_POSTGRES=1``) when Postgres is unreachable.
    """
    problem = _postgres_available()
    if problem:
        if REQUIRE_PG:
            pytest.fail(f"Postgres required but unavailable: {problem}")
        pytest.skip(f"Postgres unavailable: {problem}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        eng = make_engine(url)
        migrate.upgrade(eng)
        eng.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database URL for the whole session, per backend."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "inventiv.db"
        url = f"sqlite:///{path}"
        eng = make_engine(url)
        migrate.upgrade(eng)
        eng.dispose()
        yield url
        return
    with migrated_postgres_database("inventiv_test") as url:
        yield url


@pytest.fixture(scope="session")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def truncate_all(engine: Engine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables)
                              + " RESTART IDENTITY CASCADE"))
        else:
            for t in tables:
                conn.execute(text(f'DELETE FROM "{t}"'))


@pytest.fixture
def db(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """An emptied database (all tables truncated) and a session factory on it."""
    truncate_all(engine)
    yield make_sessionmaker(engine)


@pytest.fixture
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=db_url,
        data_dir=tmp_path_factory.mktemp("data"),
        admin_password=ADMIN_PASSWORD,  # type: ignore[arg-type]
        jwt_secret=JWT_SECRET,  # type: ignore[arg-type]
        service_token=SERVICE_TOKEN,  # type: ignore[arg-type]
        cookie_secure=False,
        run_migrations=False,  # the session fixture migrated already
        background_jobs=False,  # tests drive periodic jobs themselves
        argon2_time_cost=1,
        argon2_memory_cost=8192,
    )


@pytest.fixture
def client(db: sessionmaker[Session], settings: Settings) -> Iterator[TestClient]:
    """A TestClient on a fresh app (lifespan run: catalog seeded, admin bootstrapped)."""
    app = create_app(settings)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def admin_headers(client: TestClient) -> dict[str, str]:
    r = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def service_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVICE_TOKEN}"}



@pytest.fixture(autouse=True, scope="session")
def _no_real_model_hub() -> Iterator[None]:
    """Tests never reach huggingface.co, even on a machine with internet: a deploy of an
    ``hf:`` source talks to ``HF_ENDPOINT``, here a closed local port unless a test (or its
    fake Hub) sets one. Unreachable, the control API accepts the deploy unpinned."""
    if "HF_ENDPOINT" in os.environ:
        yield
        return
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
    try:
        yield
    finally:
        os.environ.pop("HF_ENDPOINT", None)


@dataclass(frozen=True)
class MotoS3:
    """moto's S3 API server (a real HTTP S3 implementation, standing in for Scaleway Object
    Storage). moto accepts any credentials; every server in one process shares one backend, so
    a bucket may already exist from an earlier module: ``bucket`` keeps it."""

    url: str

    def client(self, region: str = "fr-par") -> Any:
        """A boto3 S3 client on this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=region,
                            aws_access_key_id="moto-test",
                            aws_secret_access_key="moto-test-secret")

    def bucket(self, name: str, region: str = "fr-par") -> Any:
        """Create bucket ``name`` in ``region`` unless it exists; a client in that region."""
        client = self.client(region)
        # us-east-1 is the one region S3 refuses as a LocationConstraint.
        config = {} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            client.create_bucket(Bucket=name, **config)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return client

    def put(self, bucket: str, prefix: str, files: Mapping[str, bytes] | Path) -> None:
        """Objects under ``prefix/``: each ``{key: bytes}``, or every file below a folder (keys
        relative to it)."""
        client = self.client()
        if isinstance(files, Path):
            for path in sorted(p for p in files.rglob("*") if p.is_file()):
                client.upload_file(str(path), bucket,
                                   f"{prefix}/{path.relative_to(files).as_posix()}")
            return
        for key, data in files.items():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the whole session, on a free local port."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoS3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@dataclass
class TestUser:
    __test__ = False
    id: uuid.UUID
    username: str
    password: str
    headers: dict[str, str]


class Factory:
    """Creates orgs and users directly in the database, with a valid session token each."""

    __test__ = False

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.app = client.app
        self._n = 0

    def _session(self) -> Session:
        return self.app.state.sessionmaker()  # type: ignore[attr-defined, no-any-return]

    def org(self, name: str | None = None) -> uuid.UUID:
        self._n += 1
        with self._session() as s, s.begin():
            org = Org(name=name or f"org-{self._n}-{uuid.uuid4().hex[:6]}")
            s.add(org)
            s.flush()
            return org.id

    def user(self, org_id: uuid.UUID | None = None, role: Role | str | None = None,
             platform_admin: bool = False, password: str = "user-password-123",
             username: str | None = None) -> TestUser:
        self._n += 1
        username = username or f"user{self._n}-{uuid.uuid4().hex[:6]}"
        passwords = self.app.state.passwords  # type: ignore[attr-defined]
        with self._session() as s, s.begin():
            user = User(username=username, email=f"{username}@example.com",
                        password_hash=passwords.hash(password), is_platform_admin=platform_admin)
            s.add(user)
            s.flush()
            if org_id is not None and role is not None:
                s.add(Membership(user_id=user.id, org_id=org_id, role=Role(role)))
            sess = UserSession(user_id=user.id, expires_at=utcnow() + timedelta(hours=1))
            s.add(sess)
            s.flush()
            uid, sid = user.id, sess.id
        token, _ = self.app.state.jwt.encode(uid, sid, timedelta(hours=1))  # type: ignore[attr-defined]
        return TestUser(uid, username, password, {"Authorization": f"Bearer {token}"})


@pytest.fixture
def factory(client: TestClient) -> Factory:
    return Factory(client)
