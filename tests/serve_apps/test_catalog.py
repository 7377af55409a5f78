"""LoRA adapters as model ids (pure): ``<model>:<adapter>`` and unique bare names resolve to
their deployment, keys and orgs are scoped to them, usage records name them, and the model
objects list them. (Serving them needs Ray Serve LLM's multiplexing, which loads adapters from
an object store: ``lora_config.dynamic_lora_loading_path`` must be s3://, gs:// or azure.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from core.spec import DeploymentSpec
from serve_apps import protocol
from serve_apps.admission import Admission
from serve_apps.auth import Principal
from serve_apps.builder import llm_config_dict
from serve_apps.catalog import Catalog, Target, visible
from serve_apps.gate import RequestContext
from serve_apps.metrics import IngressMetrics
from serve_apps.validation import TokenCounter, Validation

ORG, OTHER = uuid.uuid4(), uuid.uuid4()


def dep(name: str, adapters: list[dict[str, Any]], **extra: Any) -> DeploymentSpec:
    return DeploymentSpec.model_validate({
        "name": name, "model": {"name": name, "source": "/nowhere", "adapters": adapters,
                                "lora_source": f"s3://bucket/{name}"},
        "engine": {"max_model_len": 512}, "limits": {"max_tokens": 64}, **extra})


DEPS = {d.model.name: d for d in (
    dep("tiny", [{"name": "sql"}, {"name": "poem", "allowed_orgs": [str(ORG)]},
                 {"name": "shared"}]),
    dep("other", [{"name": "shared"}]),
)}


def principal(org: uuid.UUID = ORG, models: set[str] | None = None) -> Principal:
    return Principal(api_key_id=uuid.uuid4(), org_id=org, user_id=None,
                     allowed_models=None if models is None else frozenset(models),
                     rpm_limit=None, tpm_limit=None, budget_left_eur=None)


def test_adapters_resolve_by_full_id_and_unique_bare_name() -> None:
    cat = Catalog(DEPS)
    tiny = cat.resolve("tiny")
    assert tiny is not None and tiny.adapter is None and tiny.model_id == "tiny"
    full = cat.resolve("tiny:sql")
    assert full is not None and full.adapter is not None and full.model_id == "tiny:sql"
    bare = cat.resolve("sql")
    assert bare == full
    assert cat.resolve("shared") is None  # two deployments have one: ambiguous
    shared = cat.resolve("other:shared")
    assert shared is not None and shared.dep.name == "other"
    for unknown in ("tiny:nope", "nope:sql", "nope", None, 3):
        assert cat.resolve(unknown) is None
    assert [t.model_id for t in cat.targets()] == [
        "tiny", "tiny:sql", "tiny:poem", "tiny:shared", "other", "other:shared"]


def test_keys_and_orgs_are_scoped_to_adapters() -> None:
    cat = Catalog(DEPS)
    poem = cat.resolve("tiny:poem")
    sql = cat.resolve("tiny:sql")
    base = cat.resolve("tiny")
    assert poem is not None and sql is not None and base is not None
    assert visible(poem, principal()) and not visible(poem, principal(OTHER))
    scoped = principal(models={"tiny:sql"})
    assert visible(sql, scoped) and not visible(base, scoped) and not visible(poem, scoped)
    base_only = principal(models={"tiny"})
    assert visible(base, base_only) and not visible(sql, base_only)


def check(body: dict[str, Any], who: Principal) -> tuple[RequestContext, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    validation = Validation(DEPS, tokens=TokenCounter(DEPS),
                            admission=Admission(enabled=False, limiter_name="t"),
                            metrics=IngressMetrics(), record=records.append)
    ctx = RequestContext(request_id=f"r-{uuid.uuid4().hex}", principal=who,
                         body_bytes=len(str(body)), body=body)
    asyncio.run(validation.precheck("/v1/chat/completions", ctx))
    return ctx, records


def test_adapter_requests_are_checked_and_metered_under_the_adapters_id() -> None:
    messages = [{"role": "user", "content": "hi"}]
    ctx, _ = check({"model": "sql", "messages": messages}, principal())
    assert ctx.target is not None and ctx.target.model_id == "tiny:sql"
    assert ctx.meter is not None and ctx.meter.model == "tiny:sql"
    assert ctx.meter.deployment == "tiny"
    with pytest.raises(protocol.OpenAIError) as info:
        check({"model": "tiny:poem", "messages": messages}, principal(OTHER))
    assert info.value.status == 403
    with pytest.raises(protocol.OpenAIError) as info:
        check({"model": "tiny:nope", "messages": messages}, principal())
    assert info.value.status == 404


def test_model_objects_name_the_adapters_parent() -> None:
    pytest.importorskip("ray.serve.llm")
    from serve_apps.ingress import model_object

    tiny = DEPS["tiny"]
    assert model_object(Target(tiny), 7) == {"id": "tiny", "object": "model", "created": 7,
                                             "owned_by": "inventiv"}
    adapter = model_object(Target(tiny, tiny.model.adapters[0]), 7)
    assert (adapter["id"], adapter["parent"]) == ("tiny:sql", "tiny")


def test_adapter_spec_rules_and_lora_config() -> None:
    config = llm_config_dict(DEPS["tiny"], resolve=lambda s: s)
    assert config["lora_config"] == {"dynamic_lora_loading_path": "s3://bucket/tiny",
                                     "max_num_adapters_per_replica": 3}
    base = {"name": "x", "model": {"name": "x", "source": "/m"},
            "engine": {"max_model_len": 512}, "limits": {"max_tokens": 8}}
    for model, match in [
        ({"adapters": [{"name": "a"}]}, "need lora_source"),
        ({"lora_source": "s3://b", "adapters": [{"name": "a"}, {"name": "a"}]}, "duplicate"),
        ({"lora_source": "s3://b", "adapters": [{"name": "a", "source": "s3://c/a"}]},
         "source must be 's3://b/a'"),
    ]:
        with pytest.raises(ValidationError, match=match):
            DeploymentSpec.model_validate({**base, "model": {**base["model"], **model}})
