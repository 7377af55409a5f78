"""The only importer of Ray's private APIs (pinned to ``ray==2.60.0``).

Everything else in the project uses Ray's public API. Each use below says why no public API
does the job; a Ray upgrade is checked here first (``tests/core/test_ray_private.py`` imports
every name on the pinned version).

- ``ray._raylet.GcsClient`` + ``ray.core.generated.gcs_pb2``: the ALIVE nodes with their
  ``RAY_CLOUD_INSTANCE_ID`` from the GCS *without* ``ray.init`` (which would make the control
  API, the node provider and ``inventiv cluster status`` Ray drivers of the cluster they watch).
  ``ray.nodes()`` needs a connected driver and does not carry the instance id.
- ``ray.llm._internal.serve.core.configs.openai_api_models``: the request/response models Ray
  Serve LLM's ``OpenAiIngress`` route methods are typed with; our subclass must use the very same
  classes or FastAPI parses the body twice. Also ``to_model_metadata`` (the stock ingress's model
  list) and ``engine.protocol.LLMEngine`` (the engine interface the null engine implements).
- ``ray.llm._internal.common.callbacks.base.CallbackBase``: the base of ``LLMConfig.
  callback_config`` callbacks (serve_apps/weights_replica.py); Ray exports no public alias.
- ``ray.serve._private.autoscaling_state._resolve_policy_callable`` and
  ``ray.serve._private.common.DeploymentID``: to run Serve's own default autoscaling policy in the
  simulator exactly as the controller calls it (no public entry point exists).

- ``ray._private.worker``: the node's temp dir (``Node.get_temp_dir_path``) for the weights
  cache, which must be per node and outlive one replica; the runtime context does not carry it.

Imports are done inside the functions (or lazily through ``__getattr__``) so that importing this
module costs nothing: the control API uses the GCS probe without loading Ray Serve LLM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Names served lazily from Ray Serve LLM's private OpenAI models module.
_OPENAI_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
_LAZY: dict[str, str] = {
    **{name: _OPENAI_MODELS for name in (
        "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest",
        "ChatCompletionResponse", "ChatCompletionStreamResponse", "CompletionResponse",
        "CompletionStreamResponse", "ErrorInfo", "ErrorResponse", "to_model_metadata")},
    "LLMEngine": "ray.llm._internal.serve.core.engine.protocol",
    "CallbackBase": "ray.llm._internal.common.callbacks.base",
    "DeploymentID": "ray.serve._private.common",
    "resolve_policy_callable": "ray.serve._private.autoscaling_state",
}
_RENAMED = {"resolve_policy_callable": "_resolve_policy_callable"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def node_temp_dir() -> str | None:
    """This process's Ray node temp dir (``/tmp/ray`` by default), None outside a Ray node."""
    try:
        import ray._private.worker as worker

        node = worker._global_node or getattr(worker.global_worker, "node", None)
        return node.get_temp_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001 - any Ray-internal change degrades to "unknown"
        return None


# ------------------------------------------------------------------------------ GCS


@dataclass(frozen=True)
class RayNode:
    """One node as the GCS sees it."""

    ray_node_id: str
    instance_id: str  # the raylet's RAY_CLOUD_INSTANCE_ID ("" when not set)
    node_type: str
    address: str
    state: str  # ALIVE | DEAD
    is_head: bool
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.state == "ALIVE"

    def as_dict(self) -> dict[str, Any]:
        return {"ray_node_id": self.ray_node_id, "instance_id": self.instance_id,
                "node_type": self.node_type, "address": self.address, "state": self.state,
                "is_head": self.is_head, "resources": dict(self.resources)}


class GcsProbe:
    """Asks one cluster's GCS (``host:port``) for its nodes; keeps the client between calls.

    Token auth is read from the process environment (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN[_PATH]``)
    as Ray reads it. A failed call drops the client so that the next one reconnects. Building a
    client against an unreachable address can take tens of seconds: callers run this off their
    request path.
    """

    def __init__(self, gcs_address: str, timeout_s: float = 5.0) -> None:
        self.gcs_address = gcs_address
        self.timeout_s = timeout_s
        self._client: Any = None

    def nodes(self) -> list[RayNode]:
        """Every node the GCS knows (raises whatever Ray raises when it cannot be asked)."""
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.core.generated import gcs_pb2

        try:
            if self._client is None:
                self._client = GcsClient(address=self.gcs_address)
            infos = self._client.get_all_node_info(timeout=self.timeout_s)
        except BaseException:
            self._client = None
            raise
        name = gcs_pb2.GcsNodeInfo.GcsNodeState.Name  # type: ignore[attr-defined]
        return [RayNode(
            ray_node_id=node_id.hex(), instance_id=info.instance_id or "",
            node_type=info.node_type_name, address=info.node_manager_address,
            state=name(info.state), is_head=bool(info.is_head_node),
            resources={k: float(v) for k, v in info.resources_total.items()
                       if not k.startswith("node:")},
        ) for node_id, info in infos.items()]

    def alive(self) -> list[RayNode]:
        return [n for n in self.nodes() if n.alive]

    def alive_instance_ids(self) -> dict[str, str]:
        """``{RAY_CLOUD_INSTANCE_ID: ray node id}`` of the ALIVE nodes that carry one."""
        return {n.instance_id: n.ray_node_id for n in self.alive() if n.instance_id}


# ------------------------------------------------------------------------------ Serve


def wait_app_running(name: str, timeout_s: float, *, errors: Sequence[BaseException] = (),
                     poll_s: float = 1.0,
                     status: Callable[[], Any] | None = None) -> float:
    """Seconds until Serve app ``name`` is RUNNING (public ``serve.status()``, in a driver).

    Raises ``RuntimeError`` with Serve's message (and each deployment's) on DEPLOY_FAILED or
    UNHEALTHY, or at once when ``errors`` (filled by a thread running ``serve.run``) is not
    empty; ``TimeoutError`` after ``timeout_s``.
    """
    if status is None:
        from ray import serve

        status = serve.status
    started = time.monotonic()
    while True:
        if errors:
            raise RuntimeError(f"serve.run({name}) failed: {errors[0]!r}") from errors[0]
        app = status().applications.get(name)
        if app is not None and app.status == "RUNNING":
            return time.monotonic() - started
        if app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            details = {d: (s.status, s.message) for d, s in app.deployments.items()}
            raise RuntimeError(f"Serve app {name} {app.status}: {app.message} {details}")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"Serve app {name} not RUNNING after {timeout_s:.0f} s")
        time.sleep(poll_s)


__all__ = ["GcsProbe", "RayNode", "wait_app_running", *sorted(_LAZY)]
