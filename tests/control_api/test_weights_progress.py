"""POST /api/internal/weights/progress: per-node progress in GET /api/deployments/{name}, a failed
download marks the deployment failed and takes it out of the Serve config, and a re-apply
retries. Real database (both backends), bad bodies are 422 naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from control_api.serve_client import ServeClient, ServeTarget
from control_api.services import deployments as svc
from core.models import Deployment
from serve_apps.serve_config import render_serve_config
from tests.api.routes.test_deployments import PLANE, closed_port, post_yaml

YAML = """\
version: 1
deployments:
  - name: chat-w
    model: {name: model-w, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 128}
  - name: chat-x
    model: {name: model-x, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 128}
"""


@pytest.fixture
def api(client: TestClient) -> TestClient:
    """The app with a Serve client aimed at a closed port (every apply is "pending")."""
    app: Any = client.app
    app.state.serve_client = ServeClient(f"http://127.0.0.1:{closed_port()}", timeout_s=2)
    app.state.plane = PLANE
    return client


def report(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"deployment": "chat-w", "node_id": "node-a", "source":
                            "builtin:tiny-llama", "revision": None, "state": "downloading",
                            "bytes_done": 100, "bytes_total": 400, "error": None}
    body.update(over)
    return body


def rendered(api: TestClient) -> list[str]:
    with api.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        cfg = svc.desired_config(s, ServeTarget(), render_serve_config)
    return [d["name"] for app in cfg["applications"] for d in app["args"]["spec"]["deployments"]]


def test_progress_shown_per_node_then_failure_stops_it(
        api: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]) -> None:
    assert post_yaml(api, admin_headers, YAML).status_code == 200
    url = "/api/internal/weights/progress"
    assert api.post(url, json=report(), headers=service_headers).status_code == 200
    assert api.post(url, json=report(node_id="node-b", state="ready", bytes_done=400,
                                     revision="abc"), headers=service_headers).status_code == 200
    r = api.post(url, json=report(bytes_done=300), headers=service_headers)  # latest wins
    assert r.status_code == 200, r.text
    shown = api.get("/api/deployments/chat-w", headers=admin_headers).json()
    assert [(w["node_id"], w["state"], w["bytes_done"], w["bytes_total"], w["revision"])
            for w in shown["weights"]] == [("node-a", "downloading", 300, 400, None),
                                           ("node-b", "ready", 400, 400, "abc")]
    assert rendered(api) == ["chat-w", "chat-x"]

    err = {"code": "hf_gated", "message": "403: access to model-w is restricted"}
    r = api.post(url, json=report(state="failed", error=err), headers=service_headers)
    assert r.status_code == 200, r.text
    shown = api.get("/api/deployments/chat-w", headers=admin_headers).json()
    assert shown["status"] == "failed"
    assert shown["status_message"] == ("weights failed on node node-a: hf_gated: 403: access "
                                       "to model-w is restricted")
    assert shown["weights"][0]["error"] == err
    # Out of the Serve config (no replica is started for it), the other one stays.
    assert rendered(api) == ["chat-x"]
    # An apply (a write of anything, or the sync job) does not overwrite the failure.
    with api.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        svc.apply_all(s, None, render_serve_config)
        s.commit()
        dep = s.scalar(select(Deployment).where(Deployment.name == "chat-w"))
        assert dep is not None and dep.status == "failed"
    # Applying the same file again retries: rows cleared, back in the config.
    r = post_yaml(api, admin_headers, YAML)
    changes = {i["name"]: i["change"] for i in r.json()["items"]}
    assert changes == {"chat-w": "retried", "chat-x": "unchanged"}
    shown = api.get("/api/deployments/chat-w", headers=admin_headers).json()
    assert shown["weights"] == [] and shown["status"] == "pending"
    assert rendered(api) == ["chat-w", "chat-x"]


def test_bad_reports_are_422_naming_the_field(
        api: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]) -> None:
    assert post_yaml(api, admin_headers, YAML).status_code == 200
    url = "/api/internal/weights/progress"
    r = api.post(url, json=report(deployment="nope"), headers=service_headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "deployment_not_found"
    for bad, field in ((report(state="done"), "state"), (report(bytes_done=-1), "bytes_done"),
                       (report(state="failed"), "error"), (report(extra=1), "extra"),
                       (report(bytes_done=500), "bytes_done"),
                       (report(error={"code": "x", "message": "m"}), "error")):
        r = api.post(url, json=bad, headers=service_headers)
        assert r.status_code == 422, (bad, r.text)
        assert field in r.text, r.text
    body = report()
    del body["revision"]  # exactly the documented body: every field present
    assert api.post(url, json=body, headers=service_headers).status_code == 422
    # Users may not report; no token: 401.
    assert api.post(url, json=report(), headers=admin_headers).status_code in (401, 403)
    assert api.post(url, json=report()).status_code == 401
