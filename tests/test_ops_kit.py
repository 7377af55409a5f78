"""The operations kit (docker/, configs/prometheus/, configs/grafana/) against the code it runs.

Every metric name in a Grafana dashboard's PromQL must be one our code exports (the control API's
/metrics registry, the ingress's ``ray.util.metrics``) or one Ray exports (an explicit list, each
entry checked against the installed Ray's source), so renaming a metric or a label breaks this
test instead of silently blanking a panel. The compose file, the Dockerfiles and the scrape and
provisioning configs are checked against the files, settings and flags they name.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DASHBOARDS = sorted((ROOT / "configs" / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS = ROOT / "configs" / "prometheus" / "prometheus.yml"
PROVISIONING = ROOT / "configs" / "grafana" / "provisioning"
OUR_PACKAGES = ("control_api", "finops", "cluster", "serve_apps", "autoscaler", "cli")
# Labels every scraped series may carry: Prometheus's target labels and Ray's default tags.
COMMON_LABELS = frozenset({"instance", "job", "SessionName", "Component", "NodeAddress",
                           "WorkerId", "Version", "JobId", "__name__"})


# ------------------------------------------------------------------ metric catalogue

@dataclass(frozen=True)
class Metric:
    """One metric family as Prometheus sees it."""

    name: str  # family name as exported (prefix included, suffixes excluded)
    kind: str  # counter | gauge | histogram
    labels: frozenset[str]

    def samples(self) -> dict[str, frozenset[str]]:
        """Sample names Prometheus stores for this family, with their labels."""
        if self.kind == "counter":
            return {f"{self.name}_total": self.labels}
        if self.kind == "histogram":
            return {f"{self.name}_bucket": self.labels | {"le"},
                    f"{self.name}_sum": self.labels, f"{self.name}_count": self.labels}
        return {self.name: self.labels}


@dataclass(frozen=True)
class RayMetric:
    """A Ray-defined metric: where Ray's source defines it, and what Prometheus gets."""

    exported: str
    kind: str
    source: str  # path under the installed ray package
    literal: str  # the name as written in that file (f-strings included)
    labels: frozenset[str]


def _ray(name: str, kind: str, source: str, labels: tuple[str, ...],
         literal: str | None = None, exported: str | None = None) -> RayMetric:
    return RayMetric(exported or f"ray_{name}", kind, source, literal or f'"{name}"',
                     frozenset(labels))


_NODE = ("ip", "Version", "SessionName", "IsHeadNode", "RayNodeType")
_GPU = _NODE + ("GpuDeviceName", "GpuIndex", "GpuUuid")
_DEP = ("deployment", "application")
_INGRESS = "serve/_private/request_ingress_metrics.py"
_REPORTER = "dashboard/modules/reporter/reporter_agent.py"
_AUTOSCALER = "autoscaler/_private/prom_metrics.py"
# Ray's metrics the dashboards may use (FACTS.md lists the Serve ones; more are added as panels
# need them). Ray's exporter prefixes ``ray_``; the autoscaler's own prometheus_client registry
# exports ``autoscaler_<name>`` (namespace) instead.
RAY_METRICS = [
    _ray("serve_num_http_requests", "counter", _INGRESS,
         ("route", "method", "application", "status_code"),
         literal='f"serve_num_{protocol_name}_requests"'),
    _ray("serve_num_http_error_requests", "counter", _INGRESS,
         ("route", "error_code", "method", "application"),
         literal='f"serve_num_{protocol_name}_error_requests"'),
    _ray("serve_http_request_latency_ms", "histogram", _INGRESS,
         ("method", "route", "application", "status_code"),
         literal='f"serve_{protocol_name}_request_latency_ms"'),
    _ray("serve_deployment_queued_queries", "gauge", "serve/_private/router.py",
         _DEP + ("handle", "actor_id")),
    _ray("serve_num_ongoing_requests_at_replicas", "gauge", "serve/_private/router.py",
         _DEP + ("handle", "actor_id")),
    _ray("serve_autoscaling_target_replicas", "gauge", "serve/_private/deployment_state.py",
         _DEP),
    _ray("serve_autoscaling_desired_replicas", "gauge", "serve/_private/autoscaling_state.py",
         _DEP),
    _ray("serve_deployment_replica_healthy", "gauge", "serve/_private/deployment_state.py",
         _DEP + ("replica",)),
    _ray("serve_replica_startup_latency_ms", "histogram", "serve/_private/deployment_state.py",
         _DEP + ("replica",)),
    _ray("serve_deployment_processing_latency_ms", "histogram", "serve/_private/replica.py",
         _DEP + ("replica", "route")),
    _ray("node_cpu_utilization", "gauge", _REPORTER, _NODE),
    _ray("node_cpu_count", "gauge", _REPORTER, _NODE),
    _ray("node_mem_used", "gauge", _REPORTER, _NODE),
    _ray("node_mem_total", "gauge", _REPORTER, _NODE),
    _ray("node_gpus_utilization", "gauge", _REPORTER, _GPU),
    _ray("node_gram_used", "gauge", _REPORTER, _GPU),
    _ray("active_nodes", "gauge", _AUTOSCALER, ("NodeType", "SessionName"),
         exported="autoscaler_active_nodes"),
    _ray("pending_nodes", "gauge", _AUTOSCALER, ("NodeType", "SessionName"),
         exported="autoscaler_pending_nodes"),
    _ray("recently_failed_nodes", "gauge", _AUTOSCALER, ("NodeType", "SessionName"),
         exported="autoscaler_recently_failed_nodes"),
]


def ray_package() -> Path:
    import ray

    return Path(ray.__file__).resolve().parent


def ray_metric_families() -> dict[str, Metric]:
    return {m.exported: Metric(m.exported, m.kind, m.labels) for m in RAY_METRICS}


def ingress_metric_families() -> dict[str, Metric]:
    """The ingress's metrics, from a real :class:`IngressMetrics` (no Ray cluster needed)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    from serve_apps.metrics import IngressMetrics

    kinds = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}
    out: dict[str, Metric] = {}
    for metric in vars(IngressMetrics()).values():
        kind = next((k for cls, k in kinds.items() if isinstance(metric, cls)), None)
        if kind is None:
            continue  # not a metric (e.g. the last values of the spool counters it mirrors)
        name = f"ray_{metric._name}"  # Ray's exporter prefix
        out[name] = Metric(name, kind, frozenset(metric._tag_keys))
    return out


def ray_util_metrics_in_source() -> dict[str, Metric]:
    """Every ``ray.util.metrics`` Counter/Gauge/Histogram our packages construct with a literal
    name (so a metric added anywhere, e.g. by the autoscaler, is known to the dashboards)."""
    out: dict[str, Metric] = {}
    for pkg in OUR_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "ray.util.metrics" not in text:
                continue
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, ast.Call) or \
                        not isinstance(node.func, ast.Name | ast.Attribute):
                    continue
                fname = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if fname not in ("Counter", "Gauge", "Histogram") or not node.args or \
                        not isinstance(node.args[0], ast.Constant):
                    continue
                labels: frozenset[str] = frozenset()
                for kw in node.keywords:
                    if kw.arg == "tag_keys" and isinstance(kw.value, ast.Tuple | ast.List):
                        labels = frozenset(e.value for e in kw.value.elts
                                           if isinstance(e, ast.Constant))
                name = f"ray_{node.args[0].value}"
                out[name] = Metric(name, fname.lower(), labels)
    return out


def control_api_metric_families(app: Any) -> dict[str, Metric]:
    """The families the control API's /metrics registry yields (real collector, real DB)."""
    out: dict[str, Metric] = {}
    for family in app.state.metrics_registry.collect():
        labels = frozenset(getattr(family, "_labelnames", ()) or ())
        for sample in family.samples:
            labels |= set(sample.labels)
        out[family.name] = Metric(family.name, family.type, labels)
    return out


def samples_of(families: dict[str, Metric]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for metric in families.values():
        out.update(metric.samples())
    return out


# ------------------------------------------------------------------ PromQL

PROMQL_FUNCTIONS = frozenset("""
abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min
count count_over_time count_values day_of_month day_of_week delta deriv exp floor group
histogram_quantile holt_winters idelta increase irate label_join label_replace last_over_time
ln log2 log10 max max_over_time min min_over_time predict_linear quantile quantile_over_time
rate resets round scalar sgn sort sort_desc sqrt stddev stdvar sum sum_over_time time timestamp
topk vector label_values
""".split())
PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right",
                             "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"})
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass
class Parsed:
    metrics: set[str]
    labels: set[str]
    functions: set[str]


def parse_promql(expr: str) -> Parsed:
    """Metric names, label names and functions of a PromQL expression (the subset we write)."""
    labels: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"", body))
    s = re.sub(r"\{[^}]*\}", " ", expr)
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors: [5m], [$__rate_interval]
    for group in _GROUPING.findall(s):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\"[^\"]*\"", " ", s)
    s = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", " ", s)
    metrics: set[str] = set()
    functions: set[str] = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", s):
        token = m.group(0)
        if s[m.end():].lstrip().startswith("("):
            functions.add(token)
        elif token not in PROMQL_KEYWORDS:
            metrics.add(token)
    return Parsed(metrics, labels, functions)


def test_promql_parser_finds_names_labels_and_functions() -> None:
    p = parse_promql('histogram_quantile(0.95, sum by (le, model) (rate(ray_x_bucket'
                     '{model=~"$model",kind="a b"}[$__rate_interval]))) / '
                     'clamp_min(sum(inventiv_y) * 1e-9, 1) or vector(0)')
    assert p.metrics == {"ray_x_bucket", "inventiv_y"}
    assert p.labels == {"le", "model", "kind"}
    assert p.functions == {"histogram_quantile", "sum", "rate", "clamp_min", "vector"}
    assert parse_promql("count(inventiv_budget_state == 2)").metrics == {"inventiv_budget_state"}


# ------------------------------------------------------------------ dashboards

def load_dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in DASHBOARDS]


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, PromQL, legend) of every target, and the templating queries."""
    out: list[tuple[str, str, str]] = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+)\s*,\s*(\w+)\)", query)
            assert m, f"templating query {query!r} is not label_values(metric, label)"
            out.append((f"variable {var['name']}", f'{m.group(1)}{{{m.group(2)}=""}}', ""))
    return out


@pytest.fixture
def known_samples(client: Any) -> dict[str, frozenset[str]]:
    """Sample name -> labels, for everything our code and the listed Ray metrics export."""
    ours = control_api_metric_families(client.app)
    ingress = ingress_metric_families()
    scanned = ray_util_metrics_in_source()
    # The source scan must see what the runtime objects are (it is what finds new metrics).
    assert {n: m for n, m in scanned.items() if n in ingress} == ingress
    families = {**ray_metric_families(), **scanned, **ingress, **ours}
    return samples_of(families)


def test_control_api_exports_its_metrics_at_the_scraped_path(client: Any) -> None:
    families = control_api_metric_families(client.app)
    assert {"inventiv_burn_rate_eur_per_hour", "inventiv_cost_eur", "inventiv_tokens",
            "inventiv_budget_ratio", "inventiv_budget_state"} <= set(families)
    job = next(j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
               if j["job_name"] == "inventiv-control-api")
    response = client.get(job.get("metrics_path", "/metrics"))
    assert response.status_code == 200
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, re.M))
    # The text format names a counter's TYPE line after its `_total` sample.
    exposed = {(n + "_total" if m.kind == "counter" else n): m.kind for n, m in families.items()}
    assert exposed == types


def test_every_dashboard_metric_and_label_is_exported(
        known_samples: dict[str, frozenset[str]]) -> None:
    assert {p.name for p in DASHBOARDS} == {"inventiv-serving.json", "inventiv-capacity.json",
                                            "inventiv-finops.json"}
    problems: list[str] = []
    for fname, board in load_dashboards():
        queries = dashboard_queries(board)
        assert queries, fname
        for title, expr, legend in queries:
            parsed = parse_promql(expr)
            assert parsed.metrics, f"{fname} / {title}: no metric in {expr!r}"
            unknown_fn = parsed.functions - PROMQL_FUNCTIONS
            if unknown_fn:
                problems.append(f"{fname} / {title}: unknown functions {sorted(unknown_fn)}")
            available = set(COMMON_LABELS)
            for name in parsed.metrics:
                if name not in known_samples:
                    problems.append(f"{fname} / {title}: metric {name!r} is not exported")
                else:
                    available |= known_samples[name]
            for label in parsed.labels - available:
                problems.append(f"{fname} / {title}: label {label!r} not on {parsed.metrics}")
            for label in set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - available:
                problems.append(f"{fname} / {title}: legend label {label!r} not available")
    assert not problems, "\n".join(problems)


def test_dashboards_cover_the_operations_topics() -> None:
    used: set[str] = set()
    for _, board in load_dashboards():
        for _, expr, _ in dashboard_queries(board):
            used |= parse_promql(expr).metrics
    wanted = {
        "requests": "ray_inventiv_requests_total", "errors by code": "ray_inventiv_errors_total",
        "TTFT": "ray_inventiv_ttft_ms_bucket", "tokens/s": "ray_inventiv_tokens_total",
        "rate-limit rejections": "ray_inventiv_rate_limited_total",
        "scale from zero": "ray_inventiv_cold_start_wait_s_bucket",
        "replicas target": "ray_serve_autoscaling_target_replicas",
        "replicas desired": "ray_serve_autoscaling_desired_replicas",
        "replicas healthy": "ray_serve_deployment_replica_healthy",
        "nodes (autoscaler)": "autoscaler_active_nodes", "nodes (Ray)": "ray_node_cpu_count",
        "burn rate": "inventiv_burn_rate_eur_per_hour", "budget usage": "inventiv_budget_ratio",
    }
    missing = {topic: name for topic, name in wanted.items() if name not in used}
    assert not missing


def test_dashboards_are_importable_grafana_json() -> None:
    uids = set()
    for fname, board in load_dashboards():
        assert board["uid"] not in uids and len(board["uid"]) <= 40, fname
        uids.add(board["uid"])
        assert board["title"] and isinstance(board["schemaVersion"], int)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), fname
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, (fname, panel["title"])
            if panel["type"] != "row":
                # Every query goes to the datasource chosen by the variable (import-friendly).
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
                refs = [t["refId"] for t in panel["targets"]]
                assert len(refs) == len(set(refs))


def test_ray_metric_list_matches_rays_source_and_naming() -> None:
    """Each listed Ray metric is defined, with that kind, where we say; and the naming rule we
    apply (``ray_`` prefix, ``_total``/``_bucket``) is the one Ray's own dashboards use."""
    ray_dir = ray_package()
    problems = []
    for m in RAY_METRICS:
        text = (ray_dir / m.source).read_text(encoding="utf-8")
        ctor = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram"}[m.kind]
        pattern = re.escape(ctor) + r"\(\s*(?:name=)?" + re.escape(m.literal)
        if not re.search(pattern, text):
            problems.append(f"{m.exported}: no {ctor}({m.literal} in ray/{m.source}")
    assert not problems, problems
    panels = "".join(p.read_text(encoding="utf-8") for p in
                     (ray_dir / "dashboard/modules/metrics/dashboards").glob("*_panels.py"))
    for name, sample in (("ray_serve_num_http_requests", "ray_serve_num_http_requests_total"),
                         ("ray_serve_http_request_latency_ms",
                          "ray_serve_http_request_latency_ms_bucket"),
                         ("ray_serve_deployment_queued_queries",
                          "ray_serve_deployment_queued_queries"),
                         ("ray_node_cpu_utilization", "ray_node_cpu_utilization"),
                         ("autoscaler_active_nodes", "autoscaler_active_nodes")):
        family = ray_metric_families()[name]
        assert sample in family.samples() and sample in panels, sample


# ------------------------------------------------------------------ compose

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``/``${VAR:-default}`` with the defaults (or ``env``)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, _, default = m.group(1).partition(":-")
        return env.get(name, default)

    return re.sub(r"\$\{([^}]+)\}", sub, value)


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def our_build_services() -> dict[str, dict[str, Any]]:
    """Services running one of our images (built from docker/*.Dockerfile)."""
    return {n: s for n, s in compose()["services"].items() if "build" in s}


def valid_inventiv_env_names() -> set[str]:
    """``INVENTIV_*`` names the code reads: :class:`Settings` fields, the ``_FILE`` forms of its
    file secrets, and the CLI options bound to the environment (``envvar=``)."""
    from control_api.settings import ENV_PREFIX, FILE_FIELDS, Settings

    names = {f"{ENV_PREFIX}{f.upper()}" for f in Settings.model_fields}
    names |= {f"{ENV_PREFIX}{f.upper()}_FILE" for f in FILE_FIELDS}
    for path in (ROOT / "cli").rglob("*.py"):
        names |= set(re.findall(r"envvar=[\"'](INVENTIV_[A-Z0-9_]+)[\"']",
                                path.read_text(encoding="utf-8")))
    return names


def test_compose_services_images_and_build_contexts() -> None:
    doc = compose()
    services = doc["services"]
    assert {"postgres", "control-api", "ray-head"} <= set(services)
    built_images = set()
    for name, svc in services.items():
        if "build" in svc:
            build = svc["build"]
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).is_file(), name
            built_images.add(svc["image"])
    for name, svc in services.items():
        image = svc["image"]
        if "build" not in svc:
            # Third-party images are pinned to a version, never :latest.
            assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+", image) and not image.endswith(
                ":latest"), (name, image)
        else:
            assert interpolate(image).startswith("inventiv-agents/"), name
    # The Ray head and the CPU worker share the head image; the control API has its own.
    assert services["cpu-worker"]["image"] == services["ray-head"]["image"]
    assert services["control-api"]["build"]["args"]["EXTRAS"] == ""
    assert services["ray-head"]["build"]["args"]["EXTRAS"] == "cpu"


def test_compose_dependencies_healthchecks_and_volumes() -> None:
    doc = compose()
    services = doc["services"]
    pg = services["postgres"]
    assert pg["healthcheck"]["test"][1] == "pg_isready"
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in doc["volumes"]
    api = services["control-api"]
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in services.items():
        for dep in svc.get("depends_on") or []:
            assert dep in services, (name, dep)
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)
            else:
                assert source in doc["volumes"], (name, source)
        for secret in svc.get("secrets", []):
            assert secret in doc["secrets"], (name, secret)
    # Prometheus reads Ray's service-discovery file from the head's temp dir volume.
    head_tmp = next(v for v in services["ray-head"]["volumes"] if v.endswith(":/tmp/ray"))
    assert f"{head_tmp}:ro" in services["prometheus"]["volumes"]


def test_compose_env_names_exist_in_code() -> None:
    inventiv_names = valid_inventiv_env_names()
    ray_source_cache: dict[str, bool] = {}
    ray_dir = ray_package()
    our_source = "".join(p.read_text(encoding="utf-8") for pkg in OUR_PACKAGES
                         for p in (ROOT / pkg).rglob("*.py"))

    def ray_knows(name: str) -> bool:
        if name not in ray_source_cache:
            found = subprocess.run(["grep", "-rqF", "--include=*.py", name, str(ray_dir)],
                                   check=False).returncode == 0
            ray_source_cache[name] = found
        return ray_source_cache[name]

    problems = []
    for name, svc in our_build_services().items():
        for key in service_env(svc):
            if key.startswith("INVENTIV_"):
                if key not in inventiv_names:
                    problems.append(f"{name}: {key} is read by no setting")
            elif not (ray_knows(key) or key in our_source):
                problems.append(f"{name}: {key} is known to neither Ray nor our code")
    assert not problems, problems


def test_compose_never_inlines_secrets() -> None:
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL")
    for name, svc in compose()["services"].items():
        mounted = set(svc.get("secrets", []))
        for key, value in service_env(svc).items():
            if secretish.search(key) and key != "RAY_AUTH_MODE":
                # Only paths to mounted secret files.
                assert key.endswith(("_FILE", "_PATH")), (name, key)
                assert value.startswith("/run/secrets/"), (name, key, value)
                assert value.removeprefix("/run/secrets/") in mounted, (name, key)
    for path in (DOCKER / "head.Dockerfile", DOCKER / "worker-gpu.Dockerfile"):
        for line in path.read_text().splitlines():
            if line.startswith(("ENV", "ARG", "    ")) and secretish.search(line):
                assert re.search(r"(_FILE|_PATH)=/run/secrets/|RAY_AUTH_MODE=token", line), line


def test_ray_services_use_token_auth_and_known_flags() -> None:
    from ray.scripts.scripts import start

    flags = {opt for p in start.params for opt in p.opts}
    for name, svc in compose()["services"].items():
        command = svc.get("command") or []
        if command[:2] != ["ray", "start"]:
            continue
        env = service_env(svc)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token"
        assert "ray_token" in svc["secrets"]
        assert "--block" in command
        for arg in command[2:]:
            flag = interpolate(arg).split("=", 1)[0]
            assert flag in flags, (name, flag)
        ports = [interpolate(a).split("=", 1)[1] for a in command if "port=" in a]
        assert len(ports) == len(set(ports)), (name, ports)


def test_make_secrets_feeds_settings_and_serve_client(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Run docker/make-secrets.sh, then read the control API service's environment exactly as
    compose gives it (secret paths mapped to the generated files) through the real Settings."""
    from control_api.serve_client import serve_config
    from control_api.settings import Settings

    out = tmp_path / "secrets"
    subprocess.run(["sh", str(DOCKER / "make-secrets.sh"), str(out)], check=True,
                   capture_output=True)
    assert {p.name for p in out.iterdir()} == set(compose()["secrets"])
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    before = {p.name: p.read_text() for p in out.iterdir()}
    assert all(v and "\n" not in v for v in before.values())
    subprocess.run(["sh", str(DOCKER / "make-secrets.sh"), str(out)], check=True,
                   capture_output=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == before  # never rotated
    password = before["postgres_password"]
    assert before["database_url"] == \
        f"postgresql://inventiv:{password}@127.0.0.1:5432/inventiv"
    assert before["service_token"].startswith("ist-")

    env = {k: v.replace("/run/secrets/", f"{out}/")
           for k, v in service_env(compose()["services"]["control-api"]).items()}
    for key in list(os.environ):
        if key.startswith("INVENTIV_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("INVENTIV_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    assert settings.resolved_database_url() == \
        f"postgresql+psycopg://inventiv:{password}@127.0.0.1:5432/inventiv"
    assert settings.jwt_secret and settings.jwt_secret.get_secret_value() == before["jwt_secret"]
    assert settings.admin_password and \
        settings.admin_password.get_secret_value() == before["admin_password"]
    assert settings.service_token and \
        settings.service_token.get_secret_value() == before["service_token"]
    assert settings.cookie_secure is True
    serve = serve_config(settings)
    assert serve is not None and serve.token_file == str(out / "ray_token")
    assert serve.dashboard_url == "http://127.0.0.1:8265"
    head_cmd = [interpolate(a) for a in compose()["services"]["ray-head"]["command"]]
    assert "--dashboard-port=8265" in head_cmd
    assert serve.target.ingress_options["service_token_file"] == str(out / "service_token")


# ------------------------------------------------------------------ Dockerfiles

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def dockerignored() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("dockerfile", ["head.Dockerfile", "worker-gpu.Dockerfile"])
def test_dockerfiles_copy_files_that_exist_and_install_real_extras(dockerfile: str) -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    instructions = dockerfile_instructions(DOCKER / dockerfile)
    ignored = dockerignored()
    args = {}
    for op, rest in instructions:
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if op == "FROM":
            image = rest.split()[0]
            image = args.get(image.strip("${}"), image) if image.startswith("$") else image
            assert image == "python:3.11-slim"
        if op == "COPY" and "--from=" not in rest:
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}"
                assert src not in ignored and src.rstrip("/") not in ignored, src
    text = " ".join(rest for op, rest in instructions if op == "RUN")
    for extra in re.findall(r"\.\[([a-z,]+)\]", text) + [args.get("EXTRAS", "")]:
        for name in filter(None, extra.split(",")):
            if name != "$EXTRAS":
                assert name in extras, (dockerfile, name)
    # Every package of the distribution is in the image (pyproject's include list).
    copied = {shlex.split(rest)[0].rstrip("/") for op, rest in instructions
              if op == "COPY" and "--from=" not in rest}
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    assert packages <= copied, packages - copied
    if "ray[serve]" in text:
        assert ray_pin.replace(" ", "") in text.replace(" ", "")


def test_worker_image_runs_the_bootstrap_command_shape() -> None:
    """The worker image starts Ray the way cluster/bootstrap.py renders it for docker mode."""
    from cluster.bootstrap import CONTAINER_TOKEN_PATH, NodeBootstrap

    instructions = dict(dockerfile_instructions(DOCKER / "worker-gpu.Dockerfile"))
    env = dict(re.findall(r"(\w+)=(\S+)", instructions["ENV"]))
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == CONTAINER_TOKEN_PATH
    node = NodeBootstrap(head_address="10.0.0.2:6379", cloud_instance_id="i-1",
                         node_type="gpu_l4", ray_token="t", num_gpus=1,  # noqa: S106
                         worker_image="inventiv-agents/worker-gpu:1")
    argv = node.ray_start_args("ray")
    cmd = json.loads(instructions["CMD"])
    script = cmd[-1]
    assert cmd[:2] == ["sh", "-c"] and script.startswith("exec ray start --address=")
    fixed = [a for a in argv[:5] if not a.startswith("--address=")]
    positions = [script.index(a) for a in fixed]
    assert positions == sorted(positions), (fixed, script)
    # The image has no ENTRYPOINT: the unit's argv (`<image> ray start ...`) runs as given.
    assert "ENTRYPOINT" not in instructions
    assert node.node_env(CONTAINER_TOKEN_PATH)["RAY_AUTH_TOKEN_PATH"] == CONTAINER_TOKEN_PATH


# ------------------------------------------------------------------ Prometheus / Grafana

def test_prometheus_config_targets_what_compose_runs() -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    api = compose()["services"]["control-api"]
    port = service_env(api)["INVENTIV_PORT"]
    assert jobs["inventiv-control-api"]["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
    files = jobs["ray"]["file_sd_configs"][0]["files"]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    mount = compose()["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in mount
    assert "../configs/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in \
        compose()["services"]["prometheus"]["volumes"]


def test_grafana_provisioning_matches_compose_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"] is True
    var = re.fullmatch(r"\$\{(\w+)\}", ds["url"])
    assert var and var.group(1) in service_env(grafana)
    prom_listen = next(a for a in compose()["services"]["prometheus"]["command"]
                       if a.startswith("--web.listen-address="))
    assert service_env(grafana)[var.group(1)] == "http://" + interpolate(prom_listen).split("=")[1]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "inventiv.yaml").read_text())
    (provider,) = providers["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "../configs/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "../configs/grafana/provisioning"
