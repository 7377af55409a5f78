"""What clients expect on every answer (#12, deliverable 4), read with the official ``openai``
client's ``with_raw_response`` on the real stack (the shared ``serving`` fixture): OpenAI's
rate-limit headers for a key with limits, 429s included; ``x-request-id`` equal to the usage
record's ``request_id``; and a spent budget that the client does not retry
(``x-should-retry: false``)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.serve_apps.conftest import Serving, require_modules

require_modules("openai", "vllm", "torch", "transformers")
import openai  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RESET = re.compile(r"\d+ms|\d+(\.\d+)?s|\d+m\d+s")  # OpenAI's durations: 250ms, 1.5s, 1m0s


def client(serving: Serving, key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving.v1, api_key=key, timeout=120,
                         **{"max_retries": 0, **kwargs})


def test_rate_limit_headers_count_the_current_request_and_ride_the_429(
        serving: Serving) -> None:
    k = serving.control.new_key(rpm_limit=3, tpm_limit=100_000)
    c = client(serving, k.key)
    remaining_requests, remaining_tokens, ids = [], [], []
    for i in range(3):  # the proxy spreads these over the ingress replicas
        raw = c.completions.with_raw_response.create(model="tiny", prompt=f"x{i}", max_tokens=2)
        assert raw.parse().choices
        h = raw.headers
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-limit-tokens"]) == (
            "3", "100000")
        assert RESET.fullmatch(h["x-ratelimit-reset-requests"]), h
        assert RESET.fullmatch(h["x-ratelimit-reset-tokens"]), h
        remaining_requests.append(int(h["x-ratelimit-remaining-requests"]))
        remaining_tokens.append(int(h["x-ratelimit-remaining-tokens"]))
        ids.append(h["x-request-id"])
    # Remaining already counts the request it answers: 3 - 1, 3 - 2, 3 - 3.
    assert remaining_requests == [2, 1, 0]
    assert 100_000 > remaining_tokens[0] > remaining_tokens[1] > remaining_tokens[2]
    with pytest.raises(openai.RateLimitError) as info:
        c.completions.with_raw_response.create(model="tiny", prompt="x", max_tokens=2)
    refused = info.value.response.headers
    assert info.value.code == "rate_limit_exceeded"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert refused["x-ratelimit-limit-requests"] == "3"
    ids.append(refused["x-request-id"])
    rows = serving.control.wait_usage(k.id, 4)
    # One request id per answer, the error's included: each one is its usage record's.
    assert sorted(r.request_id for r in rows) == sorted(ids)
    assert sorted(r.status for r in rows) == ["completed"] * 3 + ["rejected"]


def test_a_spent_budget_is_not_retried_by_the_openai_client(serving: Serving) -> None:
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: sent.append(str(r.url))]},
                        timeout=120)
    k = serving.control.new_key(monthly_budget_eur="0.01")
    # tiny-restricted costs 10000 EUR per 1M completion tokens: 50 tokens are 0.50 EUR.
    c = client(serving, k.key, max_retries=3, http_client=http)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.with_raw_response.create(
            model="tiny-restricted", messages=[{"role": "user", "content": "hi"}],
            max_tokens=50)
    assert (info.value.code, info.value.type) == ("budget_exceeded", "insufficient_quota")
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1, sent  # a 429 is retried by default; this one was not
    rows = serving.control.wait_usage(k.id, 1)
    assert [(r.request_id, r.status, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (info.value.response.headers["x-request-id"], "rejected", 0, 0)]
    http.close()
