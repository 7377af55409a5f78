"""Routes under /api/playground: the console's chat playground.

Design: the control API proxies the stream, the page never holds a key. The page posts the chat
(session cookie, JSON body: the CSRF rule of every console write) to ``POST /api/playground/chat``;
this route checks the caller's membership in the org they chose, mints a short-lived key of that
org owned by the caller (kept in this process's memory only, re-used until it nears expiry,
named ``playground`` so it shows in the org's key list with its spend; the caller's old ones
are deleted an hour after they end), and streams the answer of the real OpenAI endpoint (the
ingress, on the same head) back as server-sent events.

Why not hand the page a short-lived key: a key in a page is a key any script of that page can
read and send elsewhere, for as long as it lives; and the page would have to call the ingress's
origin (CORS on Serve, a ``connect-src`` hole in the console's CSP). Why not a bypass of the
ingress: the playground is there to show what an application gets, so the request takes the
application's path: the ingress's key check, rate limits, budget reservation and metering, and
its usage is the org's like any other (what a user of LiteLLM's or OpenAI's playground expects:
sign in, pick a model, chat; the spend lands on their org).

The stream the page reads is normalised, one JSON object per ``data:`` line:
``{"type": "delta", "content": "..."}`` per token batch, then one
``{"type": "done", "usage": {...}, "cost_eur": "...", "cost_basis": ..., ...}``, or
``{"type": "error", "message": "..."}`` if the ingress fails mid-stream. The cost is exact for a
deployment with a token price (``price:`` in its YAML); otherwise it is estimated from this
month's EUR per million tokens of the deployment (GPU time charged back by token share), or
unknown (``null``) before the deployment has any.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from control_api.deps import PrincipalDep, SessionDep, access
from control_api.errors import ApiError, Conflict, NotFound, Unprocessable
from control_api.services import deployments as deployment_svc
from control_api.services import identity
from core.db import session_scope, utcnow
from core.models import ApiKey, Budget, BudgetScope, Deployment, Role
from finops.deployments import token_price_override
from finops.ledger import EUR_QUANTUM, to_us
from finops.unitcost import unit_costs
from finops.windows import TimeRange, month_start

router = APIRouter(prefix="/api/playground", tags=["playground"])

KEY_TTL = timedelta(minutes=30)
# A cached key is replaced when it has less than this left: a chat never outlives its key.
KEY_MIN_LEFT = timedelta(minutes=5)
KEY_NAME = "playground"
# The caller's expired or revoked playground keys of an org are deleted when they next get one
# there, once this long has passed: the ingress's last usage batches of a key (flushed within a
# second, or replayed from its spool after an outage) must still find it, or they are refused.
KEY_CLEANUP_AFTER = timedelta(hours=1)
UPSTREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=5.0)


# ---------------------------------------------------------------- wire format


CHAT_ROLES = ("system", "user", "assistant")


class ChatMessage(BaseModel):
    # Checked against CHAT_ROLES in the route, after the caller's access to the org: a caller
    # without access gets its 403, whatever the body says.
    role: Annotated[str, Field(min_length=1, max_length=16,
                               description="system, user or assistant")]
    content: Annotated[str, Field(max_length=32_000)]


class PlaygroundChat(BaseModel):
    org_id: uuid.UUID
    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]
    max_tokens: Annotated[int | None, Field(ge=1, le=32_768)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None


class PlaygroundModel(BaseModel):
    deployment: str
    model: str
    status: str
    priced: bool


class PlaygroundModels(BaseModel):
    items: list[PlaygroundModel]


class PlaygroundUnavailable(Conflict):
    code = "playground_unavailable"


class PlaygroundNeedsMembership(Conflict):
    code = "playground_needs_membership"


class UpstreamError(ApiError):
    """The OpenAI endpoint refused or failed the request; its status and message, relayed."""

    code = "upstream_error"

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


# ---------------------------------------------------------------- what may be used


def _chat_deployments(db: Any, principal: Any, org_id: uuid.UUID) -> list[Deployment]:
    """Chat deployments the caller sees and ``org_id`` may use (``allowed_orgs``)."""
    org = identity.visible_org(db, principal, org_id)
    out = []
    for dep in deployment_svc.list_deployments(db, principal):
        spec = dep.spec or {}
        if dep.deleted_at is not None or (spec.get("model") or {}).get("task") != "chat":
            continue
        allowed = spec.get("allowed_orgs")
        if allowed is not None and str(org.id) not in allowed and org.name not in allowed:
            continue
        out.append(dep)
    return out


def _model_name(dep: Deployment) -> str:
    return str((dep.spec.get("model") or {}).get("name") or dep.name)


def _require_member(principal: Any, org_id: uuid.UUID) -> None:
    # A key verifies only while its owner is a key-holding member of its org, so even a
    # platform admin chats as a member of the org the usage is billed to.
    role = principal.role_in(org_id)
    if role is None or role.rank < Role.MEMBER.rank:
        if principal.is_platform_admin:
            raise PlaygroundNeedsMembership(
                "join this organisation (member or higher) to use the playground: its usage is "
                "billed to the organisation through a key of yours")
        principal.require_role(org_id, Role.MEMBER)  # 403 for viewers


@router.get("/models", response_model=PlaygroundModels, openapi_extra=access("org:viewer"))
def list_models(org_id: uuid.UUID, principal: PrincipalDep, db: SessionDep) -> PlaygroundModels:
    """The chat deployments ``org_id`` may use in the playground (viewer+ sees the list)."""
    principal.require_role(org_id, Role.VIEWER)
    return PlaygroundModels(items=[
        PlaygroundModel(deployment=d.name, model=_model_name(d), status=d.status,
                        priced=token_price_override(d.spec) is not None)
        for d in _chat_deployments(db, principal, org_id)])


# ---------------------------------------------------------------- the short-lived key


@dataclass(frozen=True)
class _Key:
    secret: str
    key_id: uuid.UUID
    expires_at: datetime


class PlaygroundKeys:
    """Per (session, org), the playground key this process minted: in memory only (a restart
    mints a new one; the old one expires by itself within ``KEY_TTL``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[uuid.UUID, uuid.UUID], _Key] = {}

    def get(self, session_id: uuid.UUID, org_id: uuid.UUID, now: datetime) -> _Key | None:
        with self._lock:
            key = self._keys.get((session_id, org_id))
            if key is None or key.expires_at - now < KEY_MIN_LEFT:
                return None
            return key

    def put(self, session_id: uuid.UUID, org_id: uuid.UUID, key: _Key) -> None:
        with self._lock:
            # Forget expired entries on the way (bounded by the live sessions x orgs).
            now = datetime.now(UTC)
            for k in [k for k, v in self._keys.items() if v.expires_at <= now]:
                del self._keys[k]
            self._keys[(session_id, org_id)] = key


def _keys(request: Request) -> PlaygroundKeys:
    state = request.app.state
    keys = getattr(state, "playground_keys", None)
    if keys is None:
        keys = state.playground_keys = PlaygroundKeys()
    return keys  # type: ignore[no-any-return]


def _clean_old_keys(db: Session, user_id: uuid.UUID, org_id: uuid.UUID, now: datetime) -> None:
    """Delete ``user_id``'s playground keys of ``org_id`` that expired or were revoked more than
    ``KEY_CLEANUP_AFTER`` ago, so the org's key list does not fill with them (their usage
    records stay: they carry the org and the user). A key of the user's own that happens to be
    named ``playground`` is kept (it did not live exactly ``KEY_TTL``), and so is a key a budget
    names."""
    cutoff = now - KEY_CLEANUP_AFTER
    budgeted = select(Budget.target_id).where(Budget.scope == BudgetScope.API_KEY)
    old = [k for k in db.scalars(select(ApiKey).where(
        ApiKey.name == KEY_NAME, ApiKey.user_id == user_id, ApiKey.org_id == org_id,
        or_(ApiKey.expires_at <= cutoff, ApiKey.revoked_at <= cutoff),
        ApiKey.id.not_in(budgeted)))
        if k.expires_at is not None and k.expires_at - k.created_at == KEY_TTL]
    if not old:
        return
    for key in old:
        db.delete(key)
    identity.log_action(db, "api_key.delete", user_id=user_id, org_id=org_id,
                        details={"api_key_ids": [str(k.id) for k in old],
                                 "reason": "old playground keys"})


def _mint(request: Request, principal: Any, org_id: uuid.UUID, db: Session) -> _Key:
    """A playground key for (session, org): the cached one while it is not revoked, or a new one
    committed now (the ingress verifies it through the API before the first token)."""
    now = utcnow()
    cache = _keys(request)
    cached = cache.get(principal.session_id, org_id, now)
    if cached is not None:
        row = db.get(ApiKey, cached.key_id)
        if row is not None and row.revoked_at is None:
            return cached
    _clean_old_keys(db, principal.user_id, org_id, now)
    key, secret = identity.create_api_key(
        db, principal, org_id=org_id, name=KEY_NAME, expires_at=now + KEY_TTL,
        allowed_models=None, rpm_limit=None, tpm_limit=None, monthly_budget_eur=None,
        now=now, checksum_secret=request.app.state.settings.resolved_key_checksum_secret())
    minted = _Key(secret=secret, key_id=key.id, expires_at=now + KEY_TTL)
    db.commit()
    cache.put(principal.session_id, org_id, minted)
    return minted


# ---------------------------------------------------------------- where the ingress is


def ingress_url(request: Request) -> str | None:
    """The OpenAI endpoint's base URL as this API reaches it (server side), or None.

    ``app.state.playground_ingress_url`` when the composition root or a test sets it (or a
    ``playground_ingress_url`` setting, once Settings has one); else, when
    Serve is configured (``ray_dashboard_url``), Serve's HTTP port on this host: the control API
    and Serve share the head on the laptop and in production.
    """
    settings = request.app.state.settings
    explicit = (getattr(request.app.state, "playground_ingress_url", None)
                or getattr(settings, "playground_ingress_url", None))
    if explicit:
        return str(explicit).rstrip("/")
    if not settings.ray_dashboard_url:
        return None
    host = settings.serve_http_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a bind-all address: reach it locally
        host = "127.0.0.1"
    return f"http://{host}:{settings.serve_http_port}"


# ---------------------------------------------------------------- cost of one answer


def answer_cost(db: Any, deployment: str, prompt_tokens: int, completion_tokens: int,
                now: datetime) -> tuple[Decimal | None, str | None]:
    """``(EUR, basis)``: exact with a token price; else an estimate at this month's EUR per
    million tokens of the deployment; ``(None, None)`` when it has none yet."""
    dep = db.scalar(select(Deployment).where(Deployment.name == deployment))
    if dep is None:
        return None, None
    price = token_price_override(dep.spec)
    if price is not None:
        eur = (price[0] * prompt_tokens + price[1] * completion_tokens) / 1_000_000
        return eur.quantize(EUR_QUANTUM), "price"
    rng = TimeRange(month_start(now), now)
    for uc in unit_costs(db, rng, to_us(now), {dep.id}):
        if uc.deployment_id == dep.id and uc.eur_per_million_tokens is not None:
            eur = uc.eur_per_million_tokens * (prompt_tokens + completion_tokens) / 1_000_000
            return eur.quantize(EUR_QUANTUM), "month_unit_cost"
    return None, None


def _cost_event(request: Request, deployment: str, usage: dict[str, Any]) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    with session_scope(request.app.state.sessionmaker) as db:
        eur, basis = answer_cost(db, deployment, prompt, completion, utcnow())
    return {"cost_eur": None if eur is None else str(eur), "cost_basis": basis}


# ---------------------------------------------------------------- the chat


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def _upstream_message(status: int, body: bytes) -> str:
    try:
        err = json.loads(body).get("error") or {}
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
    except (ValueError, AttributeError):
        pass
    return f"the OpenAI endpoint answered {status}"


def _prepare(request: Request, principal: Any, body: PlaygroundChat,
             db: Session) -> tuple[str, str, _Key]:
    """Checks in the order the RBAC matrix expects (role, then objects, then configuration);
    returns (ingress URL, deployment name, key). Ends the request's transaction: on SQLite an
    open one holds the write lock that the ingress's key check needs (it records the key's use)
    while this route waits for the answer."""
    _require_member(principal, body.org_id)
    for i, m in enumerate(body.messages):
        if m.role not in CHAT_ROLES:
            raise Unprocessable(f"messages.{i}.role: must be one of {', '.join(CHAT_ROLES)}")
    deps = _chat_deployments(db, principal, body.org_id)
    match = next((d for d in deps if _model_name(d) == body.model or d.name == body.model),
                 None)
    if match is None:
        raise NotFound("no chat deployment by that model this organisation may use")
    deployment, model = match.name, _model_name(match)
    url = ingress_url(request)
    if url is None:
        raise PlaygroundUnavailable(
            "no OpenAI endpoint is configured for this control API (Serve is not set up)")
    body.model = model
    key = _mint(request, principal, body.org_id, db)
    db.commit()
    return url, deployment, key


@router.post("/chat", openapi_extra=access("org:member"),
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "the answer, streamed (see the module doc)"},
                        409: {"description": "playground not configured, or not a member"},
                        502: {"description": "the OpenAI endpoint failed"}})
async def chat(body: PlaygroundChat, request: Request, principal: PrincipalDep,
               db: SessionDep) -> Any:
    """Chat with a deployment as a member of ``org_id``, streamed; the last event carries the
    request's tokens and cost. The key used is minted and held server side."""
    url, deployment, key = await run_in_threadpool(_prepare, request, principal, body, db)
    payload: dict[str, Any] = {
        "model": body.model, "stream": True, "stream_options": {"include_usage": True},
        "messages": [m.model_dump() for m in body.messages]}
    if body.max_tokens is not None:
        payload["max_tokens"] = body.max_tokens
    if body.temperature is not None:
        payload["temperature"] = body.temperature
    client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT)
    started = time.monotonic()
    try:
        upstream_req = client.build_request(
            "POST", url + "/v1/chat/completions", json=payload,
            headers={"Authorization": f"Bearer {key.secret}", "Accept": "text/event-stream"})
        upstream = await client.send(upstream_req, stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise UpstreamError(f"the OpenAI endpoint is unreachable ({type(exc).__name__})",
                            status_code=502) from None
    if upstream.status_code != 200:
        raw = await upstream.aread()
        await upstream.aclose()
        await client.aclose()
        status = upstream.status_code if 400 <= upstream.status_code < 500 else 502
        raise UpstreamError(_upstream_message(upstream.status_code, raw), status_code=status)
    return StreamingResponse(
        _relay(request, upstream, client, deployment, started), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _relay(request: Request, upstream: httpx.Response, client: httpx.AsyncClient,
                 deployment: str, started: float) -> AsyncIterator[bytes]:
    """The ingress's SSE, normalised (see the module doc); ends with the usage and cost."""
    usage: dict[str, Any] | None = None
    finish: str | None = None
    first_token_s: float | None = None
    try:
        async for line in upstream.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if chunk.get("error"):
                yield _sse({"type": "error",
                            "message": str((chunk["error"] or {}).get("message", "error"))})
                return
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if first_token_s is None:
                        first_token_s = time.monotonic() - started
                    yield _sse({"type": "delta", "content": text})
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    except httpx.HTTPError as exc:
        yield _sse({"type": "error", "message": f"the stream broke ({type(exc).__name__})"})
        return
    finally:
        await upstream.aclose()
        await client.aclose()
    done: dict[str, Any] = {
        "type": "done", "deployment": deployment, "finish_reason": finish,
        "usage": usage, "seconds": round(time.monotonic() - started, 3),
        "first_token_seconds": None if first_token_s is None else round(first_token_s, 3),
        "cost_eur": None, "cost_basis": None}
    if usage:
        done.update(await run_in_threadpool(_cost_event, request, deployment, usage))
    yield _sse(done)
