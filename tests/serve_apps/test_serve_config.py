"""The Serve config renderer, a pure function: plain inputs in, the declarative config out. No
database, no Ray (except the one slow test that checks our deployment names against Ray's)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from control_api.serve_client import ServeTarget
from core.serve_names import LLM_DEPLOYMENT_PREFIX, serve_application, serve_deployment_name
from core.spec import DeploymentSpec
from serve_apps.serve_config import build_spec, render_serve_config

APP = "inventiv"
TARGET = ServeTarget(app_name=APP, http_host="127.0.0.1", http_port=8123,
                     ingress_options={"control_api_url": "http://api:8080"})


def stored(name: str, model: str, **autoscaling: Any) -> dict[str, Any]:
    """A deployment document as the control API stores it (validated, defaults filled)."""
    return DeploymentSpec.model_validate({
        "name": name, "model": {"name": model, "source": "builtin:tiny-llama"},
        "engine": {"max_model_len": 512}, "limits": {"max_tokens": 64},
        "autoscaling": autoscaling}).model_dump(mode="json")


def render(specs: list[dict[str, Any]], *, details: dict[str, Any] | None = None,
           caps: dict[str, int] | None = None, starts: dict[str, float] | None = None,
           target: ServeTarget = TARGET) -> dict[str, Any]:
    return render_serve_config(target, specs, details=details, caps=caps or {},
                               replica_start_s=starts or {})


def overrides(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d["autoscaling_config"] for d in config["applications"][0]["deployments"]}


def running(config: dict[str, Any], kwargs: dict[str, dict[str, Any]] | None = None,
            args: Any = None) -> dict[str, Any]:
    """Serve's GET answer once it runs ``config`` (``args``: what it was built with, default
    the config's; ``kwargs``: the policy_kwargs it runs each deployment with)."""
    app = config["applications"][0]
    deployed = [{"name": d["name"], "autoscaling_config": {
        **d["autoscaling_config"],
        "policy": {"policy_function": "x:y", "policy_kwargs": (kwargs or {}).get(d["name"], {})},
    }} for d in app["deployments"]]
    return {"applications": {APP: {
        "status": "RUNNING",
        "deployed_app_config": {"import_path": app["import_path"],
                                "args": app["args"] if args is None else args,
                                "deployments": deployed},
        "deployments": {d["name"]: {"replicas": []} for d in app["deployments"]}}}}


def test_no_deployment_no_application() -> None:
    assert render([]) == {"proxy_location": "EveryNode",
                          "http_options": {"host": "127.0.0.1", "port": 8123},
                          "applications": []}


def test_one_application_built_from_the_stored_specs() -> None:
    specs = [stored("chat", "org/chat.v1", min_replicas=2, max_replicas=6, initial_replicas=3),
             stored("embed", "embed", min_replicas=0, max_replicas=2)]
    before = copy.deepcopy(specs)
    config = render(specs, starts={"chat": 95.0, "embed": 30.0})
    assert specs == before  # inputs are not modified
    [app] = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == (
        APP, "/", "serve_apps.builder:app_builder")
    assert "runtime_env" not in app
    assert app["args"]["options"] == {"control_api_url": "http://api:8080", "app_name": APP}
    # args.spec: the stored documents with bounds and target neutralised (a bounds change must
    # not rebuild the app); whether a deployment may sit at zero replicas is kept.
    assert app["args"]["spec"] == build_spec({"version": 1, "deployments": specs})
    built = {d["name"]: d["autoscaling"] for d in app["args"]["spec"]["deployments"]}
    assert (built["chat"]["min_replicas"], built["chat"]["max_replicas"],
            built["chat"]["initial_replicas"], built["chat"]["target_ongoing_requests"]) == (
        1, 1, None, 1)
    assert built["embed"]["min_replicas"] == 0
    assert {k: v for k, v in app["args"]["spec"]["deployments"][0].items()
            if k != "autoscaling"} == {k: v for k, v in specs[0].items() if k != "autoscaling"}
    # The per-deployment overrides carry the real bounds, named as Ray Serve LLM names them.
    chat = overrides(config)["LLMServer:org--chat_v1"]
    assert (chat["min_replicas"], chat["max_replicas"], chat["initial_replicas"]) == (2, 6, 3)
    assert chat["policy"]["policy_kwargs"]["replica_start_s"] == 95.0
    assert chat["policy"]["policy_kwargs"]["scale_up_cap"] is None
    assert overrides(config)["LLMServer:embed"]["policy"]["policy_kwargs"][
        "replica_start_s"] == 30.0
    with_env = render(specs, target=ServeTarget(app_name=APP, runtime_env={"pip": ["x"]}))
    assert with_env["applications"][0]["runtime_env"] == {"pip": ["x"]}


def test_budget_cap_moves_only_max_replicas() -> None:
    specs = [stored("a", "a", min_replicas=2, max_replicas=8),
             stored("b", "b", min_replicas=0, max_replicas=4),
             stored("c", "c", policy="ray", min_replicas=1, max_replicas=5)]
    free = overrides(render(specs))
    capped = overrides(render(specs, caps={"a": 3, "b": 0, "c": 9}))
    assert capped["LLMServer:a"]["max_replicas"] == 3
    assert capped["LLMServer:a"]["policy"] == free["LLMServer:a"]["policy"]
    assert {k: v for k, v in capped["LLMServer:a"].items() if k != "max_replicas"} == {
        k: v for k, v in free["LLMServer:a"].items() if k != "max_replicas"}
    # At least 1 (Serve refuses 0) and at least min_replicas; never above the YAML's max.
    assert capped["LLMServer:b"]["max_replicas"] == 1
    assert overrides(render(specs, caps={"a": 1}))["LLMServer:a"]["max_replicas"] == 2
    assert capped["LLMServer:c"]["max_replicas"] == 5
    assert "policy" not in capped["LLMServer:c"]  # policy: ray


def test_initial_replicas_only_before_serve_runs_the_deployment() -> None:
    specs = [stored("a", "a", min_replicas=1, max_replicas=4, initial_replicas=2)]
    first = render(specs)
    assert overrides(first)["LLMServer:a"]["initial_replicas"] == 2
    again = render(specs, details=running(first))
    assert "initial_replicas" not in overrides(again)["LLMServer:a"]


def test_replica_start_is_sticky_while_the_build_is_the_same() -> None:
    specs = [stored("a", "a"), stored("fixed", "fixed", replica_start_s=42)]
    first = render(specs, starts={"a": 95.0, "fixed": 45.0})
    assert overrides(first)["LLMServer:fixed"]["policy"]["policy_kwargs"][
        "replica_start_s"] == 42  # the YAML's value as given
    kept = {"LLMServer:a": {"replica_start_s": 50}}
    # Serve runs the same build with 50 s: kept (a new value would restart every replica).
    same = render(specs, details=running(first, kept), starts={"a": 95.0})
    assert overrides(same)["LLMServer:a"]["policy"]["policy_kwargs"]["replica_start_s"] == 50
    # Another build (args differ): re-learned.
    other = running(first, kept, args={**first["applications"][0]["args"], "options": {}})
    rebuilt = render(specs, details=other, starts={"a": 95.0})
    assert overrides(rebuilt)["LLMServer:a"]["policy"]["policy_kwargs"][
        "replica_start_s"] == 95.0
    # No estimate given and nothing deployed: left to the policy's default (null).
    assert overrides(render(specs))["LLMServer:a"]["policy"]["policy_kwargs"][
        "replica_start_s"] is None


def test_a_stored_spec_that_no_longer_validates_raises() -> None:
    bad = {**stored("a", "a"), "colour": "red"}
    with pytest.raises(ValidationError):
        render([bad])
    dup = [stored("a", "a"), stored("a", "b")]
    with pytest.raises(ValidationError):
        render(dup)


def test_names() -> None:
    assert serve_deployment_name("Qwen/Qwen2.5-0.5B") == "LLMServer:Qwen--Qwen2_5-0_5B"
    assert serve_deployment_name("tiny").startswith(LLM_DEPLOYMENT_PREFIX)
    details = {"applications": {APP: {"status": "RUNNING"}, "other": "not a dict"}}
    assert serve_application(details, APP) == {"status": "RUNNING"}
    assert serve_application(details, "other") is None
    assert serve_application(None, APP) is None


@pytest.mark.slow
def test_names_match_ray_serve_llm() -> None:
    """The name Ray Serve LLM gives a model's deployment (public builder), for ids with the
    characters it rewrites."""
    from ray.serve.llm import LLMConfig, build_llm_deployment

    for model_id in ("tiny", "org/model.v1.5", "a/b/c.d"):
        app = build_llm_deployment(LLMConfig(model_loading_config={"model_id": model_id}))
        assert app._bound_deployment.name == serve_deployment_name(model_id)
