"""The deployment YAML: parsing, errors naming field and line, the published JSON schema, and
the mapping to Ray Serve LLM's LLMConfig (GPU and CPU through the same code)."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from core.spec import (
    SCHEMA_PATH,
    DeploymentFile,
    SpecError,
    load_spec_file,
    parse_spec,
    render_json_schema,
)
from serve_apps.builder import llm_config_dict
from tests.serve_apps.conftest import REPO

MINIMAL = textwrap.dedent("""\
    version: 1
    deployments:
      - name: chat
        model:
          name: tiny
          source: /models/tiny
        engine:
          max_model_len: 512
        limits:
          max_tokens: 128
    """)


def issues(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return [(i.field, i.line, i.message) for i in info.value.issues]


def test_minimal_spec_gets_explicit_autoscaling_defaults() -> None:
    spec = parse_spec(MINIMAL)
    dep = spec.deployments[0]
    assert dep.model.task == "chat"
    assert dep.autoscaling.target_ongoing_requests == 8
    assert (dep.autoscaling.min_replicas, dep.autoscaling.max_replicas) == (1, 1)
    assert dep.placement.accelerator_type is None


def test_repo_local_yaml_is_valid() -> None:
    spec = load_spec_file(REPO / "configs" / "deployments" / "local.yaml")
    assert {d.model.task for d in spec.deployments} == {"chat", "embed"}
    for dep in spec.deployments:
        assert dep.placement.accelerator_type is None
        assert dep.placement.resources == {"local_gpu_slot": 1}


def test_unknown_field_is_named_with_its_line() -> None:
    text = MINIMAL.replace("      source: /models/tiny\n",
                           "      source: /models/tiny\n      sorce: typo\n")
    assert issues(text) == [("deployments[0].model.sorce", 7, "unknown field")]


def test_wrong_value_is_named_with_its_line() -> None:
    text = MINIMAL.replace("max_tokens: 128", "max_tokens: 0")
    [(field, line, message)] = issues(text)
    assert (field, line) == ("deployments[0].limits.max_tokens", 10)
    assert "greater than or equal to 1" in message


def test_missing_field_points_at_its_parent() -> None:
    text = MINIMAL.replace("    engine:\n      max_model_len: 512\n", "")
    [(field, line, message)] = issues(text)
    assert field == "deployments[0].engine"
    assert line == 3  # the deployment's first line
    assert message == "Field required"


def test_cross_field_rules() -> None:
    too_long = MINIMAL.replace("max_tokens: 128", "max_tokens: 512")
    [(field, _, message)] = issues(too_long)
    assert field == "deployments[0]"
    assert "must be below engine.max_model_len" in message
    bad_replicas = MINIMAL + "    autoscaling: {min_replicas: 3, max_replicas: 2}\n"
    [(field, line, message)] = issues(bad_replicas)
    assert field == "deployments[0].autoscaling" and line == 11
    assert "min_replicas must be <= max_replicas" in message
    reserved = MINIMAL + "    placement: {resources: {GPU: 1}}\n"
    [(field, _, message)] = issues(reserved)
    assert field == "deployments[0].placement" and "custom resources" in message


def test_duplicates_and_yaml_syntax() -> None:
    dup = MINIMAL + textwrap.indent(MINIMAL.split("deployments:\n", 1)[1], "")
    [(_, _, message)] = issues(dup)
    assert "duplicate deployment name 'chat'" in message
    [(field, line, message)] = issues("deployments: [\n  {name: x,\n")
    assert field == "" and line is not None and message.startswith("invalid YAML")
    [(_, line, message)] = issues("- just a list\n")
    assert line == 1 and "mapping" in message


def test_extra_engine_args_cannot_shadow_typed_ones() -> None:
    text = MINIMAL.replace("max_model_len: 512",
                           "max_model_len: 512\n      extra_args: {dtype: half}")
    [(field, _, message)] = issues(text)
    assert field == "deployments[0].engine" and "dtype" in message


def test_published_json_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_json_schema(), (
        "regenerate with: python -m core.spec --schema")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False


def _dep(extra: str = "") -> DeploymentFile:
    return parse_spec(MINIMAL + extra)


def test_cpu_placement_uses_a_custom_resource_bundle_not_an_accelerator_type() -> None:
    spec = _dep("    placement: {cpus: 1, resources: {local_gpu_slot: 1}}\n")
    cfg = llm_config_dict(spec.deployments[0], resolve=lambda s: s)
    assert cfg["accelerator_type"] is None
    assert cfg["accelerator_config"] == {"kind": "cpu"}
    assert cfg["placement_group_config"] == {"bundles": [{"CPU": 1, "local_gpu_slot": 1}]}
    assert cfg["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    auto = cfg["deployment_config"]["autoscaling_config"]
    assert auto["target_ongoing_requests"] == 8  # always explicit
    assert cfg["deployment_config"]["max_ongoing_requests"] == 32


def test_gpu_placement_maps_to_the_ray_accelerator_type() -> None:
    spec = _dep("    placement: {accelerator_type: L4}\n")
    cfg = llm_config_dict(spec.deployments[0], resolve=lambda s: s)
    assert cfg["accelerator_type"] == "L4"
    assert cfg["accelerator_config"] == {"kind": "gpu"}
    assert "placement_group_config" not in cfg  # Ray Serve LLM's own GPU bundles
    assert "VLLM_CPU_KVCACHE_SPACE" not in cfg["runtime_env"]["env_vars"]


def test_llm_configs_are_accepted_by_ray_serve_llm() -> None:
    pytest.importorskip("ray.serve.llm")
    from ray.serve.llm import LLMConfig

    for extra in ("    placement: {resources: {local_gpu_slot: 1}}\n",
                  "    placement: {accelerator_type: L4}\n"):
        spec = _dep(extra)
        config = LLMConfig(**llm_config_dict(spec.deployments[0], resolve=lambda s: s))
        assert config.model_id == "tiny"
        assert config.engine_kwargs["max_model_len"] == 512


def test_embedding_deployments_run_vllm_as_a_pooling_model() -> None:
    spec = _dep().model_copy(deep=True)
    spec.deployments[0].model.task = "embed"
    cfg = llm_config_dict(spec.deployments[0], resolve=lambda s: s)
    assert cfg["engine_kwargs"]["runner"] == "pooling"
    assert cfg["engine_kwargs"]["convert"] == "embed"


def test_local_run_offers_what_the_placements_ask_for() -> None:
    from serve_apps.run import local_resources, main

    spec = load_spec_file(REPO / "configs" / "deployments" / "local.yaml")
    cpus, resources = local_resources(spec)
    assert resources == {"local_gpu_slot": 2}
    assert cpus >= 4  # 2 x (1 + 0.1) + 1, rounded up: both engines fit on one node
    assert main(["-f", str(SCHEMA_PATH), "--service-token-file", "/dev/null"]) == 2


def test_autoscaling_policy_fields_default_and_validate() -> None:
    auto = _dep().deployments[0].autoscaling
    assert auto.policy == "inventiv"
    assert auto.downscale_to_zero_delay_s is None and auto.replica_start_s is None
    assert auto.cold_start_timeout_s == 300
    spec = _dep("    autoscaling: {policy: ray, min_replicas: 0, downscale_to_zero_delay_s: 0,\n"
                "                  cold_start_timeout_s: 60, replica_start_s: 95.5}\n")
    auto = spec.deployments[0].autoscaling
    assert (auto.policy, auto.downscale_to_zero_delay_s, auto.replica_start_s) == ("ray", 0, 95.5)
    for bad, needle in (("policy: fancy", "'inventiv' or 'ray'"),
                        ("cold_start_timeout_s: 0", "greater than 0"),
                        ("cold_start_timeout_s: 3601", "less than or equal to 3600"),
                        ("replica_start_s: 0", "greater than 0"),
                        ("downscale_to_zero_delay_s: -1", "greater than or equal to 0")):
        [(field, line, message)] = issues(MINIMAL + f"    autoscaling: {{{bad}}}\n")
        assert field.startswith("deployments[0].autoscaling.") and line == 11, field
        assert needle in message, message


def test_accelerator_candidates_need_a_gpu_placement_and_are_unique() -> None:
    spec = _dep("    placement: {accelerator_type: L40S, accelerator_candidates: [L4, H100],\n"
                "                model_memory_gb: 20}\n")
    pl = spec.deployments[0].placement
    assert pl.accelerator_candidates == ["L4", "H100"] and pl.model_memory_gb == 20
    [(field, _, message)] = issues(MINIMAL + "    placement: {accelerator_candidates: [L4]}\n")
    assert field == "deployments[0].placement" and "needs a GPU placement" in message
    [(_, _, message)] = issues(
        MINIMAL + "    placement: {accelerator_type: L4, accelerator_candidates: [H100, H100]}\n")
    assert "repeats ['H100']" in message
    [(field, _, _)] = issues(
        MINIMAL + "    placement: {accelerator_type: L4, model_memory_gb: 0}\n")
    assert field == "deployments[0].placement.model_memory_gb"


def test_llm_config_plugs_the_selected_autoscaling_policy() -> None:
    from serve_apps.builder import AutoscalingOverrides

    dep = _dep("    autoscaling: {min_replicas: 0, max_replicas: 4, upscale_delay_s: 5}\n"
               ).deployments[0]
    auto = llm_config_dict(dep, resolve=lambda s: s, overrides=AutoscalingOverrides(
        replica_start_s=80, scale_up_cap=2))["deployment_config"]["autoscaling_config"]
    assert auto["policy"]["policy_function"] == "autoscaler.serve_policy:InventivPolicy"
    assert auto["policy"]["policy_kwargs"]["scale_up_cap"] == 2
    assert auto["policy"]["policy_kwargs"]["replica_start_s"] == 80
    assert auto["policy"]["policy_kwargs"]["upscale_delay_s"] == 5
    assert auto["upscale_delay_s"] == 0  # the policy applies the delays, not Serve on top
    ray_dep = _dep("    autoscaling: {policy: ray, upscale_delay_s: 5}\n").deployments[0]
    auto = llm_config_dict(ray_dep, resolve=lambda s: s)["deployment_config"][
        "autoscaling_config"]
    assert "policy" not in auto and auto["upscale_delay_s"] == 5
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        AutoscalingOverrides(scale_up_cap=-1)


def test_gpu_candidates_pick_the_cheapest_available_type_that_fits() -> None:
    from dataclasses import replace

    from autoscaler.nodetypes import offer_to_dict, seed_offers
    from serve_apps.builder import (
        PlacementError,
        app_builder,
        build_llm_configs,
        choose_accelerator,
        placement,
    )

    spec = _dep("    placement: {accelerator_type: H100, accelerator_candidates: [L40S, L4],\n"
                "                model_memory_gb: 30}\n")
    dep = spec.deployments[0]
    # The seed's prices: L4 0.75 (24 GB: too small), L40S 1.40, H100 2.73 EUR/h.
    assert choose_accelerator(dep) == "L40S"
    assert llm_config_dict(dep, resolve=lambda s: s)["accelerator_type"] == "L40S"
    # The live catalog says L40S is out of stock everywhere: H100.
    offers = [replace(o, availability="shortage") if o.gpu_model == "L40S" else o
              for o in seed_offers(provider="scaleway")]
    assert placement(dep, offers)["accelerator_type"] == "H100"
    # Nothing fits: a PlacementError naming the deployment, with the NoFit code.
    gone = [replace(o, blocked=True) for o in offers]
    try:
        choose_accelerator(dep, gone)
        raise AssertionError("expected PlacementError")
    except PlacementError as exc:
        assert exc.code == "unavailable" and "deployment 'chat'" in str(exc)
    # Without candidates, accelerator_type is used as written (no catalog lookup).
    plain = _dep("    placement: {accelerator_type: B200}\n").deployments[0]
    assert choose_accelerator(plain, []) == "B200"
    # The control API can pass the live catalog through the Serve app args.
    pytest.importorskip("ray.serve.llm")
    [config] = build_llm_configs(spec, resolve=lambda s: s, offers=offers)
    assert config.accelerator_type == "H100"
    with pytest.raises(PlacementError, match="deployment 'chat'"):
        app_builder({"spec": spec.model_dump(mode="json"), "options": {
            "control_api_url": "http://127.0.0.1:1", "service_token_file": "/dev/null",
            "spool_dir": "/tmp/x"}, "offers": [offer_to_dict(o) for o in gone],
            "autoscaling": {"chat": {"scale_up_cap": 1, "replica_start_s": 90}}})


def test_router_timeout_never_cuts_our_own_deadlines() -> None:
    from serve_apps.builder import router_timeout_s

    assert router_timeout_s(parse_spec(MINIMAL)) == 630  # 600 s request limit + margin
    cold = parse_spec(MINIMAL.replace("max_tokens: 128", "max_tokens: 128\n    autoscaling:\n"
                                      "      min_replicas: 0\n      cold_start_timeout_s: 900"))
    assert router_timeout_s(cold) == 900 + 600 + 30
    short = parse_spec(MINIMAL.replace("max_tokens: 128",
                                       "max_tokens: 128\n      request_timeout_s: 20"))
    assert router_timeout_s(short) == 600  # never below Ray's own default


def test_tool_parser_template_and_structured_outputs_reach_the_engine() -> None:
    pytest.importorskip("ray.serve.llm")
    from ray.serve.llm import LLMConfig
    from vllm.config import StructuredOutputsConfig

    local = load_spec_file(REPO / "configs" / "deployments" / "local.yaml")
    tiny = next(d for d in local.deployments if d.model.name == "tiny")
    config = llm_config_dict(tiny, resolve=lambda s: s)
    kwargs = config["engine_kwargs"]
    assert kwargs["structured_outputs_config"] == {"backend": "xgrammar",
                                                   "disable_any_whitespace": True}
    assert (kwargs["tool_call_parser"], kwargs["enable_auto_tool_choice"]) == ("pythonic", True)
    StructuredOutputsConfig(**kwargs["structured_outputs_config"])  # vLLM accepts it
    llm = LLMConfig(**config)
    # Ray Serve LLM splits vLLM's frontend flags from its engine arguments: both known.
    engine = llm.get_engine_config()
    assert engine.frontend_kwargs["tool_call_parser"] == "pythonic"
    assert engine.engine_kwargs["structured_outputs_config"]["disable_any_whitespace"] is True
    plain = _dep("")
    assert "tool_call_parser" not in llm_config_dict(plain.deployments[0])["engine_kwargs"]


def test_structured_outputs_and_tool_fields_validate() -> None:
    from pydantic import ValidationError

    from core.spec import DeploymentSpec

    def spec(**parts: Any) -> DeploymentSpec:
        base: dict[str, Any] = {"name": "chat", "model": {"name": "tiny", "source": "x"},
                                "engine": {"max_model_len": 512}, "limits": {"max_tokens": 10}}
        for key, value in parts.items():
            base[key] = {**base[key], **value}
        return DeploymentSpec.model_validate(base)

    assert spec().model.modalities == ["text"]
    assert spec(model={"modalities": ["text", "image"]}).model.modalities == ["text", "image"]
    for bad, match in [
        ({"engine": {"structured_outputs_config": {"disable_any_whitespace": True}}},
         "disable_any_whitespace needs backend"),
        ({"engine": {"extra_args": {"enable_auto_tool_choice": True}}},
         "enable_auto_tool_choice"),
        ({"engine": {"tool_call_parser": "bad parser"}}, "tool_call_parser"),
        ({"model": {"modalities": ["video"]}}, "modalities"),
        ({"limits": {"max_schema_depth": 0}}, "max_schema_depth"),
    ]:
        with pytest.raises(ValidationError, match=match):
            spec(**bad)
