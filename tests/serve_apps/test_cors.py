"""CORS: the middleware on raw ASGI calls (fast), then on the real stack, where the session
ingress allows one browser origin (``CORS_ORIGIN``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from serve_apps.cors import Cors, CorsMiddleware
from tests.serve_apps.asgi_client import Answer, call
from tests.serve_apps.conftest import CORS_ORIGIN, Serving, require_modules

require_modules("openai", "vllm", "torch", "transformers")
import openai  # noqa: E402

CHAT = [{"role": "user", "content": "def fibonacci(n):"}]
SERVED = ["/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


@pytest.fixture
def key(serving: Serving) -> Any:
    return serving.control.new_key()


def preflight(serving: Serving, path: str, origin: str | None = CORS_ORIGIN,
              method: str | None = "POST",
              request_headers: str = "authorization, content-type") -> httpx.Response:
    headers = {"Access-Control-Request-Headers": request_headers}
    if origin is not None:
        headers["Origin"] = origin
    if method is not None:
        headers["Access-Control-Request-Method"] = method
    return httpx.options(serving.base_url + path, headers=headers, timeout=30)


def cors_headers(r: httpx.Response | Answer) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_preflight_from_an_allowed_origin_needs_no_key(serving: Serving) -> None:
    for path in SERVED:
        r = preflight(serving, path,
                      request_headers="authorization, content-type, x-stainless-os, x-evil")
        assert r.status_code == 204, (path, r.text)
        assert r.content == b""
        assert r.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert set(r.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {
            "GET", "POST"}
        allowed = {h.strip().lower()
                   for h in r.headers["access-control-allow-headers"].split(",")}
        # The official JS client's own headers are allowed, arbitrary ones are not.
        assert allowed == {"authorization", "content-type", "x-stainless-os"}
        assert "Origin" in r.headers["vary"]
        assert int(r.headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in r.headers


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_preflight_from_another_origin_gets_no_cors_headers(serving: Serving) -> None:
    r = preflight(serving, "/v1/chat/completions", origin="https://evil.example.test")
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert cors_headers(r) == {}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_only_the_served_routes_answer_preflights(serving: Serving) -> None:
    for path in ("/tokenize", "/v1/score", "/v1/models/tiny", "/healthz", "/", "/docs"):
        r = preflight(serving, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", path
    # Not a preflight (no Access-Control-Request-Method, or no Origin): the 404 of any
    # unknown route (readable by the allowed origin, like every answer it gets).
    r = preflight(serving, "/v1/chat/completions", method=None)
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == CORS_ORIGIN
    r = preflight(serving, "/v1/chat/completions", origin=None)
    assert r.status_code == 404 and cors_headers(r) == {}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_responses_to_an_allowed_origin_carry_allow_origin(serving: Serving, key: Any) -> None:
    c = openai.OpenAI(base_url=serving.v1, api_key=key.key, max_retries=0, timeout=120,
                      default_headers={"Origin": CORS_ORIGIN})
    raw = c.chat.completions.with_raw_response.create(model="tiny", messages=CHAT, max_tokens=2)
    assert raw.headers["access-control-allow-origin"] == CORS_ORIGIN
    exposed = raw.headers["access-control-expose-headers"].lower()
    assert "x-inventiv-request-id" in exposed and "retry-after" in exposed
    assert raw.parse().choices
    with c.chat.completions.with_streaming_response.create(
            model="tiny", messages=CHAT, max_tokens=3, stream=True) as stream:
        assert stream.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert any(line.startswith("data: [DONE]") for line in stream.iter_lines())
    # Errors too, or the browser hides them from the page: 401 (no key) and 404 (model).
    r = httpx.post(serving.v1 + "/chat/completions", json={"model": "tiny", "messages": CHAT},
                   headers={"Origin": CORS_ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == CORS_ORIGIN
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="gpt-9", messages=CHAT)
    assert info.value.response.headers["access-control-allow-origin"] == CORS_ORIGIN


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_cors_headers_for_other_or_missing_origins(serving: Serving, key: Any) -> None:
    for extra in ({"Origin": "https://evil.example.test"}, {}):
        r = httpx.get(serving.v1 + "/models", timeout=30,
                      headers={"Authorization": f"Bearer {key.key}", **extra})
        assert r.status_code == 200 and cors_headers(r) == {}, extra


# ---------------------------------------------------------------- the middleware alone

APP_ORIGIN = "https://app.example.com"


async def stock_app(scope: Any, receive: Any, send: Any) -> None:
    """What Ray Serve LLM's app answers: with its allow-every-origin CORS headers."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"),
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-credentials", b"true")]})
    await send({"type": "http.response.body", "body": b"{}"})


def middleware(origins: list[str]) -> CorsMiddleware:
    return CorsMiddleware(stock_app, cors=Cors(origins), paths=SERVED)


def test_middleware_answers_preflights_of_allowed_origins_only() -> None:
    app = middleware([APP_ORIGIN + "/"])  # a trailing slash is the same origin
    ok = call(app, "OPTIONS", "/v1/chat/completions", headers={
        "origin": APP_ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, x-stainless-os, x-evil"})
    assert ok.status == 204
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
    # The JS client's own headers are allowed, others are not.
    assert ok.headers["access-control-allow-headers"] == (
        "Authorization, Content-Type, x-stainless-os")
    other = call(app, "OPTIONS", "/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert other.status == 403 and cors_headers(other) == {}
    # Not a served route: passed on (the gate answers its 404).
    passed = call(app, "OPTIONS", "/tokenize", headers={
        "origin": APP_ORIGIN, "access-control-request-method": "POST"})
    assert passed.status == 200


def test_middleware_replaces_the_stock_allow_everything_headers() -> None:
    app = middleware([APP_ORIGIN])
    allowed = call(app, "POST", "/v1/completions", headers={"origin": APP_ORIGIN})
    assert cors_headers(allowed) == {
        "access-control-allow-origin": APP_ORIGIN,
        "access-control-expose-headers": "x-inventiv-request-id, retry-after"}
    assert allowed.headers["vary"] == "Origin"
    other = call(app, "POST", "/v1/completions", headers={"origin": "https://evil.example"})
    assert cors_headers(other) == {}
    # CORS off: still none of the stock headers for a browser.
    off = call(middleware([]), "POST", "/v1/completions", headers={"origin": APP_ORIGIN})
    assert cors_headers(off) == {}
    # Not from a browser: the answer is left alone.
    plain = call(app, "POST", "/v1/completions")
    assert plain.headers["access-control-allow-origin"] == "*"


def test_middleware_with_any_origin() -> None:
    app = middleware(["*"])
    answer = call(app, "GET", "/v1/models", headers={"origin": "https://anything.example"})
    assert answer.headers["access-control-allow-origin"] == "https://anything.example"
