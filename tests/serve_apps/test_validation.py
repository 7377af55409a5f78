"""The precheck on raw JSON with real deployments, the real token counter (the tiny model's own
tokenizer and chat template) and real meters: what is refused, with which error, what is
metered as ``rejected``, and the completion budget decided for what is let through."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.spec import DeploymentSpec
from serve_apps import protocol
from serve_apps.admission import Admission
from serve_apps.auth import Principal
from serve_apps.gate import RequestContext
from serve_apps.metrics import IngressMetrics
from serve_apps.validation import TokenCounter, Validation, count_chat_tokens, visible

ORG = uuid.uuid4()


def deployments(chat_source: str) -> dict[str, DeploymentSpec]:
    specs = [
        {"name": "chat", "model": {"name": "tiny", "source": chat_source, "task": "chat"},
         "engine": {"max_model_len": 512}, "limits": {"max_tokens": 256}},
        {"name": "private", "model": {"name": "private", "source": "/nowhere", "task": "chat"},
         "engine": {"max_model_len": 512}, "limits": {"max_tokens": 256},
         "allowed_orgs": [str(uuid.uuid4())]},
        {"name": "embed", "model": {"name": "embed", "source": "/nowhere", "task": "embed"},
         "engine": {"max_model_len": 256}, "limits": {"max_tokens": 1}},
    ]
    return {s["model"]["name"]: DeploymentSpec.model_validate(s)  # type: ignore[index]
            for s in specs}


class Checker:
    def __init__(self, chat_source: str = "/nowhere") -> None:
        self.records: list[dict[str, Any]] = []
        deps = deployments(chat_source)
        self.tokens = TokenCounter(deps)
        self.validation = Validation(
            deps, tokens=self.tokens, admission=Admission(enabled=False, limiter_name="t"),
            metrics=IngressMetrics(), record=self.records.append)

    def check(self, path: str, body: dict[str, Any] | None) -> RequestContext:
        principal = Principal(api_key_id=uuid.uuid4(), org_id=ORG, user_id=None,
                              allowed_models=None, rpm_limit=None, tpm_limit=None,
                              budget_left_eur=None)
        ctx = RequestContext(request_id=f"req-{uuid.uuid4().hex}", principal=principal,
                             body_bytes=len(str(body)), body=body)
        asyncio.run(self.validation.precheck(path, ctx))
        return ctx

    def refused(self, path: str, body: dict[str, Any]) -> protocol.OpenAIError:
        with pytest.raises(protocol.OpenAIError) as info:
            self.check(path, body)
        return info.value


CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "def fibonacci(n):"}]


def test_unknown_and_other_orgs_models_are_refused() -> None:
    c = Checker()
    assert c.refused(CHAT, {"model": "nope", "messages": HELLO}).status == 404
    assert c.records == []  # not one of our models: nothing to meter
    assert c.refused(CHAT, {"model": "private", "messages": HELLO}).status == 403
    assert [(r["model"], r["status"]) for r in c.records] == [("private", "rejected")]


def test_limits_refuse_and_meter_rejected() -> None:
    c = Checker()
    err = c.refused(CHAT, {"model": "tiny", "messages": HELLO, "best_of": 4})
    assert (err.status, err.code, err.param) == (400, "unsupported_parameter", "best_of")
    err = c.refused(CHAT, {"model": "tiny", "messages": HELLO, "max_tokens": 10_000})
    assert err.param == "max_tokens"
    err = c.refused("/v1/embeddings", {"model": "tiny", "input": "x"})
    assert "does not support embeddings" in err.message
    err = c.refused("/v1/completions", {"model": "embed", "prompt": "x"})
    assert "does not generate text" in err.message
    assert [r["status"] for r in c.records] == ["rejected"] * 4


def test_without_a_tokenizer_the_budget_is_the_limit() -> None:
    c = Checker()
    ctx = c.check(CHAT, {"model": "tiny", "messages": HELLO, "stream": True,
                         "stream_options": {"include_usage": True}})
    assert ctx.dep is not None and ctx.dep.name == "chat"
    assert ctx.checked is not None and ctx.meter is not None
    assert (ctx.checked.max_tokens, ctx.checked.stream, ctx.checked.client_include_usage) == (
        256, True, True)
    assert ctx.meter.prompt_tokens == 0 and c.records == []  # metered when answered
    assert c.check("/v1/models", None).meter is None


def test_prompts_are_counted_with_the_models_template(tiny_model_dir: Path) -> None:
    c = Checker(str(tiny_model_dir))
    tokenizer = c.tokens.tokenizers["tiny"]
    assert tokenizer is not None
    exact = count_chat_tokens(tokenizer, HELLO)
    ctx = c.check(CHAT, {"model": "tiny", "messages": HELLO})
    assert ctx.meter is not None and ctx.meter.prompt_tokens == exact
    assert ctx.checked is not None and ctx.checked.max_tokens == min(256, 512 - exact)
    long = [{"role": "user", "content": "def f(x): return x " * 200}]
    err = c.refused(CHAT, {"model": "tiny", "messages": long, "max_tokens": 10})
    assert err.code == "context_length_exceeded"
    ctx = c.check("/v1/completions", {"model": "tiny", "prompt": ["a b", [1, 2, 3]]})
    assert ctx.meter is not None
    assert ctx.meter.prompt_tokens == len(tokenizer("a b")["input_ids"]) + 3


def test_visibility_is_the_org_and_the_keys_model_scope() -> None:
    deps = deployments("/nowhere")
    scoped = Principal(api_key_id=uuid.uuid4(), org_id=ORG, user_id=None,
                       allowed_models=frozenset({"embed"}), rpm_limit=None, tpm_limit=None,
                       budget_left_eur=None)
    assert [name for name, d in deps.items() if visible(d, scoped)] == ["embed"]


class Recording(Admission):
    """The real admission (disabled), recording what each request reserves; ``refuse``: answer
    429 as the limiter does."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__(enabled=False, limiter_name="t")
        self.asked: list[tuple[int, int]] = []
        self.refuse = refuse

    async def admit(self, request_id: str, principal: Principal, dep: DeploymentSpec,
                    prompt_tokens: int, completion_tokens: int) -> Any:
        self.asked.append((prompt_tokens, completion_tokens))
        if self.refuse:
            raise protocol.rate_limited("slow down", 1)
        return {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9"}


def test_several_prompts_reserve_every_completion(tiny_model_dir: Path) -> None:
    c = Checker(str(tiny_model_dir))
    c.validation.admission = admitted = Recording()
    tokenizer = c.tokens.tokenizers["tiny"]
    prompts = ["a b", "c", [1, 2, 3]]
    ctx = c.check("/v1/completions", {"model": "tiny", "prompt": prompts, "max_tokens": 10,
                                      "n": 1})
    counted = sum(len(tokenizer(p)["input_ids"]) for p in prompts[:2]) + 3
    assert admitted.asked == [(counted, 10 * 1 * 3)]  # max_tokens x n x prompts
    assert ctx.rate_headers == {"x-ratelimit-limit-requests": "10",
                                "x-ratelimit-remaining-requests": "9"}
    c.check(CHAT, {"model": "tiny", "messages": HELLO, "max_tokens": 5})
    assert admitted.asked[-1][1] == 5


def test_a_request_refused_before_the_engine_records_zero_tokens(tiny_model_dir: Path) -> None:
    c = Checker(str(tiny_model_dir))
    c.validation.admission = Recording(refuse=True)
    err = c.refused(CHAT, {"model": "tiny", "messages": HELLO})
    assert err.status == 429
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in c.records] == [
        ("rejected", 0, 0)]


def test_tools_are_part_of_the_counted_prompt(tiny_model_dir: Path) -> None:
    c = Checker(str(tiny_model_dir))
    tokenizer = c.tokens.tokenizers["tiny"]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    ctx = c.check(CHAT, {"model": "tiny", "messages": HELLO, "tools": tools,
                         "tool_choice": "required"})
    assert ctx.meter is not None
    assert ctx.meter.prompt_tokens == count_chat_tokens(tokenizer, HELLO, tools) > \
        count_chat_tokens(tokenizer, HELLO)
    err = c.refused(CHAT, {"model": "tiny", "messages": HELLO, "tools": tools})
    assert err.param == "tool_choice"  # auto needs a tool parser; this deployment has none


def test_allowed_orgs_match_the_org_id_or_its_name() -> None:
    dep = DeploymentSpec.model_validate({
        "name": "named", "model": {"name": "named", "source": "/nowhere"},
        "engine": {"max_model_len": 512}, "limits": {"max_tokens": 256},
        "allowed_orgs": ["acme"]})

    def principal(org_id: uuid.UUID, org_name: str | None) -> Principal:
        p = Principal(api_key_id=uuid.uuid4(), org_id=org_id, user_id=None,
                      allowed_models=None, rpm_limit=None, tpm_limit=None,
                      budget_left_eur=None)
        if org_name is not None:
            object.__setattr__(p, "org_name", org_name)
        return p

    assert visible(dep, principal(ORG, "acme"))
    assert not visible(dep, principal(ORG, "other"))
    assert not visible(dep, principal(ORG, None))
    by_id = dep.model_copy(update={"allowed_orgs": [str(ORG)]})
    assert visible(by_id, principal(ORG, "whatever"))
