"""A replica's start for a gated Hugging Face model, against the real control API (stored
secret, deployment, progress route) and the fake Hub: the token reaches the Hub and nothing
else, progress shows per node in ``GET /api/deployments/{name}``, a bad token fails the
deployment with a clear code, and Ray Serve LLM's callback points the engine at the local copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_api.settings import Settings
from core.models import Deployment
from core.models_weights import WeightDownload
from core.spec import parse_spec
from serve_apps.builder import llm_config_dict
from serve_apps.options import IngressOptions
from serve_apps.weights import (
    WeightsCache,
    WeightsError,
    WeightsPlan,
    prepare_weights,
    release_leases,
)
from tests.client.conftest import ServerThread, free_port
from tests.conftest import ADMIN_PASSWORD
from tests.weights.fake_hub import FakeHub

TOKEN = "hf_good-token-value-never-logged"
ENV_VALUE = "env-secret-value"
SPEC = """
version: 1
deployments:
  - name: gated-tiny
    model: {name: gated-tiny, source: "hf:org/gated", hf_token: {secret: hf-token}}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    env: {API_KEY: {secret: env-token}}
"""


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    files = tmp_path_factory.mktemp("gated")
    (files / "config.json").write_text('{"model_type": "llama"}\n')
    (files / "model.safetensors").write_bytes(os.urandom(200_000))
    with FakeHub(repos={"org/gated": {"files_dir": files, "gated": True,
                                      "tokens": {TOKEN}}}) as fake:
        yield fake


@pytest.fixture
def plane(db: sessionmaker[Session], settings: Settings, hub: FakeHub, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the control API may resolve revisions too
    server = ServerThread(settings, free_port()).start()
    try:
        url = server.url
        r = httpx.post(f"{url}/api/auth/login",
                       json={"username": "admin", "password": ADMIN_PASSWORD})
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        for name, value in (("hf-token", TOKEN), ("env-token", ENV_VALUE)):
            r = httpx.put(f"{url}/api/secrets/{name}", headers=admin, json={"value": value})
            assert r.status_code in (200, 201), r.text
        spec = parse_spec(SPEC)
        r = httpx.post(f"{url}/api/deployments", headers=admin,
                       json={"spec": spec.model_dump(mode="json")})
        assert r.status_code in (200, 201), r.text
        r = httpx.post(f"{url}/api/service-tokens", headers=admin,
                       json={"name": "replica", "component": "ingress"})
        token_file = tmp_path / "service_token"
        token_file.write_text(r.json()["token"])
        options = IngressOptions(control_api_url=url, service_token_file=str(token_file),
                                 spool_dir=str(tmp_path / "spool"))
        yield {"url": url, "admin": admin, "options": options, "db": db,
               "dep": spec.deployments[0]}
    finally:
        release_leases()
        server.stop()


def _plan(plane: dict[str, Any]) -> WeightsPlan:
    cfg = llm_config_dict(plane["dep"], resolve=lambda s: s, options=plane["options"])
    return WeightsPlan.model_validate(cfg["callback_config"]["callback_kwargs"]["plan"])


def _rows(plane: dict[str, Any]) -> list[WeightDownload]:
    with plane["db"]() as s:
        rows = list(s.scalars(select(WeightDownload)))
        s.expunge_all()
        return rows


def test_a_replica_downloads_a_gated_model_and_reports_it(plane: dict[str, Any], hub: FakeHub,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    path = prepare_weights(_plan(plane), WeightsCache(tmp_path / "cache", min_free_bytes=0))
    assert path is not None and (path / "model.safetensors").stat().st_size == 200_000
    assert os.environ["API_KEY"] == ENV_VALUE  # the env secret, for the engine's processes
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the engine reads the local copy only
    assert {t for _, _, t in hub.requests} == {TOKEN}
    [row] = _rows(plane)
    assert (row.state, row.bytes_done, row.bytes_total, row.revision) == (
        "ready", row.bytes_total, row.bytes_total, hub.commit("org/gated"))
    shown = httpx.get(f"{plane['url']}/api/deployments/gated-tiny", headers=plane["admin"])
    assert TOKEN not in shown.text and ENV_VALUE not in shown.text
    assert TOKEN not in caplog.text


def test_a_bad_token_fails_the_deployment_with_a_clear_code(plane: dict[str, Any],
                                                            hub: FakeHub, tmp_path: Path
                                                            ) -> None:
    hub.repos["org/gated"].tokens = {"hf_someone-else"}
    with pytest.raises(WeightsError) as err:
        prepare_weights(_plan(plane), WeightsCache(tmp_path / "cache", min_free_bytes=0))
    assert err.value.code == "hf_gated"
    [row] = _rows(plane)
    assert (row.state, row.error_code) == ("failed", "hf_gated")
    with plane["db"]() as s:
        dep = s.scalar(select(Deployment).where(Deployment.name == "gated-tiny"))
        assert dep is not None and dep.status == "failed"
        assert "hf_gated" in (dep.status_message or "") and TOKEN not in (
            dep.status_message or "")


def test_a_missing_secret_fails_before_any_download(plane: dict[str, Any], hub: FakeHub,
                                                    tmp_path: Path) -> None:
    r = httpx.delete(f"{plane['url']}/api/secrets/hf-token", headers=plane["admin"])
    if r.status_code == 409:  # in use by the stored deployment: the refusal is the point
        plan = _plan(plane).model_copy(update={"hf_token_secret": "not-stored"})
    else:
        plan = _plan(plane)
    with pytest.raises(WeightsError) as err:
        prepare_weights(plan, WeightsCache(tmp_path / "cache", min_free_bytes=0))
    assert err.value.code.startswith("secrets_")
    assert not hub.gets
    [row] = _rows(plane)
    assert row.state == "failed" and row.error_code == err.value.code


def test_the_ray_callback_points_the_engine_at_the_local_copy(plane: dict[str, Any],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    pytest.importorskip("vllm")
    import asyncio

    from ray.serve.llm import LLMConfig

    from serve_apps.weights_replica import WeightsCallback

    monkeypatch.delenv("API_KEY", raising=False)
    monkeypatch.setenv("INVENTIV_WEIGHTS_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.setenv("INVENTIV_WEIGHTS_MIN_FREE_BYTES", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cfg = llm_config_dict(plane["dep"], resolve=lambda s: s, options=plane["options"])
    config = LLMConfig(**cfg)
    callback = WeightsCallback(llm_config=config, **config.callback_config.callback_kwargs)
    asyncio.run(callback.on_before_node_init())
    local = Path(config.get_engine_config().actual_hf_model_id)
    assert local.is_dir() and local.is_relative_to(tmp_path / "node-cache")
    assert (local / "config.json").is_file()
    assert callback.ctx.run_init_node is False
