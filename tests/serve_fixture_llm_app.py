"""A trivial Serve application shaped like Ray Serve LLM's, for tests that apply configs
through the Serve REST API: an ingress plus one autoscaling deployment per model, named as Ray
Serve LLM names them (``LLMServer:<model id with / -> -- and . -> _>``), so the control API's
per-deployment ``autoscaling_config`` overrides find them. ``build(args)`` has the signature of
the real builder (``serve_apps.builder:app_builder``).
"""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.01},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1})
class Model:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> str:
        return self.name


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.01})
class Echo:
    def __init__(self, names: list[str], *models: Any) -> None:
        self.names = names
        self.models = models

    async def __call__(self, request: Any) -> str:
        return "ok " + ",".join(self.names)


def build(args: dict[str, Any]) -> Any:
    """Serve application builder: the ingress and one ``LLMServer:<model>`` per deployment."""
    deployments = args["spec"]["deployments"]
    models = []
    for d in deployments:
        model = d["model"]["name"]
        auto = d.get("autoscaling") or {}
        models.append(Model.options(
            name="LLMServer:" + model.replace("/", "--").replace(".", "_"),
            autoscaling_config={"min_replicas": auto.get("min_replicas", 1),
                                "max_replicas": auto.get("max_replicas", 1)},
        ).bind(model))
    return Echo.bind([d["name"] for d in deployments], *models)
