"""Routes under /api/internal: what the data plane (node provider, ingress) calls.

Service-token auth, batches, idempotent: the client retries and replays its spool freely.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from control_api.deps import IngressDep, NodeProviderDep, SessionDep, SettingsDep, access
from control_api.services import internal as service
from control_api.services import secrets as secrets_service
from core.db import utcnow
from core.wire import (
    KeyVerifyRequest,
    KeyVerifyResult,
    LifecycleEventsRequest,
    LifecycleEventsResult,
    UsageRequest,
    UsageResult,
)

router = APIRouter(prefix="/api/internal", tags=["internal"])


@router.post("/lifecycle-events", openapi_extra=access("service"))
def post_lifecycle_events(body: LifecycleEventsRequest, db: SessionDep,
                          caller: NodeProviderDep) -> LifecycleEventsResult:
    """Apply instance lifecycle events (each at most once, by ``event_id``). Scope
    ``node-provider`` or ``reconciler``."""
    result = service.apply_lifecycle_events(db, body.events, actor=caller.component)
    # Commit before answering: a 2xx tells the client it may delete its spooled copy.
    db.commit()
    return result


@router.post("/usage", openapi_extra=access("service"))
def post_usage(body: UsageRequest, db: SessionDep, caller: IngressDep) -> UsageResult:
    """Record usage (one row per ``request_id``; repeated ids are counted as duplicates;
    records whose key is not in their org are refused, listed in ``rejected``). Scope
    ``ingress``."""
    result = service.insert_usage(db, body.records)
    db.commit()
    return result


@router.post("/keys/verify", openapi_extra=access("service"))
def post_keys_verify(body: KeyVerifyRequest, db: SessionDep,
                     caller: IngressDep) -> KeyVerifyResult:
    """Resolve an API key hash to its principal; 404 for unknown, revoked or expired keys and
    keys whose owner may no longer hold them. Scope ``ingress``."""
    result = service.verify_key(db, body.key_hash, now=utcnow())
    db.commit()
    return result


class DeploymentSecrets(BaseModel):
    """The values of the secrets one deployment's stored spec references, by secret name."""

    values: dict[str, str] = Field(description="Secret name -> value. Never logged.")


@router.post("/deployments/{name}/secrets", response_model=DeploymentSecrets,
             openapi_extra=access("service"))
def post_deployment_secrets(name: str, db: SessionDep, settings: SettingsDep,
                            caller: IngressDep) -> DeploymentSecrets:
    """The values of exactly the secrets the stored spec of deployment ``name`` references
    (env refs, ``model.hf_token``, ``model.s3`` keys), for its replicas when they start; 404
    for an unknown deployment. Logged with the secret names only. Scope ``ingress`` (the LLM
    replicas use the ingress's token)."""
    values = secrets_service.deployment_secret_values(
        db, secrets_service.box_for(settings), name, caller=caller.name)
    db.commit()
    return DeploymentSecrets(values=values)
