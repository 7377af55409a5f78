"""The gate on raw ASGI calls (no Serve needed): route allow-list, the key checked before the
body is read, the body bound, the precheck on the raw JSON, the request id on every answer, and
one usage event for a request admitted but answered by the app without metering.

The key cache is the real one; only its ``verify`` (the control API) is a function that knows
one key. The app behind the gate is a raw ASGI app that answers with what it received."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from core.keys import generate_api_key
from core.wire import KeyVerifyResult
from serve_apps import protocol
from serve_apps.asgi import REQUEST_ID_HEADER
from serve_apps.auth import KeyCache
from serve_apps.gate import Gate, RequestContext
from serve_apps.metering import Meter
from serve_apps.metrics import IngressMetrics
from tests.serve_apps.asgi_client import call

KEY = generate_api_key().secret
LIMIT = 200_000


class ControlApi:
    """``KeyCache``'s verify: knows ``KEY``, counts the lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    def verify(self, key_hash: str) -> KeyVerifyResult:
        self.lookups += 1
        return KeyVerifyResult(
            api_key_id=uuid.uuid4(), org_id=uuid.uuid4(), user_id=None, name="k",
            allowed_models=None, rpm_limit=None, tpm_limit=None, monthly_budget_eur=None,
            spent_this_month_eur=Decimal(0), budget_left_eur=None, expires_at=None)


class Echo:
    """The app behind the gate: answers 200 with the body it read and the gate's context."""

    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.contexts.append(scope["state"]["inventiv"])
        message = await receive()
        body = json.dumps({"body": message["body"].decode()}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def gate(precheck: Any = None, app: Any = None) -> tuple[Gate, ControlApi, Echo]:
    async def nothing(path: str, ctx: RequestContext) -> None:
        return None

    api, echo = ControlApi(), Echo()
    return Gate(app or echo, keys=KeyCache(api.verify), precheck=precheck or nothing,
                max_body_bytes=LIMIT, metrics=IngressMetrics()), api, echo


AUTH = {"authorization": f"Bearer {KEY}"}


def test_only_the_served_routes_exist_and_health_needs_no_key() -> None:
    g, api, _ = gate()
    for method, path in [("POST", "/tokenize"), ("GET", "/docs"), ("POST", "/v1/models/x"),
                         ("GET", "/v1/models/"), ("GET", "/v1/chat/completions"),
                         ("DELETE", "/v1/models")]:
        answer = call(g, method, path, headers=AUTH)
        assert answer.status == 404, (method, path)
        assert answer.json()["error"]["code"] == "unknown_url"
    assert api.lookups == 0  # a 404 costs no key lookup
    health = call(g, "GET", "/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})
    head = call(g, "HEAD", "/healthz")
    assert (head.status, head.body) == (200, b"")


def test_the_key_is_checked_before_the_body_is_read() -> None:
    g, api, echo = gate()
    for headers in ({}, {"authorization": "Bearer not-a-key"}):
        answer = call(g, "POST", "/v1/chat/completions", headers=headers, chunks=[b"{}"])
        assert answer.status == 401
        assert not answer.body_read
        assert answer.headers[REQUEST_ID_HEADER] == answer.headers["x-request-id"]
    assert api.lookups == 0 and echo.contexts == []  # malformed keys never leave the ingress


def test_the_body_is_bounded_declared_or_streamed() -> None:
    g, _, echo = gate()
    declared = call(g, "POST", "/v1/completions",
                    headers={**AUTH, "content-length": str(LIMIT + 1)}, chunks=[b"{}"])
    assert declared.status == 413 and not declared.body_read
    streamed = call(g, "POST", "/v1/completions", headers=AUTH,
                    chunks=[b"x" * (LIMIT // 2 + 1)] * 2)
    assert streamed.status == 413
    assert echo.contexts == []


def test_an_admitted_request_reaches_the_app_with_its_body_and_context() -> None:
    seen: list[tuple[str, dict[str, Any] | None]] = []

    async def precheck(path: str, ctx: RequestContext) -> None:
        seen.append((path, ctx.body))

    g, _, echo = gate(precheck)
    raw = b'{"model": "m", "prompt": "hi"}'
    answer = call(g, "POST", "/v1/completions", headers=AUTH, chunks=[raw[:10], raw[10:]])
    assert answer.status == 200
    assert answer.json() == {"body": raw.decode()}  # the app reads the body the gate read
    assert seen == [("/v1/completions", {"model": "m", "prompt": "hi"})]
    (ctx,) = echo.contexts
    assert answer.headers[REQUEST_ID_HEADER] == ctx.request_id
    assert ctx.body_bytes == len(raw)


def test_not_json_goes_on_unparsed_and_too_deep_json_is_refused() -> None:
    bodies: list[dict[str, Any] | None] = []

    async def precheck(path: str, ctx: RequestContext) -> None:
        bodies.append(ctx.body)

    g, _, echo = gate(precheck)
    for raw in (b"not json", b"[1, 2]"):
        assert call(g, "POST", "/v1/completions", headers=AUTH, chunks=[raw]).status == 200
    assert bodies == [None, None]  # FastAPI answers those 400s
    deep = call(g, "POST", "/v1/completions", headers=AUTH, chunks=[b"[" * 100_000])
    assert deep.status == 400 and deep.json()["error"]["code"] == "invalid_json"
    assert len(echo.contexts) == 2


def test_precheck_refusals_and_bugs_are_answered_in_openai_shape() -> None:
    records: list[dict[str, Any]] = []

    async def refuse(path: str, ctx: RequestContext) -> None:
        raise protocol.rate_limited("slow down", 3)

    async def bug(path: str, ctx: RequestContext) -> None:
        ctx.meter = Meter(request_id=ctx.request_id, model="m", deployment="d",
                          streamed=False, record=records.append)
        raise KeyError("oops")

    refused = call(gate(refuse)[0], "POST", "/v1/completions", headers=AUTH, chunks=[b"{}"])
    assert refused.status == 429 and refused.headers["retry-after"] == "3"
    broken = call(gate(bug)[0], "POST", "/v1/completions", headers=AUTH, chunks=[b"{}"])
    assert broken.status == 500 and broken.json()["error"]["code"] == "internal_error"
    assert [r["status"] for r in records] == ["error"]


def test_a_request_the_app_answers_without_metering_is_metered_rejected() -> None:
    records: list[dict[str, Any]] = []

    async def precheck(path: str, ctx: RequestContext) -> None:
        ctx.meter = Meter(request_id=ctx.request_id, model="m", deployment="d",
                          streamed=False, record=records.append)

    g, _, _ = gate(precheck)
    assert call(g, "POST", "/v1/completions", headers=AUTH, chunks=[b"{}"]).status == 200
    assert [r["status"] for r in records] == ["rejected"]  # e.g. FastAPI's own 400


def test_model_objects_route_is_served() -> None:
    g, _, echo = gate()
    for path in ("/v1/models/tiny", "/v1/models/org/model:adapter"):
        assert call(g, "GET", path, headers=AUTH).status == 200
    assert len(echo.contexts) == 2


def test_every_answer_carries_the_request_id_of_its_usage_record() -> None:
    records: list[dict[str, Any]] = []

    async def precheck(path: str, ctx: RequestContext) -> None:
        ctx.meter = Meter(request_id=ctx.request_id, model="m", deployment="d",
                          streamed=False, record=records.append)
        if ctx.body == {"refuse": True}:  # as the validation does: metered, then refused
            ctx.meter.finish("rejected")
            raise protocol.bad_request("no")

    g, _, _ = gate(precheck)
    for raw in (b"{}", b'{"refuse": true}'):
        answer = call(g, "POST", "/v1/completions", headers=AUTH, chunks=[raw])
        assert answer.headers["x-request-id"] == records[-1]["request_id"]
    assert call(g, "GET", "/nope", headers=AUTH).headers["x-request-id"]
    # Behind Serve's proxy the request carries the proxy's id (the client's own when it sent
    # one): the gate adopts it and does not send a second header (the proxy echoes it).
    given = f"client-{uuid.uuid4().hex}"
    answer = call(g, "POST", "/v1/completions", headers={**AUTH, "x-request-id": given},
                  chunks=[b"{}"])
    assert answer.status == 200 and records[-1]["request_id"] == given
    assert "x-request-id" not in answer.headers and answer.headers[REQUEST_ID_HEADER] == given


def test_a_reused_or_malformed_request_id_is_refused() -> None:
    g, _, echo = gate()
    given = f"client-{uuid.uuid4().hex}"
    first = call(g, "POST", "/v1/completions", headers={**AUTH, "x-request-id": given},
                 chunks=[b"{}"])
    assert first.status == 200
    for bad in (given, "has space", "x" * 129, "-leading"):
        answer = call(g, "POST", "/v1/completions", headers={**AUTH, "x-request-id": bad},
                      chunks=[b"{}"])
        assert answer.status == 400, bad
        assert answer.json()["error"]["code"] == "invalid_request_id"
    assert len(echo.contexts) == 1


def test_rate_limit_headers_of_the_admission_go_on_the_response() -> None:
    async def precheck(path: str, ctx: RequestContext) -> None:
        ctx.rate_headers = {"x-ratelimit-limit-requests": "10",
                            "x-ratelimit-remaining-requests": "9"}

    answer = call(gate(precheck)[0], "POST", "/v1/completions", headers=AUTH, chunks=[b"{}"])
    assert answer.headers["x-ratelimit-limit-requests"] == "10"
    assert answer.headers["x-ratelimit-remaining-requests"] == "9"


def test_the_client_address_goes_to_the_key_lookup() -> None:
    seen: list[str | None] = []

    class Keys(KeyCache):
        async def authenticate(self, authorization: str | None, *,
                               client: str | None = None) -> Any:
            seen.append(client)
            return await super().authenticate(authorization)

    api = ControlApi()
    g = Gate(Echo(), keys=Keys(api.verify), precheck=lambda p, c: _none(),
             metrics=IngressMetrics(), max_body_bytes=LIMIT)
    assert call(g, "POST", "/v1/completions", headers=AUTH, chunks=[b"{}"]).status == 200
    assert seen == ["test"]


async def _none() -> None:
    return None


def test_an_unmetered_refusal_after_admission_records_no_tokens() -> None:
    records: list[dict[str, Any]] = []

    async def precheck(path: str, ctx: RequestContext) -> None:
        ctx.meter = Meter(request_id=ctx.request_id, model="m", deployment="d",
                          streamed=False, record=records.append)
        ctx.meter.prompt_tokens = 42  # counted by the precheck; FastAPI then refuses the body

    call(gate(precheck)[0], "POST", "/v1/completions", headers=AUTH, chunks=[b"{}"])
    assert [(r["status"], r["prompt_tokens"]) for r in records] == [("rejected", 0)]
