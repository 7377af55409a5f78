"""Names Ray Serve gives what we deploy, shared by the control plane and the Serve config.

Both sides need them: the Serve config renderer (``serve_apps.serve_config``) names each model's
per-deployment override, and the control API's budget guard reads that deployment's live
replicas in Serve's status. Neither imports the other, so the names live here.

Ray Serve LLM names each model's deployment itself, and Serve matches an override in the
declarative config to a deployment by that name only: ours must be the same string. Ray builds it
in ``ray.llm._internal.serve.core.server.builder.build_llm_deployment`` as the deployment class
name plus ``:`` (``name_prefix``, ``LLMServer:`` for the ``LLMServer`` our builder uses) followed
by ``_get_deployment_name(llm_config)``: the model id with ``/`` replaced by ``--`` and ``.`` by
``_``. That function is private, so it is not imported (not even through ``core.ray_private``,
which would load Ray into the control API for a string); the rule is restated below and checked
against the name Ray's public ``ray.serve.llm.build_llm_deployment`` gives in
``tests/serve_apps/test_serve_config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# ``name_prefix`` of build_llm_deployment for our server class (``LLMServer``).
LLM_DEPLOYMENT_PREFIX = "LLMServer:"


def serve_deployment_name(model_name: str) -> str:
    """The Serve deployment Ray Serve LLM creates for a served model name (its model id)."""
    return LLM_DEPLOYMENT_PREFIX + model_name.replace("/", "--").replace(".", "_")


def serve_application(details: Mapping[str, Any] | None, app_name: str) -> dict[str, Any] | None:
    """Our application's entry in Serve's ``GET /api/serve/applications/`` answer, found by
    its name (``None``: Serve does not run it, or did not answer)."""
    app = ((details or {}).get("applications") or {}).get(app_name)
    return app if isinstance(app, dict) else None
