"""The builder's side of model weights: which sources run offline, how a downloadable source
and referenced secrets reach the replica (names only, never values), and the bounded number of
replica starts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.spec import parse_spec
from serve_apps.builder import (
    MAX_REPLICA_START_TRIES,
    OFFLINE_ENV,
    WEIGHTS_CALLBACK,
    llm_config_dict,
)
from serve_apps.options import IngressOptions

OPTIONS = IngressOptions(control_api_url="http://control:8000",
                         service_token_file="/run/inventiv/token", spool_dir="/tmp/spool")
SPEC = """
version: 1
deployments:
  - name: builtin-chat
    model: {name: tiny, source: "builtin:tiny-llama"}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
  - name: gated
    model: {name: llama, source: "hf:meta-llama/Llama-3.1-8B-Instruct@main",
            hf_token: {secret: hf-token}}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    env: {PLAIN: literal, API_KEY: {secret: api-key}, HF_ENDPOINT: "http://hub.local"}
  - name: from-s3
    model: {name: tiny-s3, source: "s3://models/tiny/v1",
            s3: {endpoint_url: "https://s3.fr-par.scw.cloud", region: fr-par,
                 access_key_id: {secret: scw-key-id}, secret_access_key: {secret: scw-key}}}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
  - name: local-with-secret
    model: {name: local, source: "/models/local"}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    env: {API_KEY: {secret: api-key}}
"""


@pytest.fixture(scope="module")
def deps() -> dict[str, Any]:
    return {d.name: d for d in parse_spec(SPEC).deployments}


def test_only_offline_sources_run_offline(deps: dict[str, Any]) -> None:
    builtin = llm_config_dict(deps["builtin-chat"], resolve=lambda s: s, options=OPTIONS)
    for key, value in OFFLINE_ENV.items():
        assert builtin["runtime_env"]["env_vars"][key] == value
    assert "callback_config" not in builtin
    assert "max_constructor_retry_count" not in builtin["deployment_config"]
    for name in ("gated", "from-s3"):
        env = llm_config_dict(deps[name], resolve=lambda s: s, options=OPTIONS)[
            "runtime_env"]["env_vars"]
        assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env
        assert env["VLLM_NO_USAGE_STATS"] == "1"


def test_a_gated_hf_source_is_downloaded_by_the_replica_with_secret_names_only(
        deps: dict[str, Any]) -> None:
    cfg = llm_config_dict(deps["gated"], resolve=lambda s: s, options=OPTIONS)
    assert cfg["model_loading_config"] == {"model_id": "llama",
                                           "model_source": "meta-llama/Llama-3.1-8B-Instruct"}
    env = cfg["runtime_env"]["env_vars"]
    assert env["PLAIN"] == "literal" and env["HF_ENDPOINT"] == "http://hub.local"
    assert "API_KEY" not in env  # a secret: the replica sets it, the Serve config never holds it
    assert all(isinstance(v, str) for v in env.values())
    assert cfg["callback_config"]["callback_class"] == WEIGHTS_CALLBACK
    plan = cfg["callback_config"]["callback_kwargs"]["plan"]
    assert plan == {
        "deployment": "gated", "source": "hf:meta-llama/Llama-3.1-8B-Instruct@main",
        "control_api_url": "http://control:8000", "service_token_file": "/run/inventiv/token",
        "hf_token_secret": "hf-token", "s3": None, "env_secrets": {"API_KEY": "api-key"},
        "attempts": 3}
    assert cfg["deployment_config"]["max_constructor_retry_count"] == MAX_REPLICA_START_TRIES
    json.dumps(cfg)  # plain data all the way (it is pickled into the Serve app)


def test_an_s3_source_names_its_endpoint_and_key_secrets(deps: dict[str, Any]) -> None:
    cfg = llm_config_dict(deps["from-s3"], resolve=lambda s: s, options=OPTIONS)
    # No model_source: Ray would download an s3:// source itself, without our cache.
    assert cfg["model_loading_config"]["model_source"] is None
    plan = cfg["callback_config"]["callback_kwargs"]["plan"]
    assert plan["source"] == "s3://models/tiny/v1"
    assert plan["s3"] == {"endpoint_url": "https://s3.fr-par.scw.cloud", "region": "fr-par",
                          "access_key_id_secret": "scw-key-id",
                          "secret_access_key_secret": "scw-key"}


def test_a_local_source_with_a_secret_env_fetches_it_but_stays_offline(
        deps: dict[str, Any]) -> None:
    cfg = llm_config_dict(deps["local-with-secret"], resolve=lambda s: s, options=OPTIONS)
    assert cfg["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert cfg["model_loading_config"]["model_source"] == "/models/local"
    assert cfg["callback_config"]["callback_kwargs"]["plan"]["env_secrets"] == {
        "API_KEY": "api-key"}


def test_ray_serve_llm_accepts_the_configs_and_bounds_replica_starts(
        deps: dict[str, Any]) -> None:
    pytest.importorskip("vllm")
    from ray.serve.llm import LLMConfig

    from serve_apps.weights_replica import WeightsCallback

    for name in ("gated", "from-s3", "builtin-chat"):
        config = LLMConfig(**llm_config_dict(deps[name], resolve=lambda s: s, options=OPTIONS))
        if name == "builtin-chat":
            continue
        assert config.callback_config.callback_class == WEIGHTS_CALLBACK
        from ray.llm._internal.common.utils.import_utils import load_class

        assert load_class(WEIGHTS_CALLBACK) is WeightsCallback
        assert config.deployment_config["max_constructor_retry_count"] == 3
