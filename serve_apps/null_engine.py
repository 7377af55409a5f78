"""A deterministic, fast stand-in for vLLM inside Ray Serve LLM, for benchmarks and tests (not
part of the library: replicas import it from the checkout, which must be on their ``sys.path``:
a driver's working directory is, for the replicas of the Serve it starts; the laptop head puts
the checkout on ``PYTHONPATH``).

Ray Serve LLM's ``LLMServer`` builds its engine from ``RAYLLM_VLLM_ENGINE_CLS`` when that
environment variable names a class (``module.Class``), in place of its ``VLLMEngine``. Set it in
the replica's environment (a deployment's ``env:`` ends up in the LLMConfig's
``runtime_env.env_vars``)::

    env:
      RAYLLM_VLLM_ENGINE_CLS: serve_apps.null_engine.NullEngine
      INVENTIV_NULL_TOKEN_DELAY_S: "0.002"   # optional, per generated token (default 0)

Everything above the engine is the real stack (Serve proxy, ingress, LLMServer and its stream
batcher), so what a benchmark measures with this engine is the serving path itself, not CPU
inference. The engine answers chat and completions, streamed or not, exactly in vLLM 0.32's wire
format (the same pydantic models, serialised the same way, see
``vllm/entrypoints/openai/chat_completion/serving.py``):

- a stream is ``data: <json>\\n\\n`` events then ``data: [DONE]\\n\\n``; a chat stream starts with
  the ``{"role": "assistant", "content": ""}`` delta; one event per token per choice;
- ``stream_options.include_usage`` adds a final usage-only chunk (``choices: []``);
  ``continuous_usage_stats`` (only with ``include_usage``, as in vLLM) puts the running usage on
  every chunk;
- non-streamed answers are one ``ChatCompletionResponse`` / ``CompletionResponse`` with usage;
- prompt tokens are counted with the model's tokenizer (chat template for chat) when the model
  source is a local directory, else by whitespace; exactly ``max_tokens`` (or
  ``max_completion_tokens``) tokens are generated per choice, ``finish_reason: "length"``; with
  no budget, generation runs to the model length like vLLM (capped by ``max_model_len``);
- a prompt plus budget longer than ``max_model_len`` is a 400 ``ErrorResponse``, as in vLLM.

LoRA adapters go through Ray Serve LLM's multiplexing as with vLLM: ``LLMServer`` downloads the
adapter from the deployment's ``lora_config.dynamic_lora_loading_path`` (``s3://``, ``gs://``,
``abfss://``/``azure://``) to its disk cache, then calls :meth:`NullEngine.resolve_lora`, which
checks the folder holds a PEFT adapter (``adapter_config.json`` with its ``r`` and
``target_modules``, and ``adapter_model.safetensors`` or ``.bin``) and registers it under its id
(``<model>:<adapter>``); an answer's ``model`` is the id it was asked for (the adapter's), as with
vLLM. A ``<model>:<adapter>`` request for an adapter never resolved is a 404 ``ErrorResponse``, as
vLLM answers an unknown LoRA name. Embeddings and transcriptions are not implemented (an error
response says so).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
)
from vllm.entrypoints.serve.engine.protocol import UsageInfo

from core.ray_private import (
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionResponse,
    CompletionStreamResponse,
    ErrorInfo,
    ErrorResponse,
    LLMEngine,
)

TOKEN_DELAY_ENV = "INVENTIV_NULL_TOKEN_DELAY_S"  # noqa: S105 - a variable name
ENGINE_CLS_PATH = "serve_apps.null_engine.NullEngine"
# The text of token i is WORDS[i % len(WORDS)]: deterministic, and each piece is one token
# for a sentencepiece/BPE vocabulary, so a client re-tokenizing the output counts about right.
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
DEFAULT_MAX_MODEL_LEN = 2048
DONE = "data: [DONE]\n\n"
# vLLM stamps a fingerprint of its config on non-streamed answers and on a stream's last chunk.
SYSTEM_FINGERPRINT = "inventiv-null-engine"


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def _error(message: str, code: int = 400, type_: str = "BadRequestError",
           param: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code))


class NullEngine(LLMEngine):
    """``LLMEngine`` that generates fixed text instantly (or with a per-token delay)."""

    def __init__(self, llm_config: Any, *, token_delay_s: float | None = None,
                 tokenizer: Any = None) -> None:
        """``token_delay_s`` defaults to ``$INVENTIV_NULL_TOKEN_DELAY_S`` (0); ``tokenizer``
        to the model's own, loaded in :meth:`start` when its files are local."""
        self.llm_config = llm_config
        delay = token_delay_s
        if delay is None:
            delay = float(os.environ.get(TOKEN_DELAY_ENV) or 0)
        if delay < 0:
            raise ValueError(f"{TOKEN_DELAY_ENV} must be >= 0, got {delay}")
        self.token_delay_s = delay
        kwargs = getattr(llm_config, "engine_kwargs", None) or {}
        self.max_model_len = int(kwargs.get("max_model_len") or DEFAULT_MAX_MODEL_LEN)
        self.tokenizer = tokenizer
        self._running = False
        self.requests_served = 0
        # Resolved LoRA adapters: id (`<model>:<adapter>`) -> local folder.
        self.adapters: dict[str, str] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the tokenizer (off the event loop); idempotent like ``VLLMEngine.start``."""
        if self._running:
            return
        if self.tokenizer is None:
            self.tokenizer = await asyncio.to_thread(self._load_tokenizer)
        self._running = True

    def _load_tokenizer(self) -> Any:
        loading = getattr(self.llm_config, "model_loading_config", None)
        source = getattr(loading, "model_source", None)
        if not isinstance(source, str) or not Path(source).is_dir():
            return None
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except Exception:  # noqa: BLE001 - whitespace counting is the documented fallback
            return None

    async def check_health(self) -> None:
        """Healthy once started (the replica is restarted if this raises)."""
        if not self._running:
            raise RuntimeError("null engine not started")

    def routing_stats(self) -> dict[str, Any]:
        return {}

    async def resolve_lora(self, lora_model: Any) -> None:
        """Register an adapter Ray Serve LLM downloaded (a ``DiskMultiplexConfig``): idempotent
        like ``VLLMEngine.resolve_lora``; a folder that is no PEFT adapter raises ``ValueError``
        (vLLM's "Failed to load lora model"), which Serve answers as an error."""
        model_id = str(lora_model.model_id)
        if model_id in self.adapters:
            return
        folder = Path(str(lora_model.local_path))
        try:
            config = json.loads((folder / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"Failed to load lora model {model_id}: no readable "
                             f"adapter_config.json in {folder}") from exc
        weights = [n for n in ("adapter_model.safetensors", "adapter_model.bin")
                   if (folder / n).is_file()]
        if not isinstance(config, dict) or not isinstance(config.get("r"), int) \
                or config["r"] <= 0 or not config.get("target_modules") or not weights:
            raise ValueError(f"Failed to load lora model {model_id}: {folder} is not a PEFT "
                             "LoRA adapter (r, target_modules and adapter weights needed)")
        self.adapters[model_id] = str(folder)

    def _unknown_adapter(self, model: Any) -> ErrorResponse | None:
        """vLLM's answer to a LoRA id it has not loaded (multiplexed ids contain ``:``)."""
        if isinstance(model, str) and ":" in model and model not in self.adapters:
            return _error(f"The model `{model}` does not exist.", code=404,
                          type_="NotFoundError", param="model")
        return None

    async def reset_prefix_cache(self) -> None:
        return None

    # ------------------------------------------------------------ counting

    def count_chat_prompt(self, messages: list[Any]) -> int:
        """Prompt tokens of a chat request: the rendered template, as vLLM counts them."""
        if self.tokenizer is not None:
            try:
                ids = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                return len(ids)
            except Exception:  # noqa: BLE001, S110 - e.g. no template: fall back to words
                pass
        words = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                words += len(content.split())
        return max(1, words)

    def count_prompt(self, prompt: Any) -> list[int]:
        """Prompt tokens of each prompt of a completions request."""
        if isinstance(prompt, str):
            prompts: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompts = [prompt]
        else:
            prompts = list(prompt or [""])
        out = []
        for p in prompts:
            if not isinstance(p, str):
                out.append(len(p))
            elif self.tokenizer is not None:
                out.append(len(self.tokenizer(p)["input_ids"]))
            else:
                out.append(max(1, len(p.split())))
        return out

    def _budget(self, requested: int | None, prompt_tokens: int) -> int | ErrorResponse:
        if requested is None:
            return max(0, self.max_model_len - prompt_tokens)
        if prompt_tokens + requested > self.max_model_len:
            return _error(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + requested} tokens ({prompt_tokens} in the "
                f"messages, {requested} in the completion). Please reduce the length of the "
                "messages or completion.")
        return requested

    async def _tick(self) -> None:
        # Always yield to the loop, as a real engine's await on its output queue does.
        await asyncio.sleep(self.token_delay_s)

    @staticmethod
    def _usage_flags(request: Any) -> tuple[bool, bool]:
        # vLLM's should_include_usage: continuous stats only together with include_usage.
        opts = getattr(request, "stream_options", None)
        if not opts:
            return False, False
        include = bool(getattr(opts, "include_usage", False))
        return include, include and bool(getattr(opts, "continuous_usage_stats", False))

    # ------------------------------------------------------------ chat

    async def chat(self, request: Any, raw_request_info: Any = None  # type: ignore[override]
                   ) -> AsyncGenerator[Any, None]:
        """A chat completion: SSE strings when streaming, else one response object."""
        self.requests_served += 1
        unknown = self._unknown_adapter(request.model)
        if unknown is not None:
            yield unknown
            return
        prompt_tokens = self.count_chat_prompt(list(request.messages))
        # As vLLM's build_tok_params: max_completion_tokens first, the deprecated max_tokens else.
        requested = request.max_completion_tokens
        if requested is None:
            requested = request.max_tokens
        budget = self._budget(requested, prompt_tokens)
        if isinstance(budget, ErrorResponse):
            yield budget
            return
        n = request.n or 1
        request_id = f"chatcmpl-{request.request_id}"
        created = int(time.time())
        model = request.model
        if not request.stream:
            for _ in range(budget):
                await self._tick()
            text = "".join(WORDS[i % len(WORDS)] for i in range(budget))
            yield ChatCompletionResponse(
                id=request_id, created=created, model=model,
                choices=[ChatCompletionResponseChoice(
                    index=i, message=ChatMessage(role="assistant", content=text),
                    logprobs=None, finish_reason="length", stop_reason=None)
                    for i in range(n)],
                system_fingerprint=SYSTEM_FINGERPRINT,
                usage=UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=budget * n,
                                total_tokens=prompt_tokens + budget * n))
            return
        include_usage, continuous = self._usage_flags(request)
        for i in range(n):
            chunk = ChatCompletionStreamResponse(
                id=request_id, object="chat.completion.chunk", created=created,
                choices=[ChatCompletionResponseStreamChoice(
                    index=i, delta=DeltaMessage(role="assistant", content=""), logprobs=None,
                    finish_reason=None)],
                model=model, prompt_token_ids=None, prompt_text=None)
            if continuous:
                chunk.usage = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=0,
                                        total_tokens=prompt_tokens, completion_tokens_details=None)
            yield _sse(chunk.model_dump_json(exclude_unset=True))
        for t in range(budget):
            await self._tick()
            last = t == budget - 1
            for i in range(n):
                if last:
                    choice = ChatCompletionResponseStreamChoice(
                        index=i, delta=DeltaMessage(content=WORDS[t % len(WORDS)]),
                        logprobs=None, finish_reason="length", stop_reason=None,
                        token_ids=None)
                else:
                    choice = ChatCompletionResponseStreamChoice(
                        index=i, delta=DeltaMessage(content=WORDS[t % len(WORDS)]),
                        logprobs=None, finish_reason=None, token_ids=None)
                chunk = ChatCompletionStreamResponse(
                    id=request_id, object="chat.completion.chunk", created=created,
                    choices=[choice], model=model)
                if last and not include_usage:
                    chunk.system_fingerprint = SYSTEM_FINGERPRINT
                if continuous:
                    chunk.usage = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=t + 1,
                                            total_tokens=prompt_tokens + t + 1,
                                            completion_tokens_details=None)
                yield _sse(chunk.model_dump_json(exclude_unset=True))
        if include_usage:
            final = ChatCompletionStreamResponse(
                id=request_id, object="chat.completion.chunk", created=created, choices=[],
                model=model, usage=UsageInfo(prompt_tokens=prompt_tokens,
                                             completion_tokens=budget * n,
                                             total_tokens=prompt_tokens + budget * n),
                system_fingerprint=SYSTEM_FINGERPRINT)
            yield _sse(final.model_dump_json(exclude_unset=True, exclude_none=True))
        yield DONE

    # ------------------------------------------------------------ completions

    async def completions(self, request: Any, raw_request_info: Any = None  # type: ignore[override]
                          ) -> AsyncGenerator[Any, None]:
        """A text completion: SSE strings when streaming, else one response object."""
        self.requests_served += 1
        unknown = self._unknown_adapter(request.model)
        if unknown is not None:
            yield unknown
            return
        counts = self.count_prompt(request.prompt)
        budget_or_error = [self._budget(request.max_tokens, c) for c in counts]
        for b in budget_or_error:
            if isinstance(b, ErrorResponse):
                yield b
                return
        budgets = [int(b) for b in budget_or_error]  # type: ignore[arg-type]
        n = request.n or 1
        request_id = f"cmpl-{request.request_id}"
        created = int(time.time())
        model = request.model
        prompt_total = sum(counts)
        completion_total = sum(budgets) * n
        if not request.stream:
            for _ in range(max(budgets, default=0)):
                await self._tick()
            choices = []
            for p, budget in enumerate(budgets):
                text = "".join(WORDS[i % len(WORDS)] for i in range(budget))
                choices += [CompletionResponseChoice(index=p * n + i, text=text, logprobs=None,
                                                     finish_reason="length", stop_reason=None)
                            for i in range(n)]
            yield CompletionResponse(
                id=request_id, created=created, model=model, choices=choices,
                system_fingerprint=SYSTEM_FINGERPRINT,
                usage=UsageInfo(prompt_tokens=prompt_total, completion_tokens=completion_total,
                                total_tokens=prompt_total + completion_total))
            return
        include_usage, continuous = self._usage_flags(request)
        for t in range(max(budgets, default=0)):
            await self._tick()
            for p, budget in enumerate(budgets):
                if t >= budget:
                    continue
                for i in range(n):
                    chunk = CompletionStreamResponse(
                        id=request_id, object="text_completion", created=created, model=model,
                        choices=[CompletionResponseStreamChoice(
                            index=p * n + i, text=WORDS[t % len(WORDS)], logprobs=None,
                            finish_reason="length" if t == budget - 1 else None,
                            stop_reason=None, prompt_token_ids=None, token_ids=None)])
                    if t == budget - 1 and not include_usage:
                        chunk.system_fingerprint = SYSTEM_FINGERPRINT
                    if continuous:
                        chunk.usage = UsageInfo(prompt_tokens=counts[p], completion_tokens=t + 1,
                                                total_tokens=counts[p] + t + 1)
                    yield _sse(chunk.model_dump_json(exclude_unset=True))
        if include_usage:
            final = CompletionStreamResponse(
                id=request_id, object="text_completion", created=created, model=model,
                choices=[], usage=UsageInfo(prompt_tokens=prompt_total,
                                            completion_tokens=completion_total,
                                            total_tokens=prompt_total + completion_total),
                system_fingerprint=SYSTEM_FINGERPRINT)
            yield _sse(final.model_dump_json(exclude_unset=True, exclude_none=True))
        yield DONE

    # ------------------------------------------------------------ not implemented

    async def embeddings(self, request: Any, raw_request_info: Any = None  # type: ignore[override]
                         ) -> AsyncGenerator[Any, None]:
        """Not implemented: an OpenAI-shaped 400, as vLLM answers a task it does not serve."""
        yield _error("The null engine does not serve embeddings.")

    async def transcriptions(self, request: Any, raw_request_info: Any = None  # type: ignore[override]
                             ) -> AsyncGenerator[Any, None]:
        """Not implemented: an OpenAI-shaped 400."""
        yield _error("The null engine does not serve transcriptions.")
