"""Our OpenAI ingress: Ray Serve LLM's ``OpenAiIngress`` with keys, limits and metering, in the
same hop as routing (no proxy in front).

How it plugs in (public API only): ``build_openai_app`` binds routes by method name, so the
methods overridden here (``chat``, ``completions``, ``embeddings``, ``models`` …) are what runs
on those routes. ``__serve_build_asgi_app__`` (called by Serve on the replica, after
``__init__``, before the app starts) puts :class:`Gate` in front of the FastAPI app:

1. only ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
   ``POST /v1/embeddings`` and ``GET /healthz`` exist; anything else is an OpenAI-shaped 404
   (Ray's ``/tokenize``, ``/detokenize``, ``/v1/score``, ``/v1/audio/transcriptions``,
   ``/v1/models/{id}``, FastAPI's ``/docs`` …, and any route a later Ray adds);
2. the bearer key is checked (format + checksum, then the control API through
   :class:`serve_apps.auth.KeyCache`) before the body is even parsed;
3. the body is read up to the largest ``max_body_bytes`` of all deployments (413 beyond);
4. every response carries ``x-inventiv-request-id``, the id of its usage event;
5. with ``options.cors_allow_origins``, ``OPTIONS`` preflights on the served ``/v1`` routes are
   answered (no key needed) and responses to allowed origins carry
   ``Access-Control-Allow-Origin`` (:class:`Cors`); other origins get no CORS header at all
   (also not the allow-everything ones of Ray Serve LLM's own CORS middleware).

Deployments with ``min_replicas: 0`` may be at zero replicas: their requests are held
(bounded per deployment, with ``autoscaling.cold_start_timeout_s``) while Serve starts one
(:class:`serve_apps.limits.ColdStartHold`, :class:`ReplicaProbe`). Each replica owns its spool
slot with a lock, and adopts the spools of replicas that are gone
(:mod:`serve_apps.metering`).

The route methods then apply the deployment's limits to the raw JSON, count prompt tokens with
the model's tokenizer, rewrite what goes upstream (completion budget, forced stream usage) and
meter the answer (:mod:`serve_apps.metering`). Errors we raise are answered as JSON here, not
raised: Ray's exception middleware would turn unknown exceptions into 500s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

# The request types of OpenAiIngress's own signatures (FastAPI parses bodies into them); the
# EmbeddingRequest union is not re-exported by ray.serve.llm.
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from ray.serve.exceptions import BackPressureError
from ray.serve.llm.ingress import OpenAiIngress
from starlette.responses import JSONResponse, Response, StreamingResponse

from core.spec import DeploymentFile, DeploymentSpec, PriceSpec
from serve_apps import limits as lim
from serve_apps import protocol
from serve_apps.auth import KeyCache, Principal
from serve_apps.builder import IngressOptions
from serve_apps.metering import Meter, SpoolAdopter, claim_slot, metered_stream
from serve_apps.ratelimit import LeaseBook, SettleBatcher, Settlement

log = logging.getLogger(__name__)

ALLOWED_ROUTES = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
HEALTH_PATH = "/healthz"
REQUEST_ID_HEADER = "x-inventiv-request-id"
# Prompts longer than this are tokenized in a thread, not on the event loop.
INLINE_TOKENIZE_CHARS = 8192
# How often a replica looks for the spools of replicas that are gone.
ADOPT_INTERVAL_S = 30.0
# Retry-After of a cold-start 503 when the deployment does not say how long a start takes.
COLD_RETRY_AFTER_S = 10.0



@dataclass
class RequestContext:
    """What the gate learnt about a request, for the route method."""

    request_id: str
    principal: Principal
    body_bytes: int
    body: dict[str, Any] | None
    # Set by InventivIngress.precheck for generation/embedding requests:
    dep: DeploymentSpec | None = None
    meter: Meter | None = None
    checked: lim.Checked | None = None


async def _send_error(send: Any, err: protocol.OpenAIError, request_id: str | None = None
                      ) -> None:
    payload = err.body_bytes()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if request_id:
        headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class Gate:
    """ASGI middleware in front of the FastAPI app: route allow-list, auth, body bound."""

    def __init__(self, app: Any, ingress: InventivIngress) -> None:
        self.app = app
        self.ingress = ingress

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        method, path = scope["method"], scope["path"]
        cors = self.ingress.cors
        origin = _header(scope, b"origin")
        if origin is not None:
            if (cors.enabled and method == "OPTIONS" and path in ALLOWED_ROUTES
                    and _header(scope, b"access-control-request-method") is not None):
                await cors.preflight(send, origin,
                                     _header(scope, b"access-control-request-headers"))
                return  # a preflight carries no key: it is answered before auth
            # Ours only: Ray Serve LLM's app carries a CORSMiddleware that allows every
            # origin (with credentials); its headers are replaced by what our list allows.
            send = _cors_send(send, cors.response_headers(origin) if cors.allowed(origin)
                              else [])
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            body = b'{"status":"ok"}'
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body if method == "GET" else b""})
            return
        if ALLOWED_ROUTES.get(path) != method:
            await _send_error(send, protocol.route_not_found(method, path))
            return
        request_id = f"req-{uuid.uuid4().hex}"
        try:
            principal = await self.ingress.keys.authenticate(_header(scope, b"authorization"))
        except protocol.OpenAIError as err:
            self.ingress.count_error("", "", err.status)
            await _send_error(send, err, request_id)
            return
        body = b""
        if method == "POST":
            limit = self.ingress.max_body_bytes
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _send_error(send, protocol.too_large(limit), request_id)
                return
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                part = message.get("body", b"")
                size += len(part)
                if size > limit:
                    await _send_error(send, protocol.too_large(limit), request_id)
                    return
                chunks.append(part)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        parsed: dict[str, Any] | None = None
        if body:
            try:
                value = json.loads(body)
                parsed = value if isinstance(value, dict) else None
            except ValueError:
                parsed = None  # FastAPI answers the 400
            except RecursionError:  # absurdly nested: refuse before anything else parses it
                await _send_error(send, protocol.bad_request(
                    "The request body is not valid JSON (nested too deeply).",
                    code="invalid_json"), request_id)
                return
        ctx = RequestContext(request_id=request_id, principal=principal, body_bytes=len(body),
                             body=parsed)
        try:
            # Our limits run on the raw JSON before FastAPI parses it into vLLM's models.
            await self.ingress.precheck(path, ctx)
        except protocol.OpenAIError as err:
            await _send_error(send, err, request_id)
            return
        except Exception:  # noqa: BLE001 - a bug must still answer in OpenAI's shape
            log.exception("precheck failed for %s", request_id)
            if ctx.meter is not None and not ctx.meter.finished:
                ctx.meter.finish("error")
            await _send_error(send, protocol.OpenAIError(
                500, "Internal error while checking the request.", type=protocol.SERVER,
                code="internal_error"), request_id)
            return
        scope.setdefault("state", {})["inventiv"] = ctx

        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, replay, send_with_id)
        finally:
            if ctx.meter is not None and not ctx.meter.finished:
                # Admitted by us, refused by FastAPI's parsing of the body (a 400): still one
                # usage event, and the reservation is settled.
                ctx.meter.finish("rejected")


def _cors_send(send: Any, headers: list[tuple[bytes, bytes]]) -> Any:
    """``send`` with the app's own ``Access-Control-*`` headers removed and ``headers`` added
    to the response start (every response, errors and streams included)."""

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [
                *((k, v) for k, v in message.get("headers", [])
                  if not k.lower().startswith(b"access-control-")), *headers]
        await send(message)

    return wrapped


class Cors:
    """CORS for browsers calling the OpenAI routes with an API key (no cookies, so no
    ``Allow-Credentials``). ``origins`` are exact origins (``https://app.example.com``), or
    ``*`` for any. Empty: CORS is off and the gate behaves as if this class did not exist."""

    # What the official JS client sends besides Authorization/Content-Type: a browser refuses
    # the call unless the preflight allows them.
    CLIENT_HEADER_PREFIXES = ("x-stainless-", "openai-")
    MAX_AGE_S = 600

    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allowed(self, origin: str) -> bool:
        return self.any or origin in self.origins

    def response_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
                (b"access-control-expose-headers",
                 f"{REQUEST_ID_HEADER}, retry-after".encode())]

    async def preflight(self, send: Any, origin: str, requested: str | None) -> None:
        """Answer an ``OPTIONS`` preflight: 204 with the Allow headers, or 403 (without any
        CORS header, so the browser blocks the call) for an origin not in the list."""
        if not self.allowed(origin):
            await _send_error(send, protocol.origin_not_allowed(origin))
            return
        headers = ["Authorization", "Content-Type"]
        for name in (requested or "").split(","):
            name = name.strip().lower()
            if name.startswith(self.CLIENT_HEADER_PREFIXES) and name.isascii():
                headers.append(name)
        await send({"type": "http.response.start", "status": 204, "headers": [
            *self.response_headers(origin),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", ", ".join(headers).encode()),
            (b"access-control-max-age", str(self.MAX_AGE_S).encode())]})
        await send({"type": "http.response.body", "body": b""})


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _json_error(err: protocol.OpenAIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class InventivIngress(OpenAiIngress):
    """``OpenAiIngress`` with API keys, request limits, usage metering and metrics."""

    def __init__(self, llm_deployments: dict[str, Any], model_cards: dict[str, Any], *,
                 lora_paths: dict[str, str] | None = None, spec: dict[str, Any],
                 options: dict[str, Any]) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        from control_api.client.internal import InternalClient
        from serve_apps.metrics import IngressMetrics

        self.spec = DeploymentFile.model_validate(spec)
        self.options = IngressOptions.model_validate(options)
        self.deployments: dict[str, DeploymentSpec] = {
            d.model.name: d for d in self.spec.deployments}
        self.max_body_bytes = max(d.limits.max_body_bytes for d in self.spec.deployments)
        token = Path(self.options.service_token_file).read_text(encoding="utf-8").strip()
        # One spool per replica slot: a spool directory has a single writer (a starting spool
        # clears half-written files), the process holding its lock for its whole life; a
        # restarted replica takes over its slot's backlog, and the spools of replicas that
        # are gone (scale-down) are adopted and replayed by a live one.
        spool_root = Path(self.options.spool_dir)
        self._slot = claim_slot(spool_root, _replica_slot())
        spool = self._slot.path
        # Two clients: key checks must fail fast (one retry, short timeout); usage waits in a
        # buffer, then in the durable spool, and is retried for as long as it takes.
        self._verify_client = InternalClient(
            self.options.control_api_url, token, spool_dir=spool / "verify",
            timeout=self.options.verify_timeout_s, max_retries=1)
        self._usage_client = InternalClient(
            self.options.control_api_url, token, spool_dir=spool / "usage")
        self._usage_client.start_background_flush(self.options.usage_flush_interval_s)
        self._adopter = SpoolAdopter(
            spool_root, spool.name, lambda d: _replay_spool(self.options.control_api_url,
                                                            token, d),
            interval_s=ADOPT_INTERVAL_S)
        self._adopter.start()
        self.keys = KeyCache(self._verify_client.verify_key, ttl=self.options.key_ttl_s,
                             stale=self.options.key_stale_s,
                             negative_ttl=self.options.negative_ttl_s)
        self.metrics = IngressMetrics()
        self._probe = ReplicaProbe(self._deployment_names())
        self.cold = lim.ColdStartHold(self._probe.running, on_held=self.metrics.held,
                                      on_waited=self.metrics.waited)
        self.cors = Cors(self.options.cors_allow_origins)
        self._tokenizers: dict[str, Any] = {
            name: _load_tokenizer(dep) for name, dep in self.deployments.items()}
        self._limiter: Any = None
        self._settler = SettleBatcher(self._settle_many)
        self._leases = LeaseBook(self._settler.add)
        # request id -> (api key id, its deployment's price, the lease that admitted it or
        # None, tokens reserved), for reservations to settle.
        self._reservations: dict[str, tuple[str, PriceSpec | None, str | None, float]] = {}

    def __serve_build_asgi_app__(self) -> Any:
        """Serve's hook, called on the replica after ``__init__``: put the gate in front."""
        app = self.app  # type: ignore[attr-defined]  # set by Serve's ASGI wrapper
        app.add_middleware(Gate, ingress=self)
        return app

    async def __del__(self) -> None:  # Serve awaits it on replica shutdown
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.flush()
        leases = getattr(self, "_leases", None)
        if leases is not None:
            leases.close()
        settler = getattr(self, "_settler", None)
        if settler is not None:
            settler.close()
        adopter = getattr(self, "_adopter", None)
        if adopter is not None:
            await asyncio.to_thread(adopter.stop)
        for client in (getattr(self, "_usage_client", None),
                       getattr(self, "_verify_client", None)):
            if client is not None:
                await asyncio.to_thread(client.close)
        slot = getattr(self, "_slot", None)
        if slot is not None:
            slot.release()  # what is still spooled is adopted by a live replica

    def _settle_many(self, settlements: list[Settlement]) -> None:
        limiter = self._limiter
        if limiter is None:
            return
        if hasattr(limiter, "settle_many"):
            limiter.settle_many.remote(settlements)  # fire and forget, in call order
            return
        # A limiter actor of an older version (it is detached: it outlives an upgrade).
        for op, key, reservation, tokens, cost in settlements:
            if op == "settle":
                limiter.settle.remote(key, reservation, tokens, cost)

    def _deployment_names(self) -> dict[str, str]:
        """Model name -> the Serve deployment serving it (for the replica probe)."""
        return {model: handle.deployment_name
                for model, handle in self._default_serve_handles.items()}

    # -------------------------------------------------------------- helpers

    def count_error(self, model: str, org: str, status: int) -> None:
        self.metrics.error(model, org, status)

    def _record(self, record: dict[str, Any]) -> None:
        held = self._reservations.pop(record["request_id"], None)
        if held is not None and self._limiter is not None:
            key, price, lease_id, reserved = held
            used = record["prompt_tokens"] + record["completion_tokens"]
            # Batched: one actor call per ~100 ms for all of this replica's requests.
            if lease_id is not None:  # admitted under a lease: give back what it did not use
                self._settler.add(("adjust", key, lease_id, used - reserved, 0))
            else:
                cost = None if price is None else token_cost(
                    price, record["prompt_tokens"], record["completion_tokens"])
                self._settler.add(("settle", key, record["request_id"], used, cost))
        try:
            self._usage_client.enqueue_usage(record)
        except Exception:  # noqa: BLE001 - metering must never break serving
            log.exception("usage record %s not queued", record.get("request_id"))
        self.metrics.usage(record)

    @staticmethod
    def _context(request: Request) -> RequestContext:
        ctx = request.scope.get("state", {}).get("inventiv")
        if not isinstance(ctx, RequestContext):
            # Only reachable if the gate is missing: refuse rather than serve unauthenticated.
            raise protocol.missing_key()
        return ctx

    def _deployment(self, model: Any, principal: Principal) -> DeploymentSpec:
        if not isinstance(model, str) or model not in self.deployments:
            raise protocol.model_not_found(model if isinstance(model, str) else None)
        dep = self.deployments[model]
        if not self._visible(dep, principal):
            raise protocol.model_not_allowed(model)
        return dep

    @staticmethod
    def _visible(dep: DeploymentSpec, principal: Principal) -> bool:
        if dep.allowed_orgs is not None and str(principal.org_id) not in dep.allowed_orgs:
            return False
        return principal.may_use(dep.model.name)

    def _meter(self, ctx: RequestContext, dep: DeploymentSpec, streamed: bool) -> Meter:
        p = ctx.principal
        return Meter(request_id=ctx.request_id, model=dep.model.name, deployment=dep.name,
                     streamed=streamed, record=self._record, api_key_id=str(p.api_key_id),
                     org_id=str(p.org_id), user_id=str(p.user_id) if p.user_id else None)

    def _check_quota(self, principal: Principal) -> None:
        if principal.budget_left_eur is not None and principal.budget_left_eur <= 0:
            raise protocol.quota_exceeded()

    async def _admit(self, ctx: RequestContext, dep: DeploymentSpec, prompt_tokens: int,
                     completion_tokens: int) -> None:
        """Reserve the request against the key's RPM/TPM and, for priced deployments, its
        monthly budget, at the worst case (429 if it does not fit). Keys without limits skip
        the round trip, and so do requests admitted under this replica's lease of the key's
        minute (see serve_apps.ratelimit); an unreachable limiter lets requests through
        (logged)."""
        from serve_apps.ratelimit import LEASE_S, OVER_BUDGET, BudgetAsk, get_or_create_limiter

        p = ctx.principal
        budget = None
        if p.budget_left_eur is not None and dep.price is not None:
            budget = BudgetAsk(left_eur=float(p.budget_left_eur), verified_at=p.verified_at,
                               cost_eur=token_cost(dep.price, prompt_tokens, completion_tokens))
        limited = p.rpm_limit is not None or p.tpm_limit is not None
        if not self.options.rate_limits or (not limited and budget is None):
            return
        key = str(p.api_key_id)
        want = prompt_tokens + completion_tokens
        if budget is None:
            # Usually admitted here, under this replica's lease of the key's minute.
            lease_id = self._leases.take(key, want)
            if lease_id is not None:
                self._reservations[ctx.request_id] = (key, dep.price, lease_id, want)
                return
        lease_id = f"lease-{uuid.uuid4().hex}"
        try:
            if self._limiter is None:
                self._limiter = get_or_create_limiter(f"{self.options.app_name}-rate-limiter")
            if hasattr(self._limiter, "admit_lease"):
                wait, reason, lease = await self._limiter.admit_lease.remote(
                    key, ctx.request_id, p.rpm_limit, p.tpm_limit, want, budget, lease_id,
                    LEASE_S)
            else:  # a limiter actor of an older version (detached: it outlives an upgrade)
                wait, reason = await self._limiter.admit.remote(
                    key, ctx.request_id, p.rpm_limit, p.tpm_limit, want, budget)
                lease = None
        except Exception:  # noqa: BLE001 - fail open, see serve_apps.ratelimit
            log.warning("rate limiter unreachable: request let through", exc_info=True)
            return
        if reason == OVER_BUDGET:
            raise protocol.quota_exceeded()
        if wait > 0:
            raise protocol.rate_limited(
                "Rate limit reached for this API key (requests or tokens per minute).", wait)
        if lease is not None:
            self._leases.grant(key, lease_id, *lease, LEASE_S)
        self._reservations[ctx.request_id] = (key, dep.price, None, want)

    async def _count(self, model: str, fn: Any, *args: Any, chars: int = 0) -> Any:
        if self._tokenizers.get(model) is None:
            return None
        try:
            if chars > INLINE_TOKENIZE_CHARS:
                return await asyncio.to_thread(fn, self._tokenizers[model], *args)
            return fn(self._tokenizers[model], *args)
        except Exception:  # noqa: BLE001 - the engine checks again; counting is best effort
            log.warning("could not count tokens for %s", model, exc_info=True)
            return None

    # -------------------------------------------------------------- routes

    async def models(self, request: Request) -> Any:  # type: ignore[override]
        """``GET /v1/models``: only the models this key may use."""
        try:
            ctx = self._context(request)
        except protocol.OpenAIError as err:
            return _json_error(err)
        listing = await super().models()
        listing.data = [card for card in listing.data
                        if card.id in self.deployments
                        and self._visible(self.deployments[card.id], ctx.principal)]
        return listing

    async def precheck(self, path: str, ctx: RequestContext) -> None:
        """Everything decided before dispatch, on the raw JSON: model and scope, limits,
        prompt length, quota, rate limits. Raises ``OpenAIError``; an authenticated request
        for one of our models that is refused is metered as ``rejected``."""
        if path == "/v1/models" or ctx.body is None:
            return  # no body, or not JSON: FastAPI answers that 400
        raw = ctx.body
        try:
            dep = self._deployment(raw.get("model"), ctx.principal)
        except protocol.OpenAIError as err:
            if err.status == 403:
                dep = self.deployments[raw["model"]]
                self.metrics.error(dep.model.name, str(ctx.principal.org_id), 403)
                self._meter(ctx, dep, streamed=False).finish("rejected")
            raise
        org = str(ctx.principal.org_id)
        endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}.get(
            path, "embeddings")
        self.metrics.request(dep.model.name, org, endpoint)
        meter = self._meter(ctx, dep, streamed=raw.get("stream") is True)
        try:
            if endpoint == "embeddings":
                checked = await self._check_embeddings(raw, ctx, dep, meter)
            else:
                checked = await self._check_generation(raw, ctx, dep, meter,
                                                       chat=endpoint == "chat")
        except protocol.OpenAIError as err:
            if err.status == 429:
                self.metrics.limited(dep.model.name, org, err.code or "limit")
            self.metrics.error(dep.model.name, org, err.status)
            meter.finish("rejected")
            raise
        ctx.dep, ctx.meter, ctx.checked = dep, meter, checked

    async def _check_generation(self, raw: dict[str, Any], ctx: RequestContext,
                                dep: DeploymentSpec, meter: Meter, *, chat: bool
                                ) -> lim.Checked:
        counts: list[int] | None = None
        lim.check_fields(raw, lim.CHAT_FIELDS if chat else lim.COMPLETION_FIELDS)
        lim.check_body_size(ctx.body_bytes, dep.limits)
        if dep.model.task != "chat":
            raise protocol.bad_request(f"The model `{dep.model.name}` does not generate text.",
                                       param="model")
        if chat:
            lim.check_messages(raw.get("messages"), dep.limits)
            prompt_tokens = await self._count(dep.model.name, _chat_tokens, raw["messages"],
                                              chars=ctx.body_bytes)
        else:
            prompts = lim.check_prompt(raw.get("prompt"), dep.limits)
            counts = await self._count(dep.model.name, _prompt_tokens, prompts,
                                       chars=ctx.body_bytes)
            prompt_tokens = None if counts is None else lim.longest(counts)
        checked = lim.check_generation(raw, dep.limits, chat=chat,
                                       max_model_len=dep.engine.max_model_len,
                                       prompt_tokens=prompt_tokens)
        self._check_quota(ctx.principal)
        if counts is not None:
            meter.prompt_tokens = sum(counts)
        elif prompt_tokens is not None:
            meter.prompt_tokens = prompt_tokens
        # Worst case: the prompt (its byte size when it could not be counted) plus every
        # completion at its budget.
        prompt_cost = meter.prompt_tokens if prompt_tokens is not None else ctx.body_bytes
        await self._admit(ctx, dep, prompt_cost, checked.max_tokens * checked.n)
        return checked

    async def _check_embeddings(self, raw: dict[str, Any], ctx: RequestContext,
                                dep: DeploymentSpec, meter: Meter) -> lim.Checked:
        if dep.model.task != "embed":
            raise protocol.bad_request(f"The model `{dep.model.name}` does not support "
                                       "embeddings.", param="model")
        lim.check_fields(raw, lim.EMBEDDING_FIELDS)
        lim.check_body_size(ctx.body_bytes, dep.limits)
        inputs = lim.check_embedding_input(raw.get("input"), dep.limits)
        counts = await self._count(dep.model.name, _prompt_tokens, inputs, chars=ctx.body_bytes)
        if counts is not None and lim.longest(counts) > dep.engine.max_model_len:
            raise protocol.bad_request(
                f"An input has {lim.longest(counts)} tokens; this model accepts at most "
                f"{dep.engine.max_model_len}.", param="input", code="context_length_exceeded")
        self._check_quota(ctx.principal)
        await self._admit(ctx, dep, sum(counts) if counts is not None else ctx.body_bytes, 0)
        return lim.Checked(max_tokens=0, n=1, stream=False, client_include_usage=False,
                           client_continuous_usage=False)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._dispatch(body, request, "chat")

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._dispatch(body, request, "completions")

    async def embeddings(self, body: EmbeddingRequest, request: Request) -> Response:
        return await self._dispatch(body, request, "embeddings")

    async def _dispatch(self, body: Any, request: Request, endpoint: str) -> Response:
        """Send a prechecked request upstream (bounded budget, usage forced into streams) and
        meter the answer."""
        try:
            ctx = self._context(request)
        except protocol.OpenAIError as err:
            return _json_error(err)
        dep, meter, checked = ctx.dep, ctx.meter, ctx.checked
        if dep is None or meter is None or checked is None:
            # Only when the gate did not precheck (e.g. removed): refuse, never serve unchecked.
            return _json_error(protocol.bad_request("The request could not be checked."))
        org = str(ctx.principal.org_id)
        if endpoint != "embeddings":
            body.max_tokens = checked.max_tokens
            if endpoint == "chat":
                body.max_completion_tokens = checked.max_tokens
            if checked.stream:
                options_type = _stream_options_type(type(body))
                body.stream_options = options_type(include_usage=True,
                                                   continuous_usage_stats=True)
        method = {"chat": OpenAiIngress.chat, "completions": OpenAiIngress.completions,
                  "embeddings": OpenAiIngress.embeddings}[endpoint]

        async def upstream() -> Any:
            return await method(self, body, request)

        try:
            if dep.autoscaling.min_replicas == 0:
                # May be at zero replicas: held (bounded, with a deadline) while one starts.
                auto = dep.autoscaling
                response = await self.cold.call(
                    dep.model.name, upstream, limit=auto.max_queued_requests,
                    timeout_s=auto.cold_start_timeout_s, retry_after_s=_cold_retry_after(dep))
            else:
                response = await upstream()
        except asyncio.CancelledError:
            meter.finish("aborted")
            raise
        except BackPressureError:
            return self._overloaded(meter, dep, org)
        except protocol.OpenAIError as err:
            # Cold start: the wait exceeded its limit (503) or too many were held (429).
            # No engine saw it: 0 tokens, "rejected" like any request refused unserved.
            meter.prompt_tokens = 0
            meter.finish("rejected")
            if err.status == 429:
                self.metrics.limited(dep.model.name, org, err.code or "overloaded")
            self.metrics.error(dep.model.name, org, err.status)
            return _json_error(err)
        except Exception as exc:
            meter.finish("error")
            self.metrics.error(dep.model.name, org, int(getattr(exc, "status_code", 500)))
            raise
        if response is None:  # the engine answered something that is not an embedding
            meter.finish("error")
            return _json_error(protocol.OpenAIError(500, "The engine returned no embedding.",
                                                    type=protocol.SERVER))
        return self._metered(response, meter, checked, dep, org)

    def _overloaded(self, meter: Meter, dep: DeploymentSpec, org: str) -> Response:
        """The deployment's queue is full: 429 with Retry-After, never a hang. No engine saw
        the request: 0 tokens (finops bills the tokens of every usage record)."""
        meter.prompt_tokens = 0
        meter.finish("rejected")
        self.metrics.limited(dep.model.name, org, "overloaded")
        self.metrics.error(dep.model.name, org, 429)
        return _json_error(protocol.rate_limited(
            f"The model `{dep.model.name}` is overloaded; retry shortly.", 1,
            code="overloaded"))

    def _metered(self, response: Response, meter: Meter, checked: lim.Checked,
                 dep: DeploymentSpec, org: str) -> Response:
        if isinstance(response, StreamingResponse):
            meter.streamed = True
            response.body_iterator = metered_stream(
                response.body_iterator, meter, keep_usage=checked.client_include_usage,
                keep_continuous=checked.client_continuous_usage,
                deadline_s=dep.limits.request_timeout_s)
            return response
        try:
            data = json.loads(bytes(response.body))
            meter.usage(data.get("usage"))
            status = "completed" if response.status_code < 400 else "error"
        except (ValueError, AttributeError):
            status = "error"
        if response.status_code >= 400:
            self.metrics.error(dep.model.name, org, response.status_code)
        meter.streamed = False
        meter.finish(status)
        return response

    # Routes Ray's builder adds that we do not serve. The gate answers 404 before these run;
    # they answer 404 too, so removing the gate never exposes them. No body parameter: FastAPI
    # must not parse (or validate) anything for them.
    async def model_data(self, request: Request) -> Response:  # type: ignore[override]
        return _json_error(protocol.route_not_found(request.method, request.url.path))

    async def transcriptions(self, request: Request) -> Response:  # type: ignore[override]
        return _json_error(protocol.route_not_found(request.method, request.url.path))

    async def score(self, request: Request) -> Response:  # type: ignore[override]
        return _json_error(protocol.route_not_found(request.method, request.url.path))

    async def tokenize(self, request: Request) -> Response:  # type: ignore[override]
        return _json_error(protocol.route_not_found(request.method, request.url.path))

    async def detokenize(self, request: Request) -> Response:  # type: ignore[override]
        return _json_error(protocol.route_not_found(request.method, request.url.path))


# ---------------------------------------------------------------- token counting


def token_cost(price: PriceSpec, prompt_tokens: int, completion_tokens: int) -> float:
    """EUR of a request at a deployment's token price (a float: reservations are estimates;
    the ledger is computed from usage records by finops)."""
    return float(price.input_eur_per_1m * prompt_tokens
                 + price.output_eur_per_1m * completion_tokens) / 1_000_000


def _cold_retry_after(dep: DeploymentSpec) -> float:
    """Retry-After of a cold-start 503: the replica keeps starting after the held request is
    dropped (Serve's target stays at one until it runs), so a retry after about the rest of
    the expected start time finds it warm."""
    auto = dep.autoscaling
    if auto.replica_start_s is None:
        return COLD_RETRY_AFTER_S
    return min(300.0, max(1.0, auto.replica_start_s - auto.cold_start_timeout_s))


def _replay_spool(control_api_url: str, token: str, spool_dir: Path) -> int:
    """Replay one orphaned spool directory; the number of batches the control API took."""
    from control_api.client.internal import InternalClient

    client = InternalClient(control_api_url, token, spool_dir=spool_dir, max_retries=1)
    try:
        return client.replay().sent_batches
    finally:
        client.close(flush=False)


class ReplicaProbe:
    """Running replicas per model, from ``serve.status()`` (the public API; in a thread, as it
    blocks), cached ``ttl_s`` and fetched once for all concurrent callers."""

    def __init__(self, deployments: dict[str, str], *, ttl_s: float = 1.0,
                 fetch: Any = None, clock: Any = None) -> None:
        import time

        self.deployments = deployments
        self.ttl_s = ttl_s
        self._fetch = fetch or _serve_running_replicas
        self._clock = clock or time.monotonic
        self._counts: dict[str, int] | None = None
        self._at = float("-inf")
        self._inflight: asyncio.Future[dict[str, int] | None] | None = None

    async def running(self, model: str) -> int | None:
        """Running replicas of the model's deployment; None when unknown."""
        name = self.deployments.get(model)
        if name is None:
            return None
        if self._counts is None or self._clock() - self._at > self.ttl_s:
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._refresh())
            inflight = self._inflight
            # Shielded: one caller going away must not cancel the others' fetch.
            await asyncio.shield(inflight)
        return None if self._counts is None else self._counts.get(name)

    async def _refresh(self) -> dict[str, int] | None:
        try:
            counts = await asyncio.to_thread(self._fetch)
            self._counts, self._at = counts, self._clock()
        except Exception:  # noqa: BLE001 - unknown: requests are not held (see ColdStartHold)
            log.warning("cannot read Serve's replica states", exc_info=True)
            self._counts, self._at = None, self._clock()
        finally:
            self._inflight = None
        return self._counts


def _serve_running_replicas() -> dict[str, int]:
    """RUNNING replicas per deployment of this replica's application."""
    from ray import serve

    app_name = serve.get_replica_context().app_name
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: sum(n for state, n in d.replica_states.items()
                      if str(getattr(state, "value", state)) == "RUNNING")
            for name, d in app.deployments.items()}


def _replica_slot() -> str:
    """``rank-<n>``: the replica's rank on its node (Serve reassigns ranks to restarted
    replicas), or the process id outside Serve."""
    import os

    try:
        from ray import serve

        return f"rank-{serve.get_replica_context().rank.local_rank}"
    except Exception:  # noqa: BLE001 - not in a Serve replica (tests, scripts)
        return f"pid-{os.getpid()}"


def _load_tokenizer(dep: DeploymentSpec) -> Any:
    """The model's tokenizer when its files are local; None otherwise (the engine checks)."""
    source = dep.model.tokenizer_source or dep.model.source
    if not Path(source).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - counting is an optimisation; the engine checks anyway
        log.warning("no tokenizer for %s in the ingress", dep.model.name, exc_info=True)
        return None


def _ids(value: Any) -> list[int]:
    if isinstance(value, dict) or hasattr(value, "keys"):
        return list(value["input_ids"])
    return list(value)


def _chat_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    """Exact prompt length: the chat template rendered and tokenized, as the engine does."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return len(_ids(ids))


def _prompt_tokens(tokenizer: Any, prompts: list[Any]) -> list[int]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(len(tokenizer(p)["input_ids"]))
        else:
            out.append(len(p))
    return out


def _stream_options_type(request_type: type) -> Any:
    import typing

    annotation = request_type.model_fields["stream_options"].annotation  # type: ignore[attr-defined]
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and arg is not type(None):
            return arg
    raise RuntimeError("cannot find the StreamOptions type")
