"""The deployment YAML: which models run, on what, how they scale, with which request limits.

A file lists deployments; each deployment is one model served by one Ray Serve LLM deployment
(vLLM), behind the single ingress of the app. GPU and CPU differ only in ``placement``: a GPU
deployment names an ``accelerator_type`` (e.g. ``L4``, mapped to Ray's accelerator type); a CPU
one leaves it null and may ask for custom node resources (e.g. ``local_gpu_slot`` on the local
cloud), which go into the replica's placement bundle.

Every model forbids unknown fields. ``load_spec_file``/``parse_spec`` raise ``SpecError`` whose
items name the field path and the YAML line, e.g. ``deployments[0].limits.max_tokens (line 14):
Input should be greater than or equal to 1``. ``configs/schemas/deployment.schema.json`` is
generated from :class:`DeploymentFile` (``python -m core.spec --schema``).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import configs

SCHEMA_PATH = configs.path("schemas", "deployment.schema.json")

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
ModelName = Annotated[str, Field(min_length=1, max_length=128,
                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")]
ResourceName = Annotated[str, Field(min_length=1, max_length=64,
                                    pattern=r"^[A-Za-z_][A-Za-z0-9_:.-]*$")]
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Z_][A-Z0-9_]*$")]
Modality = Literal["text", "image", "audio"]
# Resources that are not "custom": Ray schedules them by their own fields.
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


SecretName = Annotated[str, Field(min_length=1, max_length=64,
                                  pattern=r"^[a-z0-9][a-z0-9._-]*$")]


class SecretRef(_Spec):
    """A reference to a secret stored by the control API (``inventiv secrets set NAME``): its
    value is write-only, never part of a spec, a Serve config or an API answer; the replica
    fetches it when it starts."""

    secret: SecretName


class S3Spec(_Spec):
    """Object Storage (S3 API, e.g. Scaleway's) for ``s3://`` sources."""

    endpoint_url: Annotated[str, Field(min_length=1, max_length=512,
                                       pattern=r"^https?://")] | None = Field(
        default=None, description="e.g. https://s3.fr-par.scw.cloud (default: the cluster's).")
    region: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="e.g. fr-par (default: the cluster's).")
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None


class AdapterSpec(_Spec):
    """A LoRA adapter of the model, addressed as ``model: "<model>:<adapter>"`` (or the bare
    adapter name when no other deployment has one of that name). Ray Serve LLM loads it from
    ``<model.lora_source>/<name>`` (its multiplexing routes requests to replicas holding it)."""

    name: Name
    source: Annotated[str, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Where it is: `<model.lora_source>/<name>` (the default; "
                                  "Ray Serve LLM loads adapters from there).")
    allowed_orgs: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, description="Org names or ids that may use it (within the deployment's "
                                  "own allowed_orgs); null: every org that may use the model.")


HF_PREFIX = "hf:"
BUILTIN_PREFIX = "builtin:"
S3_PREFIX = "s3://"
# `org/name`, or a legacy top-level id such as `gpt2`.
_HF_REPO = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUILTIN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSource:
    """A parsed ``model.source``: ``kind`` is ``hf`` (``repo``, ``revision`` or None: main),
    ``s3`` (``bucket``, ``prefix``), ``local`` (``path``) or ``builtin`` (``name``)."""

    kind: Literal["hf", "s3", "local", "builtin"]
    repo: str | None = None
    revision: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    path: str | None = None
    name: str | None = None

    @property
    def offline(self) -> bool:
        """Nothing to download: the engine must not reach any hub."""
        return self.kind in ("local", "builtin")

    def canonical(self) -> str:
        if self.kind == "hf":
            return f"{HF_PREFIX}{self.repo}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "s3":
            return f"{S3_PREFIX}{self.bucket}/{self.prefix}"
        if self.kind == "builtin":
            return f"{BUILTIN_PREFIX}{self.name}"
        return str(self.path)


def parse_source(source: str) -> ModelSource:
    """Parse ``hf:<org/repo>[@revision]`` (or a bare ``org/repo``: Hugging Face),
    ``s3://bucket/prefix``, an absolute local path or ``builtin:<name>``; ValueError names
    the accepted forms."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if not _BUILTIN.match(name):
            raise ValueError(f"invalid builtin source {source!r}: builtin:<name>")
        return ModelSource("builtin", name=name)
    if source.startswith(S3_PREFIX):
        bucket, _, prefix = source[len(S3_PREFIX):].partition("/")
        prefix = prefix.strip("/")
        if not _S3_BUCKET.match(bucket) or not prefix or ".." in prefix.split("/"):
            raise ValueError(f"invalid s3 source {source!r}: s3://<bucket>/<prefix>")
        return ModelSource("s3", bucket=bucket, prefix=prefix)
    if source.startswith("/"):
        if ".." in source.split("/"):
            raise ValueError(f"invalid local source {source!r}: no `..` components")
        return ModelSource("local", path=source)
    body = source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source
    repo, sep, revision = body.partition("@")
    if not _HF_REPO.match(repo) or (sep and not _HF_REVISION.match(revision)):
        raise ValueError(f"invalid model source {source!r}: expected hf:<org/repo>[@revision], "
                         "s3://<bucket>/<prefix>, an absolute path or builtin:<name>")
    return ModelSource("hf", repo=repo, revision=revision or None)


class ModelSpec(_Spec):
    """The model: the id clients send (``name``), where its weights are, what it does."""

    name: ModelName = Field(description="The served model id (the OpenAI `model` field).")
    source: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        description="Where the weights are: `hf:<org/repo>[@revision]` (a bare `org/repo` is "
                    "a Hugging Face id too), `s3://<bucket>/<prefix>` (Object Storage, see "
                    "`s3`), an absolute local directory, or `builtin:<name>` (built offline).")
    task: Literal["chat", "embed"] = "chat"
    tokenizer_source: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    lora_source: Annotated[str, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="Where LoRA adapters are loaded from (dynamic loading path).")
    modalities: list[Modality] = Field(
        default_factory=lambda: list[Modality](["text"]), min_length=1, max_length=3,
        description="What the model reads: `text` always; `image`/`audio` content parts are "
                    "accepted only when listed (a multimodal model).")
    adapters: list[AdapterSpec] = Field(default_factory=list, max_length=256)
    hf_token: SecretRef | None = Field(
        default=None, description="The stored secret holding a Hugging Face token (gated "
                                  "models), for hf: sources.")
    s3: S3Spec | None = Field(default=None, description="Object Storage for s3:// sources.")

    @model_validator(mode="after")
    def _source_kind(self) -> ModelSpec:
        parsed = parse_source(self.source)
        if self.hf_token is not None and parsed.kind != "hf":
            raise ValueError("hf_token is for hf: sources")
        if self.s3 is not None and parsed.kind != "s3":
            raise ValueError("s3 is for s3:// sources")
        return self

    @property
    def parsed_source(self) -> ModelSource:
        return parse_source(self.source)

    @model_validator(mode="after")
    def _adapters_under_lora_source(self) -> ModelSpec:
        if not self.adapters:
            return self
        if self.lora_source is None:
            raise ValueError("adapters need lora_source (where Ray Serve LLM loads them from)")
        names = [a.name for a in self.adapters]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"duplicate adapter name(s) {dups}")
        root = self.lora_source.rstrip("/")
        for adapter in self.adapters:
            expected = f"{root}/{adapter.name}"
            if adapter.source is not None and adapter.source.rstrip("/") != expected:
                raise ValueError(f"adapter {adapter.name!r}: source must be {expected!r} "
                                 "(Ray Serve LLM loads adapters from lora_source/<name>)")
        return self


class StructuredOutputsSpec(_Spec):
    """vLLM's ``structured_outputs_config`` (grammar-constrained decoding: ``response_format``
    and ``required``/named tool choices). ``disable_any_whitespace``: the grammar allows no
    free whitespace in the JSON (small models otherwise run on whitespace for hundreds of
    tokens)."""

    backend: Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"] | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None

    @model_validator(mode="after")
    def _backend_supports_it(self) -> StructuredOutputsSpec:
        # vLLM refuses the option with any other backend (at replica start, too late).
        if self.disable_any_whitespace and self.backend not in ("xgrammar", "guidance"):
            raise ValueError("disable_any_whitespace needs backend: xgrammar or guidance")
        return self


class EngineSpec(_Spec):
    """vLLM engine arguments. The common ones are typed (typos are caught); ``extra_args`` passes
    anything else to vLLM unchanged."""

    max_model_len: Annotated[int, Field(ge=16, le=1_048_576)]
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool = False
    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    enable_prefix_caching: bool | None = None
    tool_call_parser: Annotated[str, Field(min_length=1, max_length=64,
                                           pattern=r"^[A-Za-z0-9_.-]+$")] | None = Field(
        default=None,
        description="vLLM's tool parser for `tool_choice: auto` (e.g. hermes, llama3_json, "
                    "pythonic); null: only `required` and named tool choices (structured "
                    "outputs) are accepted.")
    chat_template: Annotated[str, Field(min_length=1, max_length=65536)] | None = Field(
        default=None,
        description="A chat template (a file path or the Jinja text) replacing the model's, "
                    "e.g. the one its tool parser needs.")
    structured_outputs_config: StructuredOutputsSpec | None = None
    extra_args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_shadowing(self) -> EngineSpec:
        typed = set(type(self).model_fields) - {"extra_args"}
        clash = sorted((typed | {"enable_auto_tool_choice"}) & set(self.extra_args))
        if clash:
            raise ValueError(f"extra_args repeats typed engine fields: {', '.join(clash)}")
        return self


class PlacementSpec(_Spec):
    """Where replicas run. GPU: ``accelerator_type`` (Ray's, e.g. L4, H100). CPU: null; then
    ``resources`` (e.g. ``{local_gpu_slot: 1}``) pins replicas to node types that offer them.

    Cost-aware choice: ``accelerator_candidates`` lists other GPU types that can host the model
    too; the builder then picks, from ``accelerator_type`` and the candidates, the cheapest GPU
    type the catalog offers, that is available, and whose memory holds ``model_memory_gb``
    (``autoscaler.nodetypes``)."""

    accelerator_type: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    cpus: Annotated[float, Field(gt=0, le=256)] = 1
    resources: dict[ResourceName, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    accelerator_candidates: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=list, max_length=16,
        description="Alternative GPU types that can host the model (with accelerator_type): "
                    "when non-empty, the cheapest available one that fits model_memory_gb is "
                    "chosen from the catalog.")
    model_memory_gb: Annotated[float, Field(gt=0, le=100_000)] | None = Field(
        default=None,
        description="Memory the model needs on one GPU (weights + KV cache), in GB; filters "
                    "accelerator_candidates.")

    @model_validator(mode="after")
    def _custom_only(self) -> PlacementSpec:
        reserved = sorted(RESERVED_RESOURCES & set(self.resources))
        if reserved:
            raise ValueError(f"resources may only name custom resources, not {reserved} "
                             "(use cpus / accelerator_type)")
        if self.accelerator_candidates:
            if self.accelerator_type is None:
                raise ValueError("accelerator_candidates needs a GPU placement "
                                 "(set accelerator_type, the preferred GPU type)")
            dups = sorted({c for c in self.accelerator_candidates
                           if self.accelerator_candidates.count(c) > 1})
            if dups:
                raise ValueError(f"accelerator_candidates repeats {dups}")
        return self


class AutoscalingSpec(_Spec):
    """Replica bounds, the load target and the policy. Always explicit: Ray Serve LLM's
    defaults (1e9 ongoing requests) would mean autoscaling never reacts. ``policy: inventiv``
    (the default) plugs ``autoscaler.serve_policy`` into Serve's policy hook."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    initial_replicas: Annotated[int, Field(ge=0, le=1000)] | None = None
    target_ongoing_requests: Annotated[float, Field(gt=0, le=10_000)] = 8
    max_ongoing_requests: Annotated[int, Field(ge=1, le=100_000)] = 32
    # Requests waiting for a replica beyond this are refused (429 + Retry-After), never hang.
    max_queued_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    downscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] = 300
    upscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] = 30
    policy: Literal["inventiv", "ray"] = Field(
        default="inventiv",
        description="`inventiv`: autoscaler.serve_policy (bursts at once, holds capacity for "
                    "the replica start time, budget cap); `ray`: Ray Serve's default policy.")
    downscale_to_zero_delay_s: Annotated[float, Field(ge=0, le=86_400)] | None = Field(
        default=None,
        description="Seconds without any request before the last replica goes (min_replicas: "
                    "0); null: downscale_delay_s.")
    cold_start_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=300,
        description="How long the ingress holds a request for a model at zero replicas before "
                    "answering 503 with Retry-After.")
    replica_start_s: Annotated[float, Field(gt=0, le=86_400)] | None = Field(
        default=None,
        description="Expected seconds for a new replica (node boot + model load); null: "
                    "learned by the control API from the lifecycle history.")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        if self.initial_replicas is not None and not (
                self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must be within min_replicas..max_replicas")
        if self.max_ongoing_requests < self.target_ongoing_requests:
            raise ValueError("max_ongoing_requests must be >= target_ongoing_requests")
        return self


class LimitsSpec(_Spec):
    """Per-request limits the ingress enforces before dispatch."""

    max_tokens: Annotated[int, Field(ge=1, le=1_048_576)] = 1024
    max_n: Annotated[int, Field(ge=1, le=16)] = 1
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    max_messages: Annotated[int, Field(ge=1, le=10_000)] = 128
    max_prompt_tokens: Annotated[int, Field(ge=1, le=1_048_576)] | None = None
    max_top_logprobs: Annotated[int, Field(ge=0, le=20)] = 0
    max_embedding_inputs: Annotated[int, Field(ge=1, le=4096)] = 64
    # A stream running longer is ended with an error event. Non-streamed requests are bounded
    # by Ray Serve LLM's router timeout, which the builder sets above every deployment's
    # request_timeout_s (+ cold_start_timeout_s for min_replicas 0), and at least 600 s.
    request_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600
    # Tool calling and structured outputs (`tools`, `response_format`): bounded grammars.
    max_tools: Annotated[int, Field(ge=0, le=1024)] = 64
    max_tool_definition_bytes: Annotated[int, Field(ge=0, le=16 * 1024 * 1024)] = 65536
    max_schema_bytes: Annotated[int, Field(ge=0, le=4 * 1024 * 1024)] = 16384
    max_schema_depth: Annotated[int, Field(ge=1, le=64)] = 10
    max_enum_values: Annotated[int, Field(ge=1, le=100_000)] = 256
    max_tool_calls_per_message: Annotated[int, Field(ge=1, le=1024)] = 16
    # Content parts of a message (text, and image/audio for multimodal models).
    max_content_parts: Annotated[int, Field(ge=1, le=10_000)] = 32
    allow_remote_media_urls: bool = Field(
        default=False,
        description="Accept http(s) image/audio URLs in content parts (the engine fetches "
                    "them); false: only inline data: URLs.")


class PriceSpec(_Spec):
    """Price override per 1M tokens, in EUR (otherwise the catalog's price applies)."""

    input_eur_per_1m: Annotated[Decimal, Field(ge=0, le=10_000, decimal_places=6)]
    output_eur_per_1m: Annotated[Decimal, Field(ge=0, le=10_000, decimal_places=6)]


class DeploymentSpec(_Spec):
    """One model deployment."""

    name: Name
    model: ModelSpec
    engine: EngineSpec
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    allowed_orgs: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, description="Org names or ids that may use it; null: every org.")
    price: PriceSpec | None = None
    env: dict[EnvName, Annotated[str, Field(max_length=4096)] | SecretRef] = Field(
        default_factory=dict,
        description="Environment of the replicas; a value may be `{secret: NAME}`, a stored "
                    "secret the replica fetches when it starts (never in the Serve config).")

    @model_validator(mode="after")
    def _coherent(self) -> DeploymentSpec:
        if self.limits.max_tokens >= self.engine.max_model_len:
            raise ValueError(f"limits.max_tokens ({self.limits.max_tokens}) must be below "
                             f"engine.max_model_len ({self.engine.max_model_len})")
        if self.model.task == "embed" and self.model.lora_source is not None:
            raise ValueError("LoRA adapters are for chat models")
        return self


class DeploymentFile(_Spec):
    """A deployment YAML file: the deployments of one Serve application."""

    version: Literal[1] = 1
    deployments: Annotated[list[DeploymentSpec], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _unique(self) -> DeploymentFile:
        for attr in ("name", "model"):
            seen: set[str] = set()
            for dep in self.deployments:
                value = dep.name if attr == "name" else dep.model.name
                if value in seen:
                    raise ValueError(f"duplicate {'deployment' if attr == 'name' else 'model'} "
                                     f"name {value!r}")
                seen.add(value)
        return self


# ---------------------------------------------------------------- parsing with line numbers


@dataclass(frozen=True)
class SpecIssue:
    """One problem: the field path (``deployments[0].limits.n``), its YAML line, the message."""

    field: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.field or '<root>'}{where}: {self.message}"


class SpecError(ValueError):
    """The deployment YAML is invalid; ``issues`` says where and why."""

    def __init__(self, issues: list[SpecIssue], source: str = "<yaml>") -> None:
        self.issues = issues
        self.source = source
        super().__init__(f"{source}: " + "; ".join(str(i) for i in issues))


def parse_spec(text: str, source: str = "<yaml>") -> DeploymentFile:
    """Validate a deployment YAML document; raises ``SpecError`` naming fields and lines."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecIssue("", line, f"invalid YAML: {problem}")], source) from None
    if not isinstance(data, dict):
        raise SpecError([SpecIssue("", 1, "the document must be a mapping with `deployments`")],
                        source)
    try:
        return DeploymentFile.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            issues.append(SpecIssue(_path(loc), _line_of(node, loc), _message(err)))
        raise SpecError(issues, source) from None


def load_spec_file(path: Path | str) -> DeploymentFile:
    """Read and validate a deployment YAML file."""
    p = Path(path)
    return parse_spec(p.read_text(encoding="utf-8"), source=str(p))


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return re.sub(r"^Value error, ", "", msg)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node along ``loc`` (the key line for mappings)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line  # a missing field: the line of its parent
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line  # pydantic's own loc parts (e.g. a union branch name)
    return line


def json_schema() -> dict[str, Any]:
    """The published JSON schema of a deployment YAML file."""
    schema = DeploymentFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Inventiv Agents deployment file"
    return schema


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m core.spec --schema`
    if sys.argv[1:] == ["--schema"]:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(render_json_schema(), encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
    else:
        for arg in sys.argv[1:]:
            print(load_spec_file(arg).model_dump_json(indent=2))
