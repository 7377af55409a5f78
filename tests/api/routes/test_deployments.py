"""/api/deployments: validation with field and line, upsert versioning, RBAC, soft delete,
action logs, and the best-effort apply (an unreachable dashboard leaves them "pending").

The Serve side against a real Ray head is in tests/control_api/test_serve_client.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from control_api.errors import ERROR_RESPONSES
from control_api.ports import NO_DATA_PLANE, DataPlane
from control_api.routes import deployments as deployments_routes
from control_api.serve_client import ServeClient
from control_api.services import deployments as svc
from core.models import ActionLog, Deployment
from serve_apps.serve_config import render_serve_config
from tests.conftest import Factory

# The data plane as `inventiv api serve` wires it (cli.compose): the Serve config renderer.
PLANE = DataPlane(render_serve_config=render_serve_config)

LOCAL_YAML = Path(__file__).resolve().parents[3] / "configs" / "deployments" / "local.yaml"

ONE = """\
version: 1
deployments:
  - name: chat-a
    model:
      name: model-a
      source: builtin:tiny-llama
    engine:
      max_model_len: 512
    limits:
      max_tokens: 128
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(client: TestClient) -> TestClient:
    """The app with the deployments router (unless app.py includes it already) and a Serve
    client aimed at a closed port: every apply is "pending"."""
    app: Any = client.app
    if not any(getattr(r, "path", "").startswith("/api/deployments") for r in app.routes):
        app.include_router(deployments_routes.router, responses=ERROR_RESPONSES)
    app.state.serve_client = ServeClient(f"http://127.0.0.1:{closed_port()}", timeout_s=2)
    app.state.plane = PLANE
    return client


def post_yaml(api: TestClient, headers: dict[str, str], text: str) -> Any:
    return api.post("/api/deployments", content=text.encode(),
                    headers={**headers, "Content-Type": "application/yaml"})


def logs(api: TestClient, type_: str) -> list[ActionLog]:
    with api.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        return list(s.scalars(select(ActionLog).where(ActionLog.type == type_)
                              .order_by(ActionLog.id)))


def test_yaml_errors_name_field_and_line(api: TestClient, admin_headers: dict[str, str]) -> None:
    bad = ONE.replace("max_tokens: 128", "max_tokens: 0").replace(
        "      source:", "      colour: red\n      source:")
    r = post_yaml(api, admin_headers, bad)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_deployment"
    by_field = {d["field"]: d for d in err["details"]}
    assert by_field["deployments[0].model.colour"]["line"] == 6
    assert by_field["deployments[0].model.colour"]["message"] == "unknown field"
    assert by_field["deployments[0].limits.max_tokens"]["line"] == 11
    assert "line 11" in err["message"]
    # The same through JSON {"yaml": ...}, and broken YAML syntax names its line.
    r = api.post("/api/deployments", json={"yaml": "version: 1\ndeployments: [\n  {a: 1\n"},
                 headers=admin_headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_deployment"
    assert r.json()["error"]["details"][0]["line"] is not None
    # A parsed mapping: the field is named, no line.
    spec = yaml.safe_load(ONE)
    spec["deployments"][0]["engine"]["max_model_len"] = "big"
    r = api.post("/api/deployments", json={"spec": spec}, headers=admin_headers)
    assert r.status_code == 422, r.text
    detail = r.json()["error"]["details"][0]
    assert detail["field"] == "deployments[0].engine.max_model_len" and detail["line"] is None
    # Malformed bodies: 422, never 500.
    for body in ({}, {"spec": {}, "yaml": "x"}, {"spec": "x"}, {"other": 1}):
        r = api.post("/api/deployments", json=body, headers=admin_headers)
        assert r.status_code == 422, (body, r.text)
    r = api.post("/api/deployments", content=b"\xff\xfe", headers={
        **admin_headers, "Content-Type": "application/yaml"})
    assert r.status_code == 422
    r = api.post("/api/deployments", content=b"not json", headers={
        **admin_headers, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert api.get("/api/deployments", headers=admin_headers).json()["items"] == []


def test_upsert_versions_and_pending_apply(api: TestClient,
                                           admin_headers: dict[str, str]) -> None:
    r = post_yaml(api, admin_headers, LOCAL_YAML.read_text())
    assert r.status_code == 200, r.text
    items = {i["name"]: i for i in r.json()["items"]}
    assert set(items) == {"tiny-chat", "minilm-embed"}
    chat = items["tiny-chat"]
    assert chat["version"] == 1 and chat["change"] == "created"
    # The dashboard is unreachable: the write succeeded, the status says why it is pending.
    assert chat["status"] == "pending"
    assert "connection refused" in chat["status_message"]
    assert chat["spec"]["limits"]["max_tokens"] == 256  # stored validated, defaults filled
    assert chat["spec"]["autoscaling"]["max_queued_requests"] == 64

    # Same content again: unchanged, no new version, no new log.
    r = post_yaml(api, admin_headers, LOCAL_YAML.read_text())
    assert {i["change"] for i in r.json()["items"]} == {"unchanged"}
    assert {i["version"] for i in r.json()["items"]} == {1}

    # One change: only that deployment gets version 2.
    changed = yaml.safe_load(LOCAL_YAML.read_text())
    changed["deployments"][0]["limits"]["max_tokens"] = 200
    r = api.post("/api/deployments", json={"spec": changed}, headers=admin_headers)
    assert r.status_code == 200, r.text
    items = {i["name"]: i for i in r.json()["items"]}
    assert (items["tiny-chat"]["version"], items["tiny-chat"]["change"]) == (2, "updated")
    assert (items["minilm-embed"]["version"], items["minilm-embed"]["change"]) == (1, "unchanged")
    shown = api.get("/api/deployments/tiny-chat", headers=admin_headers).json()
    assert shown["spec"]["limits"]["max_tokens"] == 200 and shown["version"] == 2
    assert api.get(f"/api/deployments/{shown['id']}", headers=admin_headers).json()["name"] \
        == "tiny-chat"

    # The file's order: tiny-chat first.
    assert [(lg.details or {})["name"] for lg in logs(api, "deployment.created")] == \
        ["tiny-chat", "minilm-embed"]
    updated = logs(api, "deployment.updated")
    assert [((lg.details or {})["name"], (lg.details or {})["version"])
            for lg in updated] == [("tiny-chat", 2)]
    applies = logs(api, "deployment.apply")
    assert len(applies) == 2  # the unchanged write did not re-apply
    assert {a.status for a in applies} == {"failure"}
    assert applies[-1].error_code == "serve_pending"


def test_soft_delete(api: TestClient, admin_headers: dict[str, str]) -> None:
    post_yaml(api, admin_headers, ONE)
    r = api.delete("/api/deployments/chat-a", headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "deleting" and body["deleted_at"] is not None
    # Still listed while Serve has not removed it; gone once deleted; 404 on a second delete.
    assert [i["name"] for i in api.get("/api/deployments", headers=admin_headers)
            .json()["items"]] == ["chat-a"]
    assert api.delete("/api/deployments/chat-a", headers=admin_headers).status_code == 404
    assert api.delete("/api/deployments/nope", headers=admin_headers).status_code == 404
    assert api.get("/api/deployments/not-a-uuid-or-name!", headers=admin_headers) \
        .status_code == 404
    [log] = logs(api, "deployment.deleted")
    assert (log.details or {})["name"] == "chat-a"
    # Re-posting brings it back as a new version.
    r = post_yaml(api, admin_headers, ONE)
    item = r.json()["items"][0]
    assert (item["version"], item["change"], item["deleted_at"]) == (2, "updated", None)


def test_rbac(api: TestClient, admin_headers: dict[str, str], factory: Factory) -> None:
    org_a = factory.org("team-a")
    org_b = factory.org()
    spec = yaml.safe_load(ONE)
    open_dep = spec["deployments"][0]
    by_name = {**open_dep, "name": "only-a", "model": {**open_dep["model"], "name": "m-a"},
               "allowed_orgs": ["team-a"]}
    by_id = {**open_dep, "name": "only-b", "model": {**open_dep["model"], "name": "m-b"},
             "allowed_orgs": [str(org_b)]}
    spec["deployments"] = [open_dep, by_name, by_id]
    assert api.post("/api/deployments", json={"spec": spec},
                    headers=admin_headers).status_code == 200

    owner_a = factory.user(org_a, "owner")
    member_b = factory.user(org_b, "member")
    loner = factory.user()

    def names(headers: dict[str, str]) -> list[str]:
        r = api.get("/api/deployments", headers=headers)
        assert r.status_code == 200, r.text
        return [i["name"] for i in r.json()["items"]]

    assert names(admin_headers) == ["chat-a", "only-a", "only-b"]
    assert names(owner_a.headers) == ["chat-a", "only-a"]
    assert names(member_b.headers) == ["chat-a", "only-b"]
    assert names(loner.headers) == []  # "every org" is not "everyone": in no org, nothing
    assert api.get("/api/deployments/only-b", headers=owner_a.headers).status_code == 404
    assert api.get("/api/deployments/only-a", headers=owner_a.headers).status_code == 200
    # Writes are platform-admin only, whatever the org role; anonymous: 401.
    assert post_yaml(api, owner_a.headers, ONE).status_code == 403
    assert api.delete("/api/deployments/only-a", headers=owner_a.headers).status_code == 403
    api.cookies.clear()  # the admin login left a session cookie
    assert api.get("/api/deployments").status_code == 401
    assert post_yaml(api, {}, ONE).status_code == 401


def test_cli_over_http(db: Any, settings: Any, tmp_path: Path) -> None:
    """`inventiv deploy -f`, `deployments list|show|delete` against the API over real HTTP."""
    import json

    import typer
    from typer.testing import CliRunner

    from cli import deploy as deploy_cli
    from control_api.app import create_app
    from tests.cli.conftest import ServerThread
    from tests.conftest import ADMIN_PASSWORD

    app = create_app(settings)
    if not any(getattr(r, "path", "").startswith("/api/deployments") for r in app.routes):
        app.include_router(deployments_routes.router, responses=ERROR_RESPONSES)
    app.state.serve_client = ServeClient(f"http://127.0.0.1:{closed_port()}", timeout_s=2)
    app.state.plane = PLANE
    cli = typer.Typer()
    cli.command("deploy")(deploy_cli.deploy)
    cli.add_typer(deploy_cli.app, name="deployments")
    runner = CliRunner()
    with ServerThread(app) as server:
        import httpx

        token = httpx.post(f"{server.url}/api/auth/login",
                           json={"username": "admin", "password": ADMIN_PASSWORD}
                           ).json()["access_token"]
        env = {"INVENTIV_API_URL": server.url, "INVENTIV_TOKEN": token, "COLUMNS": "250",
               "INVENTIV_CONFIG_DIR": str(tmp_path)}

        def run(*args: str) -> Any:
            return runner.invoke(cli, list(args), env=env)

        r = run("deploy", "-f", str(LOCAL_YAML))
        assert r.exit_code == 0, (r.stdout, r.stderr)
        assert "tiny-chat" in r.stdout and "pending" in r.stdout and "created" in r.stdout
        bad = tmp_path / "bad.yaml"
        bad.write_text(ONE.replace("max_tokens: 128", "max_tokens: 9999"))
        r = run("deploy", "-f", str(bad))
        assert r.exit_code == 1
        assert "deployments[0] (line 3)" in r.stderr and "max_model_len" in r.stderr
        listed = json.loads(run("deployments", "list", "--json").stdout)
        assert [i["name"] for i in listed["items"]] == ["minilm-embed", "tiny-chat"]
        shown = json.loads(run("deployments", "show", "tiny-chat", "--json").stdout)
        assert shown["version"] == 1 and shown["spec"]["model"]["name"] == "tiny"
        r = run("deployments", "show", "nope")
        assert r.exit_code == 1 and "not_found" in r.stderr
        r = run("deployments", "delete", "tiny-chat")
        assert r.exit_code == 0 and "deleting" in r.stdout
        r = run("deployments", "list")
        assert r.exit_code == 0 and "minilm-embed" in r.stdout


def test_without_a_data_plane_writes_stay_pending(api: TestClient,
                                                  admin_headers: dict[str, str]) -> None:
    """An app built without the data plane (no Serve config renderer) stores the write and
    leaves it ``pending`` saying why; the sync job skips. Never a 500."""
    state: Any = api.app.state  # type: ignore[attr-defined]
    state.plane = NO_DATA_PLANE
    r = post_yaml(api, admin_headers, ONE)
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert (item["status"], item["status_message"]) == ("pending", svc.NO_RENDERER)
    shown = api.get("/api/deployments/chat-a", headers=admin_headers).json()
    assert (shown["status"], shown["status_message"]) == ("pending", svc.NO_RENDERER)
    [apply] = logs(api, "deployment.apply")
    assert (apply.status, apply.error_code) == ("failure", "serve_pending")
    job = svc.serve_sync_job(state.serve_client, NO_DATA_PLANE)
    with state.sessionmaker() as s:
        assert job(s, svc.utcnow()) == {"skipped": svc.NO_RENDERER}
        assert s.scalar(select(Deployment.status)) == "pending"
    r = api.delete("/api/deployments/chat-a", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "deleting"
    assert r.json()["status_message"] == f"pending: {svc.NO_RENDERER}"
