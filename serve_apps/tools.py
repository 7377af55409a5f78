"""Tool calling, structured outputs and message content, checked on the raw JSON (part of
:mod:`serve_apps.limits`).

What agents send, bounded by the deployment's ``limits`` so that no request makes the engine
compile an unbounded grammar or the ingress hold an unbounded prompt:

- ``tools``: at most ``max_tools`` functions (``{"type": "function", "function": {"name",
  "description", "parameters", "strict"}}``), unique names, each ``parameters`` schema at most
  ``max_schema_bytes`` and ``max_schema_depth`` deep with ``enum``s of at most
  ``max_enum_values``, all definitions together at most ``max_tool_definition_bytes``;
- ``tool_choice``: ``none``, ``auto`` (only with the deployment's ``engine.tool_call_parser``;
  tools without a ``tool_choice`` mean ``auto``, as in vLLM), ``required`` or a named function
  of ``tools`` (these two are JSON-schema constrained, on any model);
- ``response_format``: ``text``, ``json_object`` or ``json_schema`` (``name``, ``schema``,
  ``strict``), the schema bounded as a tool's;
- messages: roles ``system``/``developer``/``user``/``assistant``/``tool``; assistant
  ``tool_calls`` (at most ``max_tool_calls_per_message``), ``tool`` messages with their
  ``tool_call_id``; content a string or at most ``max_content_parts`` parts: ``text`` always,
  ``image_url``/``input_audio`` only for models whose ``modalities`` list them, with inline
  ``data:`` URLs unless ``allow_remote_media_urls`` (no server-side fetch of arbitrary URLs).

Every refusal is a 400 whose ``param`` names the field (``tools[2].function.parameters``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from core.spec import LimitsSpec
from serve_apps import protocol

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
TOOL_FIELDS = frozenset({"type", "function"})
FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})
TOOL_CALL_FIELDS = frozenset({"id", "type", "function"})
CALL_FUNCTION_FIELDS = frozenset({"name", "arguments"})
JSON_SCHEMA_FIELDS = frozenset({"name", "description", "schema", "strict"})
# OpenAI's rule for function names.
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_DESCRIPTION_CHARS = 8192
MEDIA_PARTS = {"image_url": "image", "input_audio": "audio"}


def bad(message: str, param: str, code: str = "invalid_value") -> protocol.OpenAIError:
    return protocol.bad_request(message, param=param, code=code)


def _fields(obj: Any, allowed: frozenset[str], param: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise bad(f"`{param}` must be an object", param)
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise bad(f"Unsupported field(s) in `{param}`: {', '.join(unknown)}", param,
                  code="unsupported_parameter")
    return obj


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def check_schema(schema: Any, limits: LimitsSpec, param: str) -> None:
    """A JSON schema (an object), bounded in bytes, depth and enum sizes."""
    if not isinstance(schema, dict):
        raise bad(f"`{param}` must be a JSON schema object", param)
    size = _size(schema)
    if size > limits.max_schema_bytes:
        raise bad(f"`{param}` is {size} bytes; this model accepts schemas up to "
                  f"{limits.max_schema_bytes} bytes", param, code="schema_too_large")
    # Iterative walk: depth counts nested objects/arrays of the schema document.
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_schema_depth:
            raise bad(f"`{param}` is nested deeper than {limits.max_schema_depth} levels",
                      param, code="schema_too_deep")
        if isinstance(node, dict):
            enum = node.get("enum")
            if isinstance(enum, list) and len(enum) > limits.max_enum_values:
                raise bad(f"An `enum` in `{param}` has {len(enum)} values; at most "
                          f"{limits.max_enum_values}", param, code="enum_too_large")
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))


def check_tools(body: Mapping[str, Any], limits: LimitsSpec, *, has_parser: bool) -> None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` (see the module)."""
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("`tools` must be an array", "tools")
        if len(tools) > limits.max_tools:
            raise bad(f"Too many tools: {len(tools)} > {limits.max_tools}", "tools",
                      code="too_many_tools")
        total = _size(tools)
        if total > limits.max_tool_definition_bytes:
            raise bad(f"The tool definitions are {total} bytes; this model accepts up to "
                      f"{limits.max_tool_definition_bytes}", "tools",
                      code="tool_definitions_too_large")
        for i, tool in enumerate(tools):
            names.append(_check_tool(tool, limits, f"tools[{i}]"))
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise bad(f"Duplicate tool name(s): {', '.join(dup)}", "tools")
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto" if names else None  # vLLM's default when tools are given
        explicit = False
    else:
        explicit = True
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad("`tool_choice` must be none, auto, required or a named function",
                      "tool_choice")
        if choice != "none" and not names:
            raise bad("`tool_choice` needs `tools`", "tool_choice")
        if choice == "auto" and not has_parser:
            raise bad(
                ("`tool_choice: auto`" if explicit else "`tools` without `tool_choice` "
                 "(which means auto)") + " needs a tool parser, and this model has none "
                "configured (engine.tool_call_parser): use `tool_choice: \"required\"` or a "
                "named function", "tool_choice", code="unsupported_value")
        return
    _fields(choice, TOOL_FIELDS, "tool_choice")
    if choice.get("type") != "function":
        raise bad("`tool_choice.type` must be `function`", "tool_choice")
    function = _fields(choice.get("function"), frozenset({"name"}), "tool_choice.function")
    if function.get("name") not in names:
        raise bad(f"`tool_choice.function.name` ({function.get('name')!r}) is not one of "
                  "`tools`", "tool_choice")


def _check_tool(tool: Any, limits: LimitsSpec, param: str) -> str:
    _fields(tool, TOOL_FIELDS, param)
    if tool.get("type") != "function":
        raise bad(f"`{param}.type` must be `function`", f"{param}.type")
    function = _fields(tool.get("function"), FUNCTION_FIELDS, f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise bad(f"`{param}.function.name` must be 1-64 letters, digits, _ or -",
                  f"{param}.function.name")
    description = function.get("description")
    if description is not None and (not isinstance(description, str)
                                    or len(description) > MAX_DESCRIPTION_CHARS):
        raise bad(f"`{param}.function.description` must be a string of at most "
                  f"{MAX_DESCRIPTION_CHARS} characters", f"{param}.function.description")
    if function.get("parameters") is not None:
        check_schema(function["parameters"], limits, f"{param}.function.parameters")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad(f"`{param}.function.strict` must be a boolean", f"{param}.function.strict")
    return name


def check_response_format(value: Any, limits: LimitsSpec) -> None:
    """``text``, ``json_object`` or ``json_schema`` (bounded); other types are refused."""
    if value is None:
        return
    fmt = _fields(value, frozenset({"type", "json_schema"}), "response_format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        if "json_schema" in fmt:
            raise bad("`response_format.json_schema` is only for type json_schema",
                      "response_format")
        return
    if kind != "json_schema":
        raise bad("`response_format.type` must be text, json_object or json_schema",
                  "response_format.type")
    spec = _fields(fmt.get("json_schema"), JSON_SCHEMA_FIELDS, "response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise bad("`response_format.json_schema.name` must be 1-64 letters, digits, _ or -",
                  "response_format.json_schema.name")
    if "schema" not in spec:
        raise bad("`response_format.json_schema.schema` is required",
                  "response_format.json_schema.schema")
    check_schema(spec["schema"], limits, "response_format.json_schema.schema")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad("`response_format.json_schema.strict` must be a boolean",
                  "response_format.json_schema.strict")


def check_message(i: int, msg: Any, limits: LimitsSpec, modalities: Sequence[str]) -> None:
    """One chat message: role, fields, content parts, tool calls, tool results."""
    param = "messages"
    if not isinstance(msg, dict):
        raise bad(f"messages[{i}] must be an object", param)
    role = msg.get("role")
    if role not in ROLES:
        raise bad(f"messages[{i}].role must be one of {sorted(ROLES)}", param)
    extra = sorted(set(msg) - MESSAGE_FIELDS[role])
    if extra:
        raise bad(f"Unsupported field(s) in messages[{i}] ({role}): {', '.join(extra)}",
                  param, code="unsupported_parameter")
    content = msg.get("content")
    calls = msg.get("tool_calls")
    if role == "assistant" and calls is not None:
        _check_tool_calls(i, calls, limits)
        if content is not None:
            _check_content(i, content, limits, modalities, role)
    else:
        if content is None:
            raise bad(f"messages[{i}].content is required", param)
        _check_content(i, content, limits, modalities, role)
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not TOOL_CALL_ID.match(call_id):
            raise bad(f"messages[{i}].tool_call_id must be the id of a tool call "
                      "(1-128 letters, digits, _ . : -)", param)


def _check_tool_calls(i: int, calls: Any, limits: LimitsSpec) -> None:
    param = "messages"
    if not isinstance(calls, list) or not calls:
        raise bad(f"messages[{i}].tool_calls must be a non-empty array", param)
    if len(calls) > limits.max_tool_calls_per_message:
        raise bad(f"messages[{i}] has {len(calls)} tool calls; at most "
                  f"{limits.max_tool_calls_per_message}", param)
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        _fields(call, TOOL_CALL_FIELDS, where)
        if not isinstance(call.get("id"), str) or not TOOL_CALL_ID.match(call["id"]):
            raise bad(f"{where}.id must be 1-128 letters, digits, _ . : -", param)
        if call.get("type", "function") != "function":
            raise bad(f"{where}.type must be `function`", param)
        function = _fields(call.get("function"), CALL_FUNCTION_FIELDS, f"{where}.function")
        if not isinstance(function.get("name"), str) or not FUNCTION_NAME.match(
                function["name"]):
            raise bad(f"{where}.function.name must be 1-64 letters, digits, _ or -", param)
        if not isinstance(function.get("arguments"), str):
            raise bad(f"{where}.function.arguments must be a string (JSON)", param)


def _check_content(i: int, content: Any, limits: LimitsSpec, modalities: Sequence[str],
                   role: str) -> None:
    param = "messages"
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad(f"messages[{i}].content must be a string or an array of parts", param)
    if len(content) > limits.max_content_parts:
        raise bad(f"messages[{i}] has {len(content)} content parts; at most "
                  f"{limits.max_content_parts}", param)
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise bad(f"{where} must be an object", param)
        kind = part.get("type")
        if kind == "text":
            _fields(part, frozenset({"type", "text"}), where)
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}.text must be a string", param)
            continue
        modality = MEDIA_PARTS.get(kind) if isinstance(kind, str) else None
        if modality is None:
            raise bad(f"{where}.type {kind!r} is not supported (text, image_url, input_audio)",
                      param, code="unsupported_parameter")
        if role != "user":
            raise bad(f"{where}: {kind} parts are only allowed in user messages", param)
        if modality not in modalities:
            raise bad(f"{where}: this model does not accept {modality} input", param,
                      code="unsupported_content")
        if kind == "image_url":
            _fields(part, frozenset({"type", "image_url"}), where)
            image = _fields(part.get("image_url"), frozenset({"url", "detail"}),
                            f"{where}.image_url")
            _check_url(image.get("url"), limits, f"{where}.image_url.url")
        else:
            _fields(part, frozenset({"type", "input_audio"}), where)
            audio = _fields(part.get("input_audio"), frozenset({"data", "format"}),
                            f"{where}.input_audio")
            if not isinstance(audio.get("data"), str) or audio.get("format") not in (
                    "wav", "mp3"):
                raise bad(f"{where}.input_audio needs base64 `data` and `format` wav or mp3",
                          param)


def _check_url(url: Any, limits: LimitsSpec, where: str) -> None:
    if not isinstance(url, str):
        raise bad(f"{where} must be a string", "messages")
    if url.startswith("data:"):
        return
    if url.startswith(("https://", "http://")):
        if limits.allow_remote_media_urls:
            return
        raise bad(f"{where}: remote URLs are not allowed for this model; send the media "
                  "inline as a data: URL", "messages", code="remote_url_not_allowed")
    raise bad(f"{where} must be a data: URL" + (
        " or an http(s) URL" if limits.allow_remote_media_urls else ""), "messages")
