"""Our OpenAI ingress: Ray Serve LLM's ``OpenAiIngress`` with keys, limits and metering, in the
same hop as routing (no proxy in front). This class only wires the request's pieces, in the
order a request meets them:

1. :mod:`serve_apps.cors` (outermost middleware): browser preflights and CORS headers;
2. :mod:`serve_apps.gate`: route allow-list, bearer key, body bound, then the precheck;
3. :mod:`serve_apps.validation` (the precheck, on the raw JSON): model and scope, limits,
   exact prompt length, quota, and :mod:`serve_apps.admission` (rate limits, budgets);
4. the route methods here: rewrite what goes upstream (completion budget, forced stream
   usage), hold it while a deployment at zero replicas starts (:mod:`serve_apps.probe`),
   answer a full queue with 429 (backpressure), and meter the answer
   (:mod:`serve_apps.metering`, usage delivered through :mod:`serve_apps.spools`).

How it plugs in (public API only): ``build_openai_app`` binds routes by method name, so the
methods overridden here (``chat``, ``completions``, ``embeddings``, ``models`` …) are what runs
on those routes. ``__serve_build_asgi_app__`` (called by Serve on the replica, after
``__init__``, before the app starts) puts the middlewares in front of the FastAPI app. Errors
we raise are answered as JSON here, not raised: Ray's exception middleware would turn unknown
exceptions into 500s.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from ray.serve.exceptions import BackPressureError
from ray.serve.llm.ingress import OpenAiIngress
from starlette.responses import JSONResponse, Response, StreamingResponse

# The request types of OpenAiIngress's own signatures (FastAPI parses bodies into them).
from core.ray_private import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from core.spec import DeploymentFile, DeploymentSpec
from serve_apps import admission, catalog, protocol
from serve_apps import limits as lim
from serve_apps.auth import KeyCache
from serve_apps.cors import Cors, CorsMiddleware
from serve_apps.gate import ALLOWED_ROUTES, Gate, RequestContext
from serve_apps.metering import Meter, metered_stream
from serve_apps.metrics import IngressMetrics
from serve_apps.options import IngressOptions
from serve_apps.probe import ColdStartHold, ReplicaProbe, cold_retry_after
from serve_apps.spools import ReplicaClients
from serve_apps.validation import TokenCounter, Validation

log = logging.getLogger(__name__)


def _json_error(err: protocol.OpenAIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class InventivIngress(OpenAiIngress):
    """``OpenAiIngress`` with API keys, request limits, usage metering and metrics."""

    def __init__(self, llm_deployments: dict[str, Any], model_cards: dict[str, Any], *,
                 lora_paths: dict[str, str] | None = None, spec: dict[str, Any],
                 options: dict[str, Any]) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self.spec = DeploymentFile.model_validate(spec)
        self.options = IngressOptions.model_validate(options)
        self.deployments: dict[str, DeploymentSpec] = {
            d.model.name: d for d in self.spec.deployments}
        self.metrics = IngressMetrics()
        self._clients = ReplicaClients(self.options)
        self.keys = KeyCache(self._clients.verify.verify_key, ttl=self.options.key_ttl_s,
                             stale=self.options.key_stale_s,
                             negative_ttl=self.options.negative_ttl_s, **_key_cache_extras(
                                 self.options))
        self.admission = admission.Admission(
            enabled=self.options.rate_limits,
            limiter_name=f"{self.options.app_name}-rate-limiter",
            budgets=self._clients.budgets, metering=self._clients.health, metrics=self.metrics)
        self.validation = Validation(
            self.deployments, tokens=TokenCounter(self.deployments),
            admission=self.admission, metrics=self.metrics, record=self._record)
        probe = ReplicaProbe({model: handle.deployment_name
                              for model, handle in self._default_serve_handles.items()})
        self.cold = ColdStartHold(probe.running, on_held=self.metrics.held,
                                  on_waited=self.metrics.waited)
        # `created` of the model objects: when this app's ingress started.
        self.created = int(time.time())

    def __serve_build_asgi_app__(self) -> Any:
        """Serve's hook, called on the replica after ``__init__``: put the gate in front, and
        CORS in front of it (the last middleware added is the outermost)."""
        app = self.app  # type: ignore[attr-defined]  # set by Serve's ASGI wrapper
        app.add_middleware(
            Gate, keys=self.keys, precheck=self.validation.precheck, metrics=self.metrics,
            max_body_bytes=max(d.limits.max_body_bytes for d in self.spec.deployments))
        app.add_middleware(CorsMiddleware, cors=Cors(self.options.cors_allow_origins),
                           paths=ALLOWED_ROUTES)
        return app

    async def __del__(self) -> None:  # Serve awaits it on replica shutdown
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.flush()
        admitted = getattr(self, "admission", None)
        if admitted is not None:
            admitted.close()
        clients = getattr(self, "_clients", None)
        if clients is not None:
            await asyncio.to_thread(clients.close)

    def _record(self, record: dict[str, Any]) -> None:
        """Where every meter sends its usage event: settle the reservation, queue the event
        for the control API, count it."""
        self.admission.settle(record)
        try:
            self._clients.usage.enqueue_usage(record)
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

    # -------------------------------------------------------------- routes

    async def models(self, request: Request) -> Any:  # type: ignore[override]
        """``GET /v1/models``: OpenAI model objects (LoRA adapters included), only those this
        key may use."""
        try:
            ctx = self._context(request)
        except protocol.OpenAIError as err:
            return _json_error(err)
        return JSONResponse({"object": "list", "data": [
            model_object(t, self.created) for t in self.validation.catalog.targets()
            if catalog.visible(t, ctx.principal)]})

    async def model_data(self, model: str, request: Request) -> Any:  # type: ignore[override]
        """``GET /v1/models/{id}``: the model object, or 404 (unknown, or not this key's)."""
        try:
            ctx = self._context(request)
        except protocol.OpenAIError as err:
            return _json_error(err)
        target = self.validation.catalog.resolve(model)
        if target is None or not catalog.visible(target, ctx.principal):
            return _json_error(protocol.model_not_found(model))
        return JSONResponse(model_object(target, self.created))

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
        if ctx.target is not None and ctx.target.adapter is not None:
            # A bare adapter name goes upstream as `<model>:<adapter>` (Ray's multiplexing).
            body.model = ctx.target.model_id
        if endpoint != "embeddings":
            body.max_tokens = checked.max_tokens
            if endpoint == "chat":
                body.max_completion_tokens = checked.max_tokens
            if checked.stream:
                # The final usage chunk always (the exact totals); running totals on every
                # chunk only when the client asked: the engine then serialises, and the
                # meter strips, no usage per chunk (a cut stream is billed by its token
                # events, see serve_apps.metering).
                options_type = _stream_options_type(type(body))  # type: ignore[arg-type]
                body.stream_options = options_type(
                    include_usage=True,
                    continuous_usage_stats=checked.client_continuous_usage)
        # The stock route method of the same name (``chat``, ``completions``, ``embeddings``).
        method: Callable[..., Awaitable[Any]] = getattr(OpenAiIngress, endpoint)

        async def upstream() -> Any:
            return await method(self, body, request)

        try:
            if dep.autoscaling.min_replicas == 0:
                # May be at zero replicas: held (bounded, with a deadline) while one starts.
                auto = dep.autoscaling
                response = await self.cold.call(
                    dep.model.name, upstream, limit=auto.max_queued_requests,
                    timeout_s=auto.cold_start_timeout_s, retry_after_s=cold_retry_after(dep))
            else:
                response = await upstream()
        except asyncio.CancelledError:
            meter.finish("aborted")
            raise
        except BackPressureError:
            # The deployment's queue is full: 429 with Retry-After, never a hang.
            return self._unserved(admission.overloaded(dep.model.name), meter, dep, org)
        except protocol.OpenAIError as err:
            # Cold start: the wait exceeded its limit (503) or too many were held (429).
            return self._unserved(err, meter, dep, org)
        except Exception as exc:
            meter.finish("error")
            self.metrics.error(dep.model.name, org, int(getattr(exc, "status_code", 500)))
            raise
        if response is None:  # the engine answered something that is not an embedding
            meter.finish("error")
            return _json_error(protocol.OpenAIError(500, "The engine returned no embedding.",
                                                    type=protocol.SERVER))
        return self._metered(response, meter, checked, dep, org)

    def _unserved(self, err: protocol.OpenAIError, meter: Meter, dep: DeploymentSpec,
                  org: str) -> Response:
        """A request refused after admission, before any engine saw it: 0 tokens (finops
        bills the tokens of every usage record), ``rejected`` like any request refused
        unserved."""
        meter.prompt_tokens = 0
        meter.finish("rejected")
        if err.status == 429:
            self.metrics.limited(dep.model.name, org, err.code or "overloaded")
        self.metrics.error(dep.model.name, org, err.status)
        return _json_error(err)

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
    # must not parse (or validate) anything for them. Ray binds routes by method name.
    async def _not_served(self, request: Request) -> Response:
        return _json_error(protocol.route_not_found(request.method, request.url.path))

    transcriptions = score = tokenize = detokenize = _not_served  # type: ignore[assignment]


OWNED_BY = "inventiv"


def model_object(target: catalog.Target, created: int) -> dict[str, Any]:
    """OpenAI's model object of a deployment's model or adapter (adapters name their
    ``parent``, as vLLM's own listing does)."""
    obj: dict[str, Any] = {"id": target.model_id, "object": "model", "created": created,
                           "owned_by": OWNED_BY}
    if target.adapter is not None:
        obj["parent"] = target.dep.model.name
    return obj


def _key_cache_extras(options: IngressOptions) -> dict[str, Any]:
    """What the key cache takes beyond its TTLs, from options that may carry it: the key
    checksum secret (forged keys refused without a lookup) and the failed-auth throttle."""
    extras: dict[str, Any] = {}
    secret_file = getattr(options, "key_checksum_secret_file", None)
    if secret_file:
        with open(secret_file, "rb") as fh:
            extras["checksum_secret"] = fh.read().strip()
    failures = getattr(options, "key_failures_per_client", None)
    if failures is not None:
        extras["max_failures_per_client"] = failures
    window = getattr(options, "key_failure_window_s", None)
    if window is not None:
        extras["failure_window"] = window
    return extras


@functools.cache  # one lookup per request type, not one per streamed request
def _stream_options_type(request_type: type) -> Any:
    import typing

    annotation = request_type.model_fields["stream_options"].annotation  # type: ignore[attr-defined]
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and arg is not type(None):
            return arg
    raise RuntimeError("cannot find the StreamOptions type")
