"""Validation: everything decided about a request before dispatch, on its raw JSON (the
gate's precheck): the model and whether the key may use it, the deployment's limits
(:mod:`serve_apps.limits`), the prompt's exact length counted with the model's tokenizer, the
quota and the admission (:mod:`serve_apps.admission`). A refused request for one of our models
is metered as ``rejected``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.spec import DeploymentSpec
from serve_apps import catalog, protocol, tools
from serve_apps import limits as lim
from serve_apps.admission import Admission, check_quota
from serve_apps.auth import Principal
from serve_apps.gate import RequestContext
from serve_apps.metering import Meter
from serve_apps.metrics import IngressMetrics

log = logging.getLogger(__name__)

# Prompts longer than this are tokenized in a thread, not on the event loop.
INLINE_TOKENIZE_CHARS = 8192


def visible(dep: DeploymentSpec, principal: Principal) -> bool:
    """Whether the key may see and use the deployment's model: its org (``allowed_orgs``
    names orgs by id or by name) and its model scope (see :mod:`serve_apps.catalog`)."""
    return catalog.visible(catalog.Target(dep), principal)


class Validation:
    """The precheck of the ingress's requests (``record``: where meters send usage)."""

    def __init__(self, deployments: dict[str, DeploymentSpec], *, tokens: TokenCounter,
                 admission: Admission, metrics: IngressMetrics,
                 record: Callable[[dict[str, Any]], None]) -> None:
        self.deployments = deployments
        self.catalog = catalog.Catalog(deployments)
        self.tokens = tokens
        self.admission = admission
        self.metrics = metrics
        self.record = record

    async def precheck(self, path: str, ctx: RequestContext) -> None:
        """Everything decided before dispatch, on the raw JSON: model and scope, limits,
        prompt length, quota, rate limits. Raises ``OpenAIError``; an authenticated request
        for one of our models that is refused is metered as ``rejected``."""
        if path == "/v1/models" or ctx.body is None:
            return  # no body, or not JSON: FastAPI answers that 400
        raw = ctx.body
        target = self.catalog.resolve(raw.get("model"))
        if target is None:
            model = raw.get("model")
            raise protocol.model_not_found(model if isinstance(model, str) else None)
        dep = target.dep
        ctx.target = target
        if not catalog.visible(target, ctx.principal):
            self.metrics.error(dep.model.name, str(ctx.principal.org_id), 403)
            self._meter(ctx, dep, streamed=False).finish("rejected")
            raise protocol.model_not_allowed(raw["model"])
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
            # Refused before any engine saw it: no token is billed.
            meter.prompt_tokens = meter.completion_tokens = 0
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
        prompts: list[Any] = [None]
        if chat:
            lim.check_messages(raw.get("messages"), dep.limits, dep.model.modalities)
            tools.check_tools(raw, dep.limits, has_parser=dep.engine.tool_call_parser is not None)
            tools.check_response_format(raw.get("response_format"), dep.limits)
            prompt_tokens = await self.tokens.chat(dep.model.name, raw["messages"],
                                                   chars=ctx.body_bytes, tools=raw.get("tools"))
        else:
            prompts = lim.check_prompt(raw.get("prompt"), dep.limits)
            counts = await self.tokens.prompts(dep.model.name, prompts, chars=ctx.body_bytes)
            prompt_tokens = None if counts is None else lim.longest(counts)
        checked = lim.check_generation(raw, dep.limits, chat=chat,
                                       max_model_len=dep.engine.max_model_len,
                                       prompt_tokens=prompt_tokens)
        check_quota(ctx.principal)
        if counts is not None:
            meter.prompt_tokens = sum(counts)
        elif prompt_tokens is not None:
            meter.prompt_tokens = prompt_tokens
        # Worst case: the prompt (its byte size when it could not be counted) plus every
        # completion at its budget: n of them for each prompt (the engine generates for all).
        prompt_cost = meter.prompt_tokens if prompt_tokens is not None else ctx.body_bytes
        ctx.rate_headers = _headers(await self.admission.admit(
            ctx.request_id, ctx.principal, dep, prompt_cost,
            checked.max_tokens * checked.n * len(prompts)))
        return checked

    async def _check_embeddings(self, raw: dict[str, Any], ctx: RequestContext,
                                dep: DeploymentSpec, meter: Meter) -> lim.Checked:
        if dep.model.task != "embed":
            raise protocol.bad_request(f"The model `{dep.model.name}` does not support "
                                       "embeddings.", param="model")
        lim.check_fields(raw, lim.EMBEDDING_FIELDS)
        lim.check_body_size(ctx.body_bytes, dep.limits)
        inputs = lim.check_embedding_input(raw.get("input"), dep.limits)
        counts = await self.tokens.prompts(dep.model.name, inputs, chars=ctx.body_bytes)
        if counts is not None and lim.longest(counts) > dep.engine.max_model_len:
            raise protocol.bad_request(
                f"An input has {lim.longest(counts)} tokens; this model accepts at most "
                f"{dep.engine.max_model_len}.", param="input", code="context_length_exceeded")
        check_quota(ctx.principal)
        cost = sum(counts) if counts is not None else ctx.body_bytes
        ctx.rate_headers = _headers(
            await self.admission.admit(ctx.request_id, ctx.principal, dep, cost, 0))
        return lim.Checked(max_tokens=0, n=1, stream=False, client_include_usage=False,
                           client_continuous_usage=False)

    def _meter(self, ctx: RequestContext, dep: DeploymentSpec, streamed: bool) -> Meter:
        p = ctx.principal
        # The usage record's model is the id served: `<model>:<adapter>` for an adapter.
        model = ctx.target.model_id if ctx.target is not None else dep.model.name
        return Meter(request_id=ctx.request_id, model=model, deployment=dep.name,
                     streamed=streamed, record=self.record, api_key_id=str(p.api_key_id),
                     org_id=str(p.org_id), user_id=str(p.user_id) if p.user_id else None)


def _headers(answer: Any) -> dict[str, str]:
    """The rate-limit headers the admission answered (a dict of ``x-ratelimit-*``; None or
    anything else: none)."""
    if not isinstance(answer, dict):
        return {}
    return {str(k): str(v) for k, v in answer.items()}


class TokenCounter:
    """Exact prompt lengths with each model's own tokenizer, when its files are local."""

    def __init__(self, deployments: dict[str, DeploymentSpec]) -> None:
        self.tokenizers: dict[str, Any] = {
            name: load_tokenizer(dep) for name, dep in deployments.items()}

    async def chat(self, model: str, messages: list[dict[str, Any]], *, chars: int,
                   tools: list[dict[str, Any]] | None = None) -> int | None:
        """The prompt length of a chat request (its template rendered, with its tools); None
        when unknown."""
        result: int | None = await self._count(model, count_chat_tokens, messages, tools,
                                                chars=chars)
        return result

    async def prompts(self, model: str, prompts: list[Any], *, chars: int) -> list[int] | None:
        """The length of each prompt (or embedding input); None when unknown."""
        result: list[int] | None = await self._count(model, count_prompt_tokens, prompts,
                                                     chars=chars)
        return result

    async def _count(self, model: str, fn: Any, *args: Any, chars: int) -> Any:
        # In a thread for long inputs (``chars``): tokenizing blocks the event loop.
        if self.tokenizers.get(model) is None:
            return None
        try:
            if chars > INLINE_TOKENIZE_CHARS:
                return await asyncio.to_thread(fn, self.tokenizers[model], *args)
            return fn(self.tokenizers[model], *args)
        except Exception:  # noqa: BLE001 - the engine checks again; counting is best effort
            log.warning("could not count tokens for %s", model, exc_info=True)
            return None


def load_tokenizer(dep: DeploymentSpec) -> Any:
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


def count_chat_tokens(tokenizer: Any, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None = None) -> int:
    """Exact prompt length: the chat template rendered (with the request's tools) and
    tokenized, as the engine does."""
    ids = tokenizer.apply_chat_template(messages, tools=tools or None,
                                        add_generation_prompt=True, tokenize=True)
    return len(_ids(ids))


def count_prompt_tokens(tokenizer: Any, prompts: list[Any]) -> list[int]:
    """Exact length of each prompt (token id lists are their own length)."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(len(tokenizer(p)["input_ids"]))
        else:
            out.append(len(p))
    return out
