"""A FinOps walk-through on the laptop default (SQLite, local nodes priced from the catalog).

    python benchmarks/finops_demo.py

Starts the control API on a temporary SQLite database, reports two local nodes through the real
internal lifecycle endpoint (a ``local-L4`` serving ``tiny-chat`` for 6 h, a ``local-H100`` that
ran 90 minutes and idled), reports usage of two orgs through the internal usage endpoint, then runs
``inventiv costs …`` against it. The clock is fixed so the figures are reproducible.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from typer.testing import CliRunner

NOW = datetime(2025, 3, 11, 18, 0, tzinfo=UTC)
SERVICE_TOKEN = "ist-demo-service-token"  # noqa: S105 - a throwaway token of the demo database
ADMIN_PASSWORD = "demo-admin-password"  # noqa: S105


def _serve(app: object) -> tuple[uvicorn.Server, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # type: ignore[arg-type]
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    from cli.main import app as cli_app
    from control_api.app import create_app
    from control_api.settings import Settings
    from core.models import Deployment, Org

    data = Path(tempfile.mkdtemp(prefix="inventiv-finops-demo-"))
    settings = Settings(data_dir=data, admin_password=ADMIN_PASSWORD,  # type: ignore[arg-type]
                        service_token=SERVICE_TOKEN, cookie_secure=False)  # type: ignore[arg-type]
    app = create_app(settings)
    app.state.finops_clock = lambda: NOW
    server, url = _serve(app)
    try:
        with app.state.sessionmaker() as s, s.begin():
            dep = Deployment(name="tiny-chat", spec={
                "autoscaling": {"min_replicas": 1}, "placement": {"accelerator_type": "L4"}})
            acme, globex = Org(name="acme"), Org(name="globex")
            s.add_all([dep, acme, globex])
            s.flush()
            dep_id, acme_id, globex_id = dep.id, acme.id, globex.id
        svc = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        events = []
        for launch, itype, dep_ref, up, down in (
                ("demo-l4", "local-L4", str(dep_id), NOW - timedelta(hours=6), None),
                ("demo-h100", "local-H100", None, NOW - timedelta(hours=4),
                 NOW - timedelta(hours=2, minutes=30))):
            base = {"launch_id": launch, "cluster_name": "laptop", "provider": "local",
                    "instance_type": itype, "zone": "local-1", "deployment_id": dep_ref}
            events.append({**base, "event_id": uuid.uuid4().hex, "state": "provisioning",
                           "at": up.isoformat(), "cloud_exists": True,
                           "provider_instance_id": launch})
            events.append({**base, "event_id": uuid.uuid4().hex, "state": "ready",
                           "at": (up + timedelta(minutes=2)).isoformat(), "cloud_exists": True,
                           "provider_instance_id": launch})
            if down is not None:
                events.append({**base, "event_id": uuid.uuid4().hex, "state": "terminated",
                               "at": down.isoformat(), "cloud_exists": False,
                               "provider_instance_id": launch})
        r = httpx.post(f"{url}/api/internal/lifecycle-events", json={"events": events},
                       headers=svc, timeout=30)
        r.raise_for_status()
        records = []
        for k in range(40):
            org = acme_id if k % 4 else globex_id
            records.append({"request_id": f"demo-{k}", "org_id": str(org), "model": "tiny-chat",
                            "deployment": "tiny-chat", "prompt_tokens": 900 + 10 * k,
                            "completion_tokens": 300 + 5 * k, "status": "completed",
                            "streamed": False,
                            "at": (NOW - timedelta(minutes=7 * k + 3)).isoformat()})
        r = httpx.post(f"{url}/api/internal/usage", json={"records": records}, headers=svc,
                       timeout=30)
        r.raise_for_status()
        runner = CliRunner()
        env = {"INVENTIV_CONFIG_DIR": str(data / "cli"), "INVENTIV_API_URL": url,
               "COLUMNS": "100"}
        os.environ.pop("INVENTIV_TOKEN", None)
        runner.invoke(cli_app, ["login", "--username", "admin", "--password", ADMIN_PASSWORD],
                      env=env)
        for cmd in (["costs", "summary"], ["costs", "show", "--window", "day", "--by",
                                          "instance_type"],
                    ["costs", "series", "--window", "day", "--bucket", "hour"],
                    ["costs", "unit", "--window", "day"], ["costs", "chargeback", "--window",
                                                           "day"],
                    ["costs", "forecast"]):
            result = runner.invoke(cli_app, cmd, env=env)
            print(f"$ inventiv {' '.join(cmd)}")
            print(result.stdout.rstrip() or result.stderr.rstrip())
            print()
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
