"""Request limits on raw JSON bodies (pure: no engine needed)."""

from __future__ import annotations

from typing import Any

import pytest

from core.spec import LimitsSpec
from serve_apps import limits as lim
from serve_apps.protocol import OpenAIError

LIMITS = LimitsSpec(max_tokens=100, max_n=2, max_body_bytes=2048, max_messages=3,
                    max_top_logprobs=0, max_embedding_inputs=4)
MSGS = [{"role": "user", "content": "hi"}]


def refused(fn: Any, *args: Any, **kwargs: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        fn(*args, **kwargs)
    return info.value


def gen(body: dict[str, Any], *, chat: bool = True, prompt_tokens: int | None = 10,
        limits: LimitsSpec = LIMITS, max_model_len: int = 512) -> lim.Checked:
    return lim.check_generation(body, limits, chat=chat, max_model_len=max_model_len,
                                prompt_tokens=prompt_tokens)


def test_fields_are_allow_listed_per_endpoint() -> None:
    lim.check_fields({"model": "m", "messages": MSGS, "top_k": 5}, lim.CHAT_FIELDS)
    for field in ("chat_template_kwargs", "chat_template", "best_of", "use_beam_search",
                  "prompt_logprobs", "guided_json", "guided_regex", "logits_processors",
                  "structured_outputs", "echo"):
        err = refused(lim.check_fields, {"model": "m", field: None}, lim.CHAT_FIELDS)
        assert (err.status, err.code, err.param) == (400, "unsupported_parameter", field)
    refused(lim.check_fields, {"model": "m", "messages": MSGS}, lim.COMPLETION_FIELDS)
    refused(lim.check_fields, {"model": "m", "input": "x", "n": 2}, lim.EMBEDDING_FIELDS)


def test_n_and_max_tokens_bounds() -> None:
    assert gen({"n": 2, "max_tokens": 100}).max_tokens == 100
    assert refused(gen, {"n": 3}).param == "n"
    assert refused(gen, {"n": 0}).param == "n"
    assert refused(gen, {"max_tokens": 101}).param == "max_tokens"
    assert refused(gen, {"max_completion_tokens": 0}).param == "max_tokens"
    assert refused(gen, {"max_tokens": "10"}).param == "max_tokens"
    assert refused(gen, {"n": True}).param == "n"
    # max_completion_tokens wins over the deprecated max_tokens for chat.
    assert gen({"max_completion_tokens": 7, "max_tokens": 100}).max_tokens == 7


def test_default_completion_budget_is_bounded_by_limit_and_room() -> None:
    assert gen({}, prompt_tokens=10).max_tokens == 100
    assert gen({}, prompt_tokens=450).max_tokens == 62  # 512 - 450
    assert gen({}, prompt_tokens=None).max_tokens == 100


def test_prompt_plus_completion_must_fit_the_model() -> None:
    err = refused(gen, {"max_tokens": 100}, prompt_tokens=450)
    assert err.code == "context_length_exceeded" and err.param == "messages"
    assert refused(gen, {}, prompt_tokens=512).code == "context_length_exceeded"
    big = LimitsSpec(max_tokens=100, max_prompt_tokens=200)
    assert refused(gen, {}, prompt_tokens=201, limits=big).code == "context_length_exceeded"
    assert gen({"max_tokens": 62}, prompt_tokens=450).max_tokens == 62


def test_logprobs_need_the_deployment_to_allow_them() -> None:
    assert refused(gen, {"logprobs": True}).param == "logprobs"
    assert refused(gen, {"logprobs": 1}, chat=False).param == "logprobs"
    assert refused(gen, {"top_logprobs": 2}).param == "top_logprobs"
    allow = LimitsSpec(max_tokens=100, max_top_logprobs=2)
    gen({"logprobs": True, "top_logprobs": 2}, limits=allow)
    assert refused(gen, {"logprobs": True, "top_logprobs": 3}, limits=allow).param == "logprobs"
    gen({"logprobs": 2}, chat=False, limits=allow)


def test_stream_flags() -> None:
    checked = gen({"stream": True, "stream_options": {"include_usage": True}})
    assert (checked.stream, checked.client_include_usage, checked.client_continuous_usage) == \
        (True, True, False)
    assert refused(gen, {"stream_options": {"include_usage": True}}).param == "stream_options"
    assert refused(gen, {"stream": True, "stream_options": {"x": 1}}).param == "x"
    assert refused(gen, {"stream": True, "stream_options": []}).param == "stream_options"


def test_messages() -> None:
    lim.check_messages(MSGS * 3, LIMITS)
    assert "Too many messages" in refused(lim.check_messages, MSGS * 4, LIMITS).message
    refused(lim.check_messages, [], LIMITS)
    refused(lim.check_messages, "hi", LIMITS)
    refused(lim.check_messages, [{"role": "tool", "content": "x"}], LIMITS)
    err = refused(lim.check_messages, [{"role": "user", "content": "x", "tool_calls": []}],
                  LIMITS)
    assert err.code == "unsupported_parameter"


def test_body_size_is_413() -> None:
    lim.check_body_size(2048, LIMITS)
    err = refused(lim.check_body_size, 2049, LIMITS)
    assert (err.status, err.code) == (413, "request_too_large")


def test_prompts_and_embedding_inputs() -> None:
    assert lim.check_prompt("x", LIMITS) == ["x"]
    assert lim.check_prompt([1, 2, 3], LIMITS) == [[1, 2, 3]]
    assert lim.check_prompt(["a", [1, 2]], LIMITS) == ["a", [1, 2]]
    refused(lim.check_prompt, ["a"] * 4, LIMITS)
    refused(lim.check_prompt, [], LIMITS)
    refused(lim.check_prompt, [["a"]], LIMITS)
    assert lim.check_embedding_input(["a", "b"], LIMITS) == ["a", "b"]
    assert "Too many inputs" in refused(lim.check_embedding_input, ["a"] * 5, LIMITS).message
    refused(lim.check_embedding_input, 3, LIMITS)
