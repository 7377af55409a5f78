"""A trivial Serve application for tests that apply configs through the Serve REST API.

``build(args)`` has the signature of the real builder (``serve_apps.builder``'s
``import_path`` target): it receives ``{"spec": ..., "options": ...}`` and answers "ok" plus the
deployment names it was given, so a test can see which desired state Serve runs.
"""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class Echo:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    async def __call__(self, request: Any) -> str:
        return "ok " + ",".join(self.names)


def build(args: dict[str, Any]) -> Any:
    """Serve application builder: one tiny deployment."""
    names = [d["name"] for d in args["spec"]["deployments"]]
    return Echo.bind(names)


def broken(args: dict[str, Any]) -> Any:
    """A builder that fails: Serve reports the application DEPLOY_FAILED."""
    raise RuntimeError("broken on purpose")
