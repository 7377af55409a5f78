"""The Serve declarative config the control API PUTs, rendered from plain data (no database).

Every non-deleted deployment goes into ONE Serve application (``target.app_name``) built by
:func:`serve_apps.builder.app_builder` (``target.import_path``) from ``args = {"spec":
<deployment file JSON>, "options": <ingress options>}``. Serve's declarative API replaces the
whole set of applications, so a deleted deployment disappears from the next config, and the app
itself disappears when no deployment is left.

``args`` build the app; a per-deployment ``deployments`` section sets each model's
``autoscaling_config`` (bounds, target, the budget cap, the replica start time), which Serve
applies without restarting replicas as long as ``args`` and each ``policy`` stay the same.

The control API gathers the inputs (stored specs, Serve's GET, the budget guard's caps, the
replica start estimates) and calls :func:`render_serve_config` through its data-plane port
(``control_api.ports.DataPlane.render_serve_config``, wired by ``cli.compose``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from autoscaler.serve_policy import serve_autoscaling_config
from core.serve_names import serve_application, serve_deployment_name
from core.spec import DeploymentFile, DeploymentSpec


class ServeAppTarget(Protocol):
    """Where and how the one Serve application is deployed (the control API's
    ``control_api.serve_client.ServeTarget``; a protocol, because ``serve_apps`` does not import
    the control plane)."""

    @property
    def app_name(self) -> str: ...
    @property
    def import_path(self) -> str: ...
    @property
    def route_prefix(self) -> str: ...
    @property
    def http_host(self) -> str: ...
    @property
    def http_port(self) -> int: ...
    @property
    def ingress_options(self) -> Mapping[str, Any]: ...
    @property
    def runtime_env(self) -> Mapping[str, Any]: ...


def render_serve_config(target: ServeAppTarget, specs: Sequence[Mapping[str, Any]], *,
                        details: Mapping[str, Any] | None, caps: Mapping[str, int],
                        replica_start_s: Mapping[str, float]) -> dict[str, Any]:
    """The full Serve declarative config for these deployments.

    ``specs``: the stored deployment documents (``DeploymentSpec`` JSON), in order. They go
    into ``args`` as stored, not re-dumped from the model: a re-dump could differ for a spec
    stored under older defaults, and a different ``args`` rebuilds the app and restarts every
    replica. A document that no longer validates raises ``pydantic.ValidationError`` here, not
    inside Serve. ``details``: Serve's ``GET /api/serve/applications/`` (None: unknown); it
    tells which deployments already run and the ``replica_start_s`` they run with, which is
    kept while ``args`` are unchanged (a new value would change ``policy`` and so restart every
    replica) and re-learned (``replica_start_s[name]``) when the app is rebuilt anyway.
    ``caps``: the budget guard's capped replica counts, by deployment name.
    ``replica_start_s``: the replica start estimate, by deployment name.
    """
    apps: list[dict[str, Any]] = []
    if specs:
        spec = {"version": 1, "deployments": list(specs)}
        items = DeploymentFile.model_validate(spec).deployments
        args = {"spec": build_spec(spec),
                "options": {**target.ingress_options, "app_name": target.app_name}}
        running = serve_application(details, target.app_name)
        deployed = (running or {}).get("deployed_app_config") or {}
        same_build = (deployed.get("import_path"), deployed.get("args")) == (
            target.import_path, args)
        live = (running or {}).get("deployments") or {}
        overrides = []
        for item in items:
            name = serve_deployment_name(item.model.name)
            start = _deployed_policy_kwargs(running, name).get("replica_start_s") \
                if same_build else None
            if start is None:
                start = replica_start_s.get(item.name)
            overrides.append({"name": name, "autoscaling_config": autoscaling_override(
                item, replica_start_s=start, cap=caps.get(item.name), running=name in live)})
        app: dict[str, Any] = {
            "name": target.app_name,
            "route_prefix": target.route_prefix,
            "import_path": target.import_path,
            "args": args,
            "deployments": overrides,
        }
        if target.runtime_env:
            app["runtime_env"] = target.runtime_env
        apps.append(app)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": target.http_host, "port": target.http_port},
        "applications": apps,
    }


def autoscaling_override(spec: DeploymentSpec, *, replica_start_s: float | None,
                         cap: int | None, running: bool) -> dict[str, Any]:
    """The ``autoscaling_config`` set on a model's Serve deployment.

    Budget cap (``cap``: the capped replica count): ``max_replicas`` = the cap (at least
    ``min_replicas``, and at least 1: Serve refuses 0), for both policies. Not
    ``policy_kwargs.scale_up_cap``: Serve hashes each deployment's ``policy`` (kwargs included)
    into the application's code version, so changing it rebuilds the app and restarts every
    replica; bounds are a lightweight update. For the same reason ``scale_up_cap`` stays null
    and ``replica_start_s`` only changes with a rebuild (see :func:`render_serve_config`).
    ``initial_replicas`` is dropped once Serve runs the deployment: with it set, Serve resets
    the replica target to it on every config change."""
    cfg = serve_autoscaling_config(spec.autoscaling, replica_start_s=replica_start_s)
    if cap is not None:
        cfg["max_replicas"] = max(1, cfg["min_replicas"], min(cfg["max_replicas"], cap))
    if running:
        cfg.pop("initial_replicas", None)
    return cfg


# `autoscaling` fields that reach Serve only through the per-deployment override (bounds and
# target: a lightweight update). The app is built from the spec with them neutralised, so
# `inventiv deploy` changing a model's replica bounds or target never changes `args`, which
# would rebuild the app and restart every replica of every model. `min_replicas` keeps whether
# it is 0 (the ingress holds requests for deployments that may sit at zero replicas).
def build_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec the Serve app is built from (``args.spec``): replica bounds neutralised."""
    deployments = []
    for dep in spec["deployments"]:
        auto = dict(dep.get("autoscaling") or {})
        auto.update(min_replicas=0 if auto.get("min_replicas", 1) == 0 else 1, max_replicas=1,
                    initial_replicas=None, target_ongoing_requests=1)
        deployments.append({**dep, "autoscaling": auto})
    return {**spec, "deployments": deployments}


def _deployed_policy_kwargs(app: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """The ``policy_kwargs`` Serve runs deployment ``name`` with (``{}``: none, or not run)."""
    for d in ((app or {}).get("deployed_app_config") or {}).get("deployments") or []:
        if isinstance(d, dict) and d.get("name") == name:
            policy = (d.get("autoscaling_config") or {}).get("policy")
            if isinstance(policy, dict) and isinstance(policy.get("policy_kwargs"), dict):
                return policy["policy_kwargs"]  # type: ignore[no-any-return]
    return {}
