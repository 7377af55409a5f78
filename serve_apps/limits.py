"""Per-request limits, checked on the raw JSON body before anything is dispatched.

Fields are allow-listed per endpoint: OpenAI's standard parameters plus a few vLLM sampling
extras that are bounded by ``max_tokens`` anyway. Everything else is refused with a 400 naming
the field, e.g. ``chat_template_kwargs`` (lets a client change the prompt the template renders),
``chat_template``, ``best_of``/``use_beam_search`` (multiplies the work), ``prompt_logprobs``,
``echo``, guided decoding (``guided_*``, ``structured_outputs``, ``logits_processors``).

Tool calling and structured outputs (:mod:`serve_apps.tools`): ``tools``, ``tool_choice``,
``parallel_tool_calls``, ``response_format``, ``tool`` messages and assistant ``tool_calls``, each
bounded by the deployment's limits. Content parts: ``text`` always; images and audio only for
models that declare them, inline (``data:``) unless the deployment allows remote URLs.

Types are read as the OpenAI API defines them, never coerced: ``stream``, ``logprobs`` and the
other flags must be JSON booleans, ``n``/``max_tokens``/``top_logprobs`` JSON integers. vLLM's
pydantic models would coerce ``"true"``/``1`` to ``True`` and ``"5"`` to 5 (so a request the gate
read as "not streamed" would stream unmetered): such values are a 400 naming the field.

Prompt length: the exact count with the model's tokenizer (its chat template for chat), done by
the caller and passed in as ``prompt_tokens``; ``None`` means the tokenizer is not available in
the ingress, in which case the engine's own check (also a 400) applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.spec import LimitsSpec
from serve_apps import protocol, tools

_SAMPLING = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "stop", "seed", "user",
    "frequency_penalty", "presence_penalty", "logit_bias", "n", "max_tokens", "logprobs",
    # vLLM extras: bounded by max_tokens, no effect on what the template renders.
    "top_k", "min_p", "repetition_penalty", "ignore_eos", "min_tokens",
})
CHAT_FIELDS = _SAMPLING | {"messages", "max_completion_tokens", "top_logprobs", "tools",
                            "tool_choice", "parallel_tool_calls", "response_format"}
COMPLETION_FIELDS = _SAMPLING | {"prompt"}
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
STREAM_OPTION_FIELDS = frozenset({"include_usage", "continuous_usage_stats"})
# Flags the gate decides on (or that change what runs): JSON booleans only.
BOOL_FIELDS = ("stream", "ignore_eos", "parallel_tool_calls")


@dataclass(frozen=True)
class Checked:
    """What the checks decided: the completion budget to send upstream and the stream flags."""

    max_tokens: int
    n: int
    stream: bool
    client_include_usage: bool
    client_continuous_usage: bool


def _int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise protocol.bad_request(f"`{name}` must be an integer", param=name)
    return value


def _bool(body: Mapping[str, Any], name: str, param: str | None = None) -> bool:
    """A JSON boolean (absent or null: false); anything else (``"true"``, ``1``) is a 400."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise protocol.bad_request(f"`{param or name}` must be a boolean (true or false)",
                                   param=param or name)
    return value


def check_flags(body: Mapping[str, Any]) -> None:
    """The boolean flags are JSON booleans (see the module: no coercion)."""
    for name in BOOL_FIELDS:
        _bool(body, name)


def check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise protocol.bad_request(
            f"Unsupported parameter(s): {', '.join(unknown)}", param=unknown[0],
            code="unsupported_parameter")


def check_body_size(size: int, limits: LimitsSpec) -> None:
    if size > limits.max_body_bytes:
        raise protocol.too_large(limits.max_body_bytes)


def check_messages(messages: Any, limits: LimitsSpec,
                   modalities: Sequence[str] = ("text",)) -> None:
    if not isinstance(messages, list) or not messages:
        raise protocol.bad_request("`messages` must be a non-empty array", param="messages")
    if len(messages) > limits.max_messages:
        raise protocol.bad_request(
            f"Too many messages: {len(messages)} > {limits.max_messages}", param="messages")
    for i, msg in enumerate(messages):
        tools.check_message(i, msg, limits, modalities)


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False, False
    if not isinstance(opts, dict):
        raise protocol.bad_request("`stream_options` must be an object", param="stream_options")
    if not stream:
        raise protocol.bad_request("`stream_options` is only allowed with `stream: true`",
                                   param="stream_options")
    check_fields(opts, STREAM_OPTION_FIELDS)
    return (stream, _bool(opts, "include_usage", "stream_options.include_usage"),
            _bool(opts, "continuous_usage_stats", "stream_options.continuous_usage_stats"))


def check_generation(body: Mapping[str, Any], limits: LimitsSpec, *, chat: bool,
                     max_model_len: int, prompt_tokens: int | None) -> Checked:
    """``n``, ``max_tokens``, logprobs and prompt + completion length; returns the decisions."""
    check_flags(body)
    n = _int(body, "n")
    n = 1 if n is None else n
    if not 1 <= n <= limits.max_n:
        raise protocol.bad_request(f"`n` must be within 1..{limits.max_n}", param="n")
    legacy = _int(body, "max_tokens")
    _int(body, "min_tokens")
    requested = _int(body, "max_completion_tokens") if chat else None
    if requested is None:
        requested = legacy
    if requested is not None and not 1 <= requested <= limits.max_tokens:
        raise protocol.bad_request(f"`max_tokens` must be within 1..{limits.max_tokens}",
                                   param="max_tokens")
    _check_logprobs(body, limits, chat=chat)
    if prompt_tokens is not None:
        if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
            raise protocol.bad_request(
                f"The prompt has {prompt_tokens} tokens; this model accepts at most "
                f"{limits.max_prompt_tokens}.", param="messages" if chat else "prompt",
                code="context_length_exceeded")
        room = max_model_len - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            raise protocol.bad_request(
                f"This model's maximum context length is {max_model_len} tokens; the prompt "
                f"has {prompt_tokens} tokens and {requested or 1} completion tokens were "
                "requested.", param="messages" if chat else "prompt",
                code="context_length_exceeded")
        budget = requested if requested is not None else min(limits.max_tokens, room)
    else:
        budget = requested if requested is not None else limits.max_tokens
    stream, include_usage, continuous = _stream_flags(body)
    return Checked(max_tokens=budget, n=n, stream=stream, client_include_usage=include_usage,
                   client_continuous_usage=continuous)


def _check_logprobs(body: Mapping[str, Any], limits: LimitsSpec, *, chat: bool) -> None:
    if chat:
        wanted = _bool(body, "logprobs")
        top = _int(body, "top_logprobs") or 0
        if not wanted and top:
            raise protocol.bad_request("`top_logprobs` requires `logprobs: true`",
                                       param="top_logprobs")
    else:
        top = _int(body, "logprobs") or 0
        wanted = body.get("logprobs") is not None
    if wanted and limits.max_top_logprobs == 0:
        raise protocol.bad_request("`logprobs` is not enabled for this model", param="logprobs")
    if top > limits.max_top_logprobs or top < 0:
        raise protocol.bad_request(
            f"`top_logprobs` must be within 0..{limits.max_top_logprobs}", param="logprobs")


def check_prompt(prompt: Any, limits: LimitsSpec) -> list[Any]:
    """The prompts of a completion request (str, [str], [int] or [[int]]), bounded in number."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = list(prompt)
    else:
        raise protocol.bad_request("`prompt` must be a string or a non-empty array",
                                   param="prompt")
    if len(prompts) > limits.max_messages:
        raise protocol.bad_request(f"Too many prompts: {len(prompts)} > {limits.max_messages}",
                                   param="prompt")
    for p in prompts:
        ok = isinstance(p, str) or (isinstance(p, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in p))
        if not ok:
            raise protocol.bad_request("each prompt must be a string or an array of token ids",
                                       param="prompt")
    return prompts


def check_embedding_input(value: Any, limits: LimitsSpec) -> list[Any]:
    """The inputs of an embeddings request, bounded in number."""
    if isinstance(value, str):
        inputs: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        inputs = [value]
    elif isinstance(value, list) and value:
        inputs = list(value)
    else:
        raise protocol.bad_request("`input` must be a string or a non-empty array",
                                   param="input")
    if len(inputs) > limits.max_embedding_inputs:
        raise protocol.bad_request(
            f"Too many inputs: {len(inputs)} > {limits.max_embedding_inputs}", param="input")
    return inputs


def longest(counts: Sequence[int]) -> int:
    return max(counts) if counts else 0
