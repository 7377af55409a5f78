"""The Serve REST client and ``apply_all``/``serve_sync_job`` against a REAL Ray head with the
dashboard and token auth (``RAY_AUTH_MODE=token``), applying a trivial Serve app
(tests/serve_fixture_app.py) instead of vLLM.

The head runs in its own process group, temp dir and free ports; it is stopped by killing that
group (never ``ray stop``, which would stop other clusters on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from control_api.ports import DataPlane
from control_api.serve_client import (
    ServeAuthError,
    ServeClient,
    ServeTarget,
    ServeUnreachable,
    serve_config,
    serve_config_from_env,
)
from control_api.services import deployments as svc
from control_api.settings import Settings
from core.models import ActionLog, Budget, BudgetScope, Deployment
from core.spec import parse_spec
from finops.budgets import current_scale_caps, evaluate_budgets
from serve_apps.serve_config import render_serve_config
from tests.conftest import _postgres_available

REPO = Path(__file__).resolve().parents[2]
# The control API as `inventiv api serve` builds it: with the data plane's Serve config renderer.
PLANE = DataPlane(render_serve_config=render_serve_config)
RAY = Path(sys.executable).parent / "ray"
APP = "inventiv-test"


def without_placements(report: dict[str, Any]) -> dict[str, Any]:
    """A sync job's report without its replica-placement counts (asserted where they matter)."""
    return {k: v for k, v in report.items() if k != "placements"}

def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    dashboard_url: str
    token_file: Path
    http_port: int


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    temp = Path(f"/tmp/ia-dep-{secrets.token_hex(3)}")  # short: Ray's socket paths are bounded
    temp.mkdir()
    token_file = temp / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)
    (gcs, dash, nm, om, client, agent_http, agent_grpc, metrics, rt_env, http,
     wmin) = free_ports(11)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    cmd = [str(RAY), "start", "--head", "--block", f"--temp-dir={temp}",
           "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rt_env}",
           f"--min-worker-port={wmin}", f"--max-worker-port={wmin + 40}",
           "--num-cpus=2", "--disable-usage-stats"]
    log = (temp / "head.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)
    url = f"http://127.0.0.1:{dash}"
    try:
        # Generous: on a loaded shared machine the head alone has taken 40 s to start.
        deadline = time.monotonic() + 180
        token = token_file.read_text()
        while True:
            if proc.poll() is not None:
                raise RuntimeError("ray head exited:\n" + (temp / "head.log").read_text()[-3000:])
            try:
                r = httpx.get(f"{url}/api/serve/applications/", timeout=2,
                              headers={"Authorization": f"Bearer {token}"})
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("dashboard not up:\n" +
                                   (temp / "head.log").read_text()[-3000:])
            time.sleep(0.5)
        yield Head(url, token_file, http)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Workers started by the raylet are in the same session; be sure none survives.
        _kill_leftovers(temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _kill_leftovers(temp: Path) -> None:
    """Kill processes whose command line names our temp dir (only ours: it is unique)."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(temp) in cmdline:
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def target(head: Head) -> ServeTarget:
    return ServeTarget(app_name=APP, import_path="tests.serve_fixture_llm_app:build",
                       http_host="127.0.0.1", http_port=head.http_port,
                       ingress_options={"control_api_url": "http://127.0.0.1:1",
                                        "service_token_file": "/nonexistent",
                                        "spool_dir": "/tmp/unused"})


def wait_app(client: ServeClient, present: bool, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        apps = client.get_applications().get("applications") or {}
        app = apps.get(APP)
        if present and app is not None and app.get("status") == "RUNNING":
            return app
        if present and app is not None and app.get("status") == "DEPLOY_FAILED":
            raise AssertionError(app.get("message"))
        if not present and app is None:
            return {}
        if time.monotonic() > deadline:
            raise AssertionError(f"app {APP} present={present} not reached: {apps}")
        time.sleep(0.5)


def add(session: Session, text: str) -> None:
    spec = parse_spec(text)
    for item in spec.deployments:
        session.add(Deployment(name=item.name, spec=item.model_dump(mode="json")))
    session.flush()


SPEC = """\
version: 1
deployments:
  - name: {name}
    model: {{name: m-{name}, source: builtin:tiny-llama}}
    engine: {{max_model_len: 512}}
    limits: {{max_tokens: 64}}
"""


def test_apply_sync_and_errors_on_a_real_head(db_url: str, ray_head: Head,
                                              db: sessionmaker[Session]) -> None:
    if db_url.startswith("sqlite") and _postgres_available() is None:
        # Serve's side does not depend on the backend (the route tests cover both): run once.
        pytest.skip("runs once, on Postgres")
    client = ServeClient(ray_head.dashboard_url, token_file=ray_head.token_file,
                         timeout_s=20, target=target(ray_head))
    # apply_all: the desired state (one deployment) becomes a running Serve app.
    with db() as s, s.begin():
        add(s, SPEC.format(name="alpha"))
        result = svc.apply_all(s, client, render_serve_config)
        assert (result.ok, result.status, result.applications) == (True, "applied", [APP])
        assert s.scalar(select(Deployment.status).where(Deployment.name == "alpha")) == "applied"
    app = wait_app(client, present=True)
    assert app["deployed_app_config"]["args"]["spec"]["deployments"][0]["name"] == "alpha"
    served = httpx.get(f"http://127.0.0.1:{ray_head.http_port}/", timeout=10)
    assert served.text == "ok alpha"

    # In sync: the job does nothing. After Serve lost the app (restart, manual delete), the
    # job re-applies it.
    job = svc.serve_sync_job(client, PLANE)
    with db() as s, s.begin():
        synced = job(s, svc.utcnow())
        # Each tick also records which replica runs on which node (FinOps attribution).
        assert synced.pop("placements")["live"] >= 1
        assert synced == {"in_sync": True, "serve_status": "running"}
        assert s.scalar(select(Deployment.status).where(Deployment.name == "alpha")) == "running"
    client.put_applications({"applications": []})
    wait_app(client, present=False)
    with db() as s, s.begin():
        out = job(s, svc.utcnow())
        assert without_placements(out) == {"in_sync": False, "applied": True,
                                           "status": "applied"}
    wait_app(client, present=True)

    # Soft-deleting the only deployment: the next apply removes the app; status "deleted".
    with db() as s, s.begin():
        dep = s.scalar(select(Deployment).where(Deployment.name == "alpha"))
        assert dep is not None
        dep.deleted_at, dep.status = svc.utcnow(), "deleting"
        assert svc.apply_all(s, client, render_serve_config).applications == []
        assert dep.status == "deleted"
    wait_app(client, present=False)

    # A wrong token: our auth error; apply_all records "failed".
    bad_token = ray_head.token_file.parent / "bad-token"
    bad_token.write_text("0" * 64)
    wrong = ServeClient(ray_head.dashboard_url, token_file=bad_token, target=target(ray_head))
    with pytest.raises(ServeAuthError):
        wrong.get_applications()
    no_token = ServeClient(ray_head.dashboard_url, target=target(ray_head))
    with pytest.raises(ServeAuthError) as info:
        no_token.put_applications({"applications": []})
    assert info.value.status == 401
    with db() as s, s.begin():
        add(s, SPEC.format(name="beta"))
        result = svc.apply_all(s, wrong, render_serve_config)
        assert (result.ok, result.status) == (False, "failed")
        beta = s.scalar(select(Deployment).where(Deployment.name == "beta"))
        assert beta is not None and beta.status == "failed"
        assert "refused the auth token" in (beta.status_message or "")
        assert "0" * 64 not in (beta.status_message or "")
        log = s.scalars(select(ActionLog).where(ActionLog.type == "deployment.apply")
                        .order_by(ActionLog.id.desc())).first()
        assert log is not None and log.status == "failure" and log.error_code == "serve_failed"

    # Unreachable dashboard: "pending" with the reason; the sync job reports, does not raise.
    dead = ServeClient(f"http://127.0.0.1:{free_ports(1)[0]}", timeout_s=2,
                       target=target(ray_head))
    with pytest.raises(ServeUnreachable):
        dead.get_applications()
    with db() as s, s.begin():
        result = svc.apply_all(s, dead, render_serve_config)
        assert (result.ok, result.status) == (False, "pending")
        beta = s.scalar(select(Deployment).where(Deployment.name == "beta"))
        assert beta is not None and beta.status == "pending"
        assert "connection refused" in (beta.status_message or "")
        assert svc.serve_sync_job(dead, PLANE)(s, svc.utcnow())["error"] == "unreachable"
    # The sync job with the right token settles "beta" (pending -> applied).
    with db() as s, s.begin():
        assert job(s, svc.utcnow())["applied"] is True
        assert s.scalar(select(Deployment.status).where(Deployment.name == "beta")) == "applied"
    wait_app(client, present=True)

    # Serve accepts a config whose app then fails to deploy: the job reports "unhealthy" with
    # Serve's message, and does not re-apply the same config every tick.
    broken = ServeClient(ray_head.dashboard_url, token_file=ray_head.token_file,
                         target=replace(target(ray_head),
                                        import_path="tests.serve_fixture_app:broken"))
    broken_job = svc.serve_sync_job(broken, PLANE)
    with db() as s, s.begin():
        assert svc.apply_all(s, broken, render_serve_config).ok
    deadline = time.monotonic() + 60
    while (broken.get_applications()["applications"].get(APP) or {}).get("status") \
            != "DEPLOY_FAILED":
        assert time.monotonic() < deadline, broken.get_applications()
        time.sleep(0.5)
    with db() as s, s.begin():
        assert without_placements(broken_job(s, svc.utcnow())) == {
            "in_sync": True, "serve_status": "unhealthy"}
        beta = s.scalar(select(Deployment).where(Deployment.name == "beta"))
        assert beta is not None and beta.status == "unhealthy"
        assert "broken on purpose" in (beta.status_message or "")
        applies = len(list(s.scalars(select(ActionLog.id)
                                     .where(ActionLog.type == "deployment.apply"))))
        broken_job(s, svc.utcnow())
        assert len(list(s.scalars(select(ActionLog.id)
                                  .where(ActionLog.type == "deployment.apply")))) == applies
    client.delete_applications()
    wait_app(client, present=False, timeout=30)


def test_config_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same INVENTIV_* names as before the move into Settings (``inventiv up`` sets them)."""
    for name in list(os.environ):
        if name.startswith(("INVENTIV_SERVE_", "INVENTIV_RAY_")):
            monkeypatch.delenv(name)
    assert serve_config_from_env() is None
    monkeypatch.setenv("INVENTIV_RAY_DASHBOARD_URL", "http://h:8265")
    monkeypatch.setenv("INVENTIV_RAY_AUTH_TOKEN_FILE", "/run/ray-token")
    monkeypatch.setenv("INVENTIV_SERVE_HTTP_PORT", "9000")
    monkeypatch.setenv("INVENTIV_SERVE_APP_NAME", "prod")
    monkeypatch.setenv("INVENTIV_SERVE_TIMEOUT_SECONDS", "3.5")
    monkeypatch.setenv("INVENTIV_SERVE_CONTROL_API_URL", "http://api:8080")
    monkeypatch.setenv("INVENTIV_SERVE_SERVICE_TOKEN_FILE", "/run/svc-token")
    cfg = serve_config_from_env()
    assert cfg is not None
    assert (cfg.dashboard_url, cfg.token_file, cfg.target.http_port, cfg.target.app_name,
            cfg.timeout_s) == ("http://h:8265", "/run/ray-token", 9000, "prod", 3.5)
    assert cfg.target.ingress_options == {"control_api_url": "http://api:8080",
                                          "service_token_file": "/run/svc-token"}
    monkeypatch.setenv("INVENTIV_SERVE_CORS_ALLOW_ORIGINS", '["https://app.example.com"]')
    cfg = serve_config_from_env()
    assert cfg is not None
    assert cfg.target.ingress_options["cors_allow_origins"] == ["https://app.example.com"]
    assert repr(ServeClient.from_config(cfg)) == "ServeClient('http://h:8265')"
    # The token itself (no file) is accepted too, and never shown.
    settings = Settings(ray_dashboard_url="http://h:8265", ray_auth_token_file=None,
                        ray_auth_token="s3cret-token")  # type: ignore[arg-type]
    cfg = serve_config(settings)
    assert cfg is not None and cfg.token == "s3cret-token" and "s3cret" not in repr(cfg)
    assert ServeClient.from_config(cfg)._auth_headers() == {
        "Authorization": "Bearer s3cret-token"}
    # A bad port is a settings error, not a crash later.
    monkeypatch.setenv("INVENTIV_SERVE_HTTP_PORT", "not-a-port")
    with pytest.raises(ValueError, match="serve_http_port"):
        Settings()


GUARDED = """\
version: 1
deployments:
  - name: gamma
    model: {name: m-gamma, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    autoscaling: {min_replicas: 2, max_replicas: 4, initial_replicas: 2}
  - name: delta
    model: {name: m.delta, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    autoscaling: {policy: ray, min_replicas: 1, max_replicas: 1}
"""


def replica_ids(client: ServeClient) -> dict[str, set[str]]:
    """Replica ids per deployment once the app is RUNNING, every replica RUNNING, and two
    reads a second apart agree (a rolling restart would show up in between)."""
    deadline = time.monotonic() + 90
    previous: dict[str, set[str]] | None = None
    while True:
        app = client.get_applications()["applications"].get(APP) or {}
        ids = {name: {r["replica_id"] for r in d.get("replicas") or []}
               for name, d in (app.get("deployments") or {}).items()}
        settled = app.get("status") == "RUNNING" and all(
            r.get("state") == "RUNNING" for d in (app.get("deployments") or {}).values()
            for r in d.get("replicas") or [])
        if settled and ids == previous:
            return ids
        previous = ids if settled else None
        assert time.monotonic() < deadline, app
        time.sleep(1)


def deployed_max(client: ServeClient, name: str) -> int:
    cfg = client.get_applications()["applications"][APP]["deployed_app_config"]
    return next(int(d["autoscaling_config"]["max_replicas"]) for d in cfg["deployments"]
                if d["name"] == name)


def test_budget_cap_is_a_lightweight_update(db_url: str, ray_head: Head,
                                            db: sessionmaker[Session]) -> None:
    """A budget cap (max_replicas in the per-deployment override) keeps every replica; a change
    of policy_kwargs (what the cap must NOT use) restarts every replica of the app."""
    if db_url.startswith("sqlite") and _postgres_available() is None:
        pytest.skip("runs once, on Postgres")
    client = ServeClient(ray_head.dashboard_url, token_file=ray_head.token_file,
                         timeout_s=20, target=target(ray_head))
    job = svc.serve_sync_job(client, PLANE)
    with db() as s, s.begin():
        add(s, GUARDED)
        assert svc.apply_all(s, client, render_serve_config).ok
    wait_app(client, present=True)
    before = replica_ids(client)
    assert len(before["LLMServer:m-gamma"]) == 2 and len(before["LLMServer:m_delta"]) == 1
    assert deployed_max(client, "LLMServer:m-gamma") == 4
    with db() as s, s.begin():
        # Once Serve runs the deployment, initial_replicas leaves the override (else Serve would
        # reset the replica target to it on every config change): one lightweight update.
        assert job(s, svc.utcnow())["applied"] is True
    assert replica_ids(client) == before
    with db() as s, s.begin():
        assert job(s, svc.utcnow())["in_sync"] is True
        gamma_id = s.scalar(select(Deployment.id).where(Deployment.name == "gamma"))
        assert gamma_id is not None
        # A zero budget is exceeded at once (spend 0 >= 0).
        s.add(Budget(scope=BudgetScope.DEPLOYMENT, target_id=gamma_id, monthly_eur=Decimal(0)))
        s.flush()
        evaluate_budgets(s, svc.utcnow())
        out = job(s, svc.utcnow())
        assert without_placements(out) == {"in_sync": False, "applied": True,
                                           "status": "applied"}, out
        caps = current_scale_caps(s)
        assert caps[gamma_id].replicas == 2
        assert caps[gamma_id].reason == "deployment budget exceeded"
    after = replica_ids(client)
    assert after == before, "the cap restarted replicas"
    assert deployed_max(client, "LLMServer:m-gamma") == 2
    with db() as s, s.begin():
        assert without_placements(job(s, svc.utcnow())) == {"in_sync": True,
                                                            "serve_status": "running"}
        assert len(list(s.scalars(select(ActionLog.id).where(
            ActionLog.type == "deployment.scale_capped")))) == 1
        # Budget raised: the cap ends, max_replicas is back, replicas untouched.
        s.execute(update(Budget).values(monthly_eur=Decimal(100)))
        evaluate_budgets(s, svc.utcnow())
        assert job(s, svc.utcnow())["applied"] is True
        assert current_scale_caps(s) == {}
    assert replica_ids(client) == before
    assert deployed_max(client, "LLMServer:m-gamma") == 4

    # Why not policy_kwargs: the same config with only gamma's policy_kwargs changed is a new
    # code version for Serve, and EVERY replica of the app (delta's, the ingress') restarts.
    with db() as s:
        config = svc.desired_config(s, client.target, render_serve_config,
                                    client.get_applications())
    gamma = next(d for d in config["applications"][0]["deployments"]
                 if d["name"] == "LLMServer:m-gamma")
    gamma["autoscaling_config"]["policy"]["policy_kwargs"]["replica_start_s"] += 5
    client.put_applications(config)
    time.sleep(2)  # let the controller start the rebuild before polling for a settled app
    restarted = replica_ids(client)
    for name, ids in before.items():
        assert not ids & restarted[name], f"{name} kept replicas across a policy_kwargs change"
    client.delete_applications()
    wait_app(client, present=False, timeout=30)
