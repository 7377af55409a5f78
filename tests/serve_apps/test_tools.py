"""Tool calling, structured outputs and content parts on raw JSON (pure), and the coerced-value
table: every value vLLM's request models would coerce is refused with a 400 naming the field,
the canonical JSON form is read as such (issue 12: a coerced ``stream`` streamed unmetered)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.spec import LimitsSpec
from serve_apps import limits as lim
from serve_apps import tools
from serve_apps.protocol import OpenAIError

LIMITS = LimitsSpec(max_tokens=100, max_n=2, max_tools=3, max_schema_bytes=400,
                    max_schema_depth=4, max_enum_values=3, max_tool_definition_bytes=900,
                    max_tool_calls_per_message=2, max_content_parts=3)
USER = {"role": "user", "content": "hi"}


def fn(name: str = "get_weather", parameters: Any = None) -> dict[str, Any]:
    params = parameters if parameters is not None else {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    return {"type": "function", "function": {"name": name, "parameters": params}}


def refused(call: Any, *args: Any, **kwargs: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value


def check_tools(body: dict[str, Any], parser: bool = False) -> None:
    tools.check_tools(body, LIMITS, has_parser=parser)


# ---------------------------------------------------------------- coerced values


@pytest.mark.parametrize(("field", "canonical", "coerced"), [
    ("stream", True, ["true", 1, "1", "yes", "on"]),
    ("stream", False, ["false", 0, "0", "no"]),
    ("logprobs", False, ["true", 1, "false", 0]),
    ("ignore_eos", True, ["true", 1]),
    ("parallel_tool_calls", True, ["true", 1]),
    ("n", 2, ["2", 2.0, True]),
    ("max_tokens", 5, ["5", 5.0, True]),
    ("max_completion_tokens", 5, ["5", 5.0]),
    ("top_logprobs", 0, ["0", 0.0, False]),
    ("min_tokens", 1, ["1", 1.0]),
])
def test_coerced_values_are_refused_and_canonical_ones_read(field: str, canonical: Any,
                                                            coerced: list[Any]) -> None:
    checked = lim.check_generation({field: canonical}, LIMITS, chat=True, max_model_len=512,
                                   prompt_tokens=10)
    if field == "stream":
        assert checked.stream is canonical
    if field in ("n",):
        assert checked.n == canonical
    if field in ("max_tokens", "max_completion_tokens"):
        assert checked.max_tokens == canonical
    for value in coerced:
        err = refused(lim.check_generation, {field: value}, LIMITS, chat=True,
                      max_model_len=512, prompt_tokens=10)
        assert err.param == field, (field, value)


def test_stream_options_flags_and_completion_logprobs_are_canonical_only() -> None:
    for opt in ("include_usage", "continuous_usage_stats"):
        err = refused(lim.check_generation, {"stream": True, "stream_options": {opt: "true"}},
                      LIMITS, chat=True, max_model_len=512, prompt_tokens=1)
        assert err.param == f"stream_options.{opt}"
    ok = lim.check_generation({"stream": True, "stream_options": {"include_usage": True}},
                              LIMITS, chat=True, max_model_len=512, prompt_tokens=1)
    assert (ok.stream, ok.client_include_usage) == (True, True)
    # Completions: `logprobs` is an integer there, never a boolean.
    for value in (True, "1", 1.0):
        err = refused(lim.check_generation, {"logprobs": value}, LIMITS, chat=False,
                      max_model_len=512, prompt_tokens=1)
        assert err.param == "logprobs"


# ---------------------------------------------------------------- tools


def test_named_and_required_tool_choices_need_no_parser() -> None:
    check_tools({"tools": [fn()], "tool_choice": "required"})
    check_tools({"tools": [fn()], "tool_choice": {"type": "function",
                                                  "function": {"name": "get_weather"}}})
    check_tools({"tools": [fn()], "tool_choice": "none"})
    check_tools({"tools": [fn(), fn("other")], "tool_choice": "auto"}, parser=True)
    check_tools({"tools": [fn()]}, parser=True)  # auto, implied


def test_auto_without_a_parser_is_refused_naming_tool_choice() -> None:
    for body in ({"tools": [fn()]}, {"tools": [fn()], "tool_choice": "auto"}):
        err = refused(check_tools, body)
        assert err.param == "tool_choice" and "tool_call_parser" in err.message


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": [fn("a"), fn("b"), fn("c"), fn("d")]}, "tools"),
    ({"tools": [fn(), fn()], "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "retrieval"}], "tool_choice": "required"}, "tools[0].type"),
    ({"tools": [fn("bad name")], "tool_choice": "required"}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]},
     "tools[0].function"),
    ({"tools": [fn(parameters={"enum": [1, 2, 3, 4]})], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"tools": [fn(parameters={"a": {"b": {"c": {"d": {}}}}})], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"tools": [fn(parameters={"description": "x" * 500})], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"tools": [fn(parameters=[1])], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"tools": [fn()], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [fn()], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
])
def test_tool_bounds_are_400s_naming_the_param(body: dict[str, Any], param: str) -> None:
    assert refused(check_tools, body).param == param


def test_total_tool_definition_bytes_are_bounded() -> None:
    big = {"type": "object", "description": "d" * 300}
    body = {"tools": [fn("a", big), fn("b", big), fn("c", big)], "tool_choice": "required"}
    assert len(json.dumps(body["tools"])) > LIMITS.max_tool_definition_bytes
    err = refused(check_tools, body)
    assert (err.param, err.code) == ("tools", "tool_definitions_too_large")


# ---------------------------------------------------------------- response_format


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    tools.check_response_format({"type": "json_object"}, LIMITS)
    tools.check_response_format({"type": "text"}, LIMITS)
    tools.check_response_format({"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}}, LIMITS)
    for value, param in [
        ({"type": "structural_tag"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "t"}},
         "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "t", "schema": schema,
                                                 "strict": "yes"}},
         "response_format.json_schema.strict"),
        ({"type": "json_schema", "json_schema": {"name": "t", "schema": {
            "enum": list(range(9))}}}, "response_format.json_schema.schema"),
        ({"type": "json_object", "grammar": "x"}, "response_format"),
    ]:
        assert refused(tools.check_response_format, value, LIMITS).param == param


# ---------------------------------------------------------------- messages


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}


def test_tool_round_trip_messages_are_accepted() -> None:
    lim.check_messages([USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
                       LIMITS)


@pytest.mark.parametrize("message", [
    {"role": "tool", "content": "sunny"},  # no tool_call_id
    {"role": "tool", "tool_call_id": "a b", "content": "x"},
    {"role": "user", "content": "x", "tool_call_id": "c"},
    {"role": "assistant", "tool_calls": []},
    {"role": "assistant", "tool_calls": [CALL, CALL, CALL]},
    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]},
    {"role": "function", "content": "x"},
    {"role": "user", "content": None},
    {"role": "user", "content": [{"type": "text", "text": "a"}] * 4},
    {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:x"}}]},
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
])
def test_bad_messages_are_400s(message: dict[str, Any]) -> None:
    assert refused(lim.check_messages, [USER, message], LIMITS).param == "messages"


def test_media_parts_only_for_multimodal_models_and_inline_unless_allowed() -> None:
    image = {"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    lim.check_messages([image], LIMITS, ["text", "image"])
    err = refused(lim.check_messages, [image], LIMITS, ["text"])
    assert err.code == "unsupported_content"
    remote = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}
    assert refused(lim.check_messages, [remote], LIMITS, ["text", "image"]).code == \
        "remote_url_not_allowed"
    allow = LIMITS.model_copy(update={"allow_remote_media_urls": True})
    lim.check_messages([remote], allow, ["text", "image"])
    local_file = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}
    refused(lim.check_messages, [local_file], allow, ["text", "image"])
    audio = {"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
    lim.check_messages([audio], LIMITS, ["text", "audio"])
    refused(lim.check_messages, [audio], LIMITS, ["text", "image"])


def test_chat_fields_allow_tools_and_still_refuse_guided_decoding() -> None:
    lim.check_fields({"model": "m", "messages": [USER], "tools": [], "tool_choice": "none",
                      "parallel_tool_calls": True, "response_format": {"type": "text"}},
                     lim.CHAT_FIELDS)
    for field in ("guided_json", "guided_choice", "guided_grammar", "logits_processors",
                  "chat_template", "chat_template_kwargs", "structured_outputs"):
        err = refused(lim.check_fields, {"model": "m", field: 1}, lim.CHAT_FIELDS)
        assert err.code == "unsupported_parameter"
    refused(lim.check_fields, {"model": "m", "prompt": "x", "tools": []},
            lim.COMPLETION_FIELDS)
