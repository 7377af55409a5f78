"""Budget guard, learned replica start time and model linking of /api/deployments, on Postgres
and SQLite. Serve's side (a cap keeps replicas) is in tests/control_api/test_serve_client.py;
here the Serve state the guard reads is given as Serve's GET shape, and the config is checked as
sent (rendered by the data plane's renderer, as `inventiv api serve` wires it)."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_api.ports import DataPlane
from control_api.serve_client import ServeClient, ServeTarget
from control_api.services import deployments as svc
from core.db import utcnow
from core.models import (
    ActionLog,
    Budget,
    BudgetScope,
    Deployment,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Model,
)
from finops.budgets import CAP_ENDED, CAP_STARTED, evaluate_budgets
from serve_apps.serve_config import render_serve_config as render
from tests.conftest import Factory

APP = "inventiv"

GUARDED = """\
version: 1
deployments:
  - name: guarded
    model: {name: model-g, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    autoscaling: {min_replicas: 1, max_replicas: 8}
    allowed_orgs: [org-x]
  - name: open
    model: {name: model-o, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    autoscaling: {policy: ray, min_replicas: 2, max_replicas: 5}
"""


@pytest.fixture
def api(client: TestClient) -> TestClient:
    """Serve aimed at a closed port: applies stay "pending" (the config is checked directly)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client.app.state.serve_client = ServeClient(  # type: ignore[attr-defined]
        f"http://127.0.0.1:{port}", timeout_s=2)
    client.app.state.plane = DataPlane(render_serve_config=render)  # type: ignore[attr-defined]
    return client


def session(api: TestClient) -> Session:
    return api.app.state.sessionmaker()  # type: ignore[attr-defined, no-any-return]


def post(api: TestClient, headers: dict[str, str], text: str) -> Any:
    r = api.post("/api/deployments", content=text.encode(),
                 headers={**headers, "Content-Type": "application/yaml"})
    assert r.status_code == 200, r.text
    return r.json()


def serve_details(replicas: dict[str, list[str]], args: Any = None,
                  deployments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Serve's GET /api/serve/applications/ shape (the parts the control API reads)."""
    return {"applications": {APP: {
        "status": "RUNNING",
        "deployed_app_config": {"import_path": "serve_apps.builder:app_builder", "args": args,
                                "deployments": deployments or []},
        "deployments": {name: {"replicas": [{"replica_id": f"r{i}", "state": st}
                                            for i, st in enumerate(states)]}
                        for name, states in replicas.items()}}}}


def overrides(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d["autoscaling_config"] for d in config["applications"][0]["deployments"]}


def test_model_id_is_filled(api: TestClient, admin_headers: dict[str, str]) -> None:
    items = post(api, admin_headers, GUARDED)["items"]
    assert all(i["model_id"] for i in items)
    with session(api) as s:
        model = s.get(Model, uuid.UUID(items[0]["model_id"]))
        assert model is not None
        assert (model.name, model.source, model.max_model_len) == (
            "model-g", "builtin:tiny-llama", 512)
    # A new version of the spec updates the same row; the unchanged one keeps its link.
    changed = GUARDED.replace("max_model_len: 512}\n    limits: {max_tokens: 64}\n"
                              "    autoscaling: {min_replicas: 1",
                              "max_model_len: 1024}\n    limits: {max_tokens: 64}\n"
                              "    autoscaling: {min_replicas: 1")
    again = post(api, admin_headers, changed)["items"]
    assert [i["change"] for i in again] == ["updated", "unchanged"]
    assert [i["model_id"] for i in again] == [i["model_id"] for i in items]
    with session(api) as s:
        assert s.scalar(select(Model.max_model_len).where(Model.name == "model-g")) == 1024
    shown = api.get("/api/deployments/guarded", headers=admin_headers).json()
    assert shown["model_id"] == items[0]["model_id"]


def test_budget_cap_lifecycle(api: TestClient, admin_headers: dict[str, str],
                              factory: Factory) -> None:
    org = factory.org("org-x")
    post(api, admin_headers, GUARDED)
    target = ServeTarget(app_name=APP)
    g, o = "LLMServer:model-g", "LLMServer:model-o"
    # Serve runs 3 live replicas of model-g (a 4th is stopping: not capacity).
    details = serve_details({g: ["RUNNING", "RUNNING", "STARTING", "STOPPING"],
                             o: ["RUNNING", "RUNNING"]})
    now = utcnow()
    with session(api) as s, s.begin():
        before = overrides(svc.desired_config(s, target, render, details))
        # The org that may use "guarded" spends over a zero budget: exceeded.
        s.add(Budget(scope=BudgetScope.ORG, target_id=org, org_id=org, monthly_eur=Decimal(0)))
        s.flush()
        evaluate_budgets(s, now)
        caps = svc.update_scale_caps(s, details, APP, now)
        assert list(caps.values())[0].replicas == 3
        # Only a change is logged: the next ticks add nothing.
        svc.update_scale_caps(s, details, APP, now + timedelta(seconds=30))
        svc.update_scale_caps(s, serve_details({g: ["RUNNING"]}), APP,
                              now + timedelta(seconds=60))
        after = overrides(svc.desired_config(s, target, render, details))
        assert not svc.in_sync(s, ServeClient(target=target), render, serve_details(
            {}, deployments=[{"name": n, "autoscaling_config": c} for n, c in before.items()]))
    shown = api.get("/api/deployments/guarded", headers=admin_headers).json()
    assert shown["scale_cap"]["replicas"] == 3
    assert shown["scale_cap"]["reason"] == "org budget exceeded: org-x"
    assert api.get("/api/deployments/open", headers=admin_headers).json()["scale_cap"] is None
    # The Serve config: only max_replicas moves (3); the policy (kwargs included: they are
    # part of Serve's code version) does not; the uncapped deployment is untouched.
    assert after[g]["max_replicas"] == 3 and before[g]["max_replicas"] == 8
    assert after[g]["policy"] == before[g]["policy"]
    assert after[g]["policy"]["policy_kwargs"]["scale_up_cap"] is None
    assert after[o] == before[o]
    # initial_replicas is left out for deployments Serve already runs.
    assert all("initial_replicas" not in c for c in after.values())
    metrics = api.get("/metrics").text
    assert 'inventiv_deployment_scale_up_capped{deployment="guarded"} 1.0' in metrics
    assert 'inventiv_deployment_scale_up_capped{deployment="open"} 0.0' in metrics
    assert 'inventiv_deployment_scale_up_cap_replicas{deployment="guarded"} 3.0' in metrics
    logs = api.get("/api/action-logs", headers=admin_headers,
                   params={"type": CAP_STARTED}).json()
    with session(api) as s:
        started = list(s.scalars(select(ActionLog).where(ActionLog.type == CAP_STARTED)))
        assert len(started) == 1
        assert started[0].details is not None
        assert started[0].details["replicas_from"] == "serve"
    assert logs  # visible through the action-log API too

    # The budget is raised: the cap ends (logged once), max_replicas is back.
    with session(api) as s, s.begin():
        s.execute(update(Budget).values(monthly_eur=Decimal(100)))
        evaluate_budgets(s, now)
        assert svc.update_scale_caps(s, details, APP, now) == {}
        svc.update_scale_caps(s, details, APP, now)
        assert overrides(svc.desired_config(s, target, render, details)) == before
        assert len(list(s.scalars(select(ActionLog.id).where(
            ActionLog.type == CAP_ENDED)))) == 1
    assert api.get("/api/deployments/guarded", headers=admin_headers).json()["scale_cap"] \
        is None
    assert 'inventiv_deployment_scale_up_capped{deployment="guarded"} 0.0' in \
        api.get("/metrics").text


def test_deployment_budget_cap_without_serve_status(api: TestClient,
                                                   admin_headers: dict[str, str]) -> None:
    post(api, admin_headers, GUARDED)
    now = utcnow()
    with session(api) as s, s.begin():
        dep_id = s.scalar(select(Deployment.id).where(Deployment.name == "open"))
        s.add(Budget(scope=BudgetScope.DEPLOYMENT, target_id=dep_id, monthly_eur=Decimal(0)))
        s.flush()
        evaluate_budgets(s, now)
        # Serve unknown (unreachable, not deployed yet): the cap is min_replicas.
        caps = svc.update_scale_caps(s, None, APP, now)
        assert (caps[dep_id].replicas, caps[dep_id].reason) == (2, "deployment budget exceeded")
        cfg = overrides(svc.desired_config(s, ServeTarget(app_name=APP), render))
        assert cfg["LLMServer:model-o"]["max_replicas"] == 2
        assert "policy" not in cfg["LLMServer:model-o"]  # policy: ray
        # Deleted while capped: the cap is closed.
        s.execute(update(Deployment).where(Deployment.id == dep_id).values(deleted_at=now))
        assert svc.update_scale_caps(s, None, APP, now) == {}
    shown = api.get("/api/deployments/open", headers=admin_headers,
                    params={"include_deleted": True})
    assert shown.status_code == 404 or shown.json()["scale_cap"] is None


LEARNED = """\
version: 1
deployments:
  - name: local-chat
    model: {name: tiny, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    placement: {accelerator_type: null, cpus: 1, resources: {local_gpu_slot: 1}}
  - name: fixed
    model: {name: fixed, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    placement: {accelerator_type: L4}
    autoscaling: {replica_start_s: 42}
"""


def test_replica_start_learned_from_lifecycle(api: TestClient,
                                              admin_headers: dict[str, str]) -> None:
    post(api, admin_headers, LEARNED)
    shown = api.get("/api/deployments/local-chat", headers=admin_headers).json()
    assert shown["replica_start"]["source"] == "default"
    t0 = utcnow() - timedelta(hours=1)
    with session(api) as s, s.begin():
        # Four local nodes booted in 10, 20, 30, 40 s; one never got ready; one Scaleway L4
        # (another type) booted in 500 s: not a type this deployment runs on.
        for i, (itype, boot) in enumerate([("local-L4", 10), ("local-L40S", 20),
                                           ("local-L4", 30), ("local-H100", 40),
                                           ("local-L4", None), ("L4-1-24G", 500)]):
            inst = Instance(launch_id=f"l{i}", cluster_name="c",
                            provider_code="local" if itype.startswith("local") else "scaleway",
                            instance_type_name=itype, state=InstanceState.READY,
                            created_at=t0 + timedelta(minutes=i))
            s.add(inst)
            s.flush()
            at = t0 + timedelta(minutes=i)
            s.add(InstanceStateHistory(instance_id=inst.id, from_state=None,
                                       to_state=InstanceState.REQUESTED, at=at))
            if boot is not None:
                s.add(InstanceStateHistory(instance_id=inst.id,
                                           from_state=InstanceState.JOINING,
                                           to_state=InstanceState.READY,
                                           at=at + timedelta(seconds=boot)))
    shown = api.get("/api/deployments/local-chat", headers=admin_headers).json()
    # p75 of 10..40 s = 32.5 + 60 s model load = 92.5 -> 95.
    assert shown["replica_start"] == {"seconds": 95.0, "source": "learned",
                                      "node_boot_s": 32.5, "model_load_s": 60.0, "samples": 4}
    fixed = api.get("/api/deployments/fixed", headers=admin_headers).json()
    assert (fixed["replica_start"]["seconds"], fixed["replica_start"]["source"]) == (45.0, "spec")
    listed = {d["name"]: d["replica_start"]["seconds"]
              for d in api.get("/api/deployments", headers=admin_headers).json()["items"]}
    assert listed == {"local-chat": 95.0, "fixed": 45.0}
    target = ServeTarget(app_name=APP)
    with session(api) as s:
        config = svc.desired_config(s, target, render)
        kwargs = overrides(config)["LLMServer:tiny"]["policy"]["policy_kwargs"]
        assert kwargs["replica_start_s"] == 95.0
        assert overrides(config)["LLMServer:fixed"]["policy"]["policy_kwargs"][
            "replica_start_s"] == 42  # the YAML's value as given
        # Sticky while Serve runs the same build: the value it runs with is kept (changing it
        # would restart every replica); a new build re-learns it.
        deployed = [{"name": "LLMServer:tiny", "autoscaling_config": {
            "policy": {"policy_function": "x:y", "policy_kwargs": {"replica_start_s": 50}}}}]
        args = config["applications"][0]["args"]
        same = serve_details({}, args=args, deployments=deployed)
        assert overrides(svc.desired_config(s, target, render, same))["LLMServer:tiny"]["policy"][
            "policy_kwargs"]["replica_start_s"] == 50
        other = serve_details({}, args={**args, "options": {}}, deployments=deployed)
        assert overrides(svc.desired_config(s, target, render, other))["LLMServer:tiny"]["policy"][
            "policy_kwargs"]["replica_start_s"] == 95.0


def test_replica_bounds_change_keeps_the_app_build(api: TestClient,
                                                   admin_headers: dict[str, str]) -> None:
    """Changing replica bounds or the target is a lightweight Serve update: ``args`` (which
    would rebuild the app and restart every replica) stay identical, only the override moves;
    whether a deployment may sit at zero replicas still reaches the ingress through ``args``."""
    post(api, admin_headers, GUARDED)
    target = ServeTarget(app_name=APP)
    with session(api) as s:
        before = svc.desired_config(s, target, render)
    post(api, admin_headers, GUARDED.replace(
        "autoscaling: {min_replicas: 1, max_replicas: 8}",
        "autoscaling: {min_replicas: 2, max_replicas: 6, target_ongoing_requests: 3}"))
    with session(api) as s:
        after = svc.desired_config(s, target, render)
    assert after["applications"][0]["args"] == before["applications"][0]["args"]
    assert (overrides(after)["LLMServer:model-g"]["max_replicas"],
            overrides(after)["LLMServer:model-g"]["min_replicas"],
            overrides(after)["LLMServer:model-g"]["target_ongoing_requests"]) == (6, 2, 3)
    post(api, admin_headers, GUARDED.replace(
        "autoscaling: {min_replicas: 1, max_replicas: 8}",
        "autoscaling: {min_replicas: 0, max_replicas: 8}"))
    with session(api) as s:
        zero = svc.desired_config(s, target, render)
    built = {d["name"]: d for d in zero["applications"][0]["args"]["spec"]["deployments"]}
    assert built["guarded"]["autoscaling"]["min_replicas"] == 0
    assert zero["applications"][0]["args"] != before["applications"][0]["args"]
