"""`inventiv simulate`: the JSON shape others rely on, side-by-side comparison, clear errors.

No server: the simulator is offline. The command is mounted here exactly as ``cli/main.py``
mounts it (``app.command("simulate")(simulate.simulate)``), or taken from ``cli.main`` when
it is already there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from cli import simulate as simulate_cmd

ROOT = Path(__file__).resolve().parents[2]
GPU_YAML = ROOT / "configs" / "deployments" / "examples" / "gpu-chat.yaml"
LOCAL_YAML = ROOT / "configs" / "deployments" / "local.yaml"
HEADER = "arrival_s,prompt_tokens,completion_tokens\n"


def _app() -> typer.Typer:
    from cli.main import app as main_app

    names = {c.name for c in main_app.registered_commands}
    if "simulate" in names:
        return main_app
    app = typer.Typer()
    app.command("simulate")(simulate_cmd.simulate)
    app.command("noop", hidden=True)(lambda: None)  # two commands: `simulate` stays a name
    return app


APP = _app()


def run(*args: str) -> Result:
    return CliRunner().invoke(APP, ["simulate", *args])


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """Three minutes of traffic: a burst at 10 s, then a trickle."""
    rows = [f"{10 + k * 0.1:.3f},300,120" for k in range(60)]
    rows += [f"{60 + k * 5:.3f},100,40" for k in range(24)]
    path = tmp_path / "trace.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_json_has_the_published_fields(trace: Path) -> None:
    result = run("--trace", str(trace), "--deployment", str(GPU_YAML), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for key in ("cost_eur", "gpu_hours", "idle_share", "p50_wait_s", "p95_wait_s", "requests",
                "replica_seconds", "max_replicas", "policy"):
        assert key in out, key
    assert out["policy"] == "inventiv" and out["requests"] == 84
    assert out["instance_type"] == "L4-1-24G"
    assert float(out["cost_eur"]) > 0 and out["cost_eur"] == f"{float(out['cost_eur']):.6f}"
    assert 0 <= out["idle_share"] <= 1 and out["p50_wait_s"] <= out["p95_wait_s"]


def test_policy_override_and_compare_with_ray(trace: Path) -> None:
    ray = json.loads(run("--trace", str(trace), "--deployment", str(GPU_YAML), "--policy",
                         "ray", "--json").stdout)
    assert ray["policy"] == "ray"
    result = run("--trace", str(trace), "--deployment", str(GPU_YAML), "--compare", "ray",
                 "--json")
    assert result.exit_code == 0, result.output
    both = json.loads(result.stdout)
    assert both["a"]["policy"] == "inventiv" and both["b"]["policy"] == "ray"
    assert both["b"]["cost_eur"] == ray["cost_eur"]  # deterministic
    ratios = both["ratios_a_over_b"]
    assert ratios["cost_eur"] == pytest.approx(
        float(both["a"]["cost_eur"]) / float(both["b"]["cost_eur"]), abs=1e-4)
    assert set(ratios) >= {"cost_eur", "gpu_hours", "p95_wait_s"}


def test_compare_two_yaml_files_in_a_table(trace: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(GPU_YAML.read_text(encoding="utf-8")
                     .replace("max_replicas: 6", "max_replicas: 1"), encoding="utf-8")
    result = run("--trace", str(trace), "--deployment", str(GPU_YAML), "--compare", str(other),
                 "--node-boot-s", "30", "--model-load-s", "20")
    assert result.exit_code == 0, result.output
    assert "cost (EUR)" in result.stdout and "p95 queue wait" in result.stdout
    assert "other.yaml" in result.stdout and "a / b" in result.stdout
    both = json.loads(run("--trace", str(trace), "--deployment", str(GPU_YAML), "--compare",
                          str(other), "--node-boot-s", "5", "--model-load-s", "5",
                          "--json").stdout)
    # (With a 5 s start a second replica pays off during the burst; with the default start
    # the burst drains before one could serve, and the policy rightly does not buy it.)
    assert both["a"]["max_replicas"] > 1 and both["b"]["max_replicas"] == 1


def test_local_yaml_needs_a_deployment_name(trace: Path) -> None:
    result = run("--trace", str(trace), "--deployment", str(LOCAL_YAML))
    assert result.exit_code == 1
    assert "error: invalid_simulation:" in result.stderr
    assert "tiny-chat, minilm-embed" in result.stderr and "--deployment-name" in result.stderr
    ok = run("--trace", str(trace), "--deployment", str(LOCAL_YAML), "--deployment-name",
             "tiny-chat", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["instance_type"] == "local-L4"


@pytest.mark.parametrize(("content", "needle"), [
    (HEADER + "1.0,10,5\n0.5,10,5\n", ":3: arrival_s 0.5 is before the previous request's 1"),
    ("time,prompt,completion\n", ":1: the header must be"),
])
def test_bad_trace_is_a_one_line_error_with_the_line(tmp_path: Path, content: str,
                                                     needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    result = run("--trace", str(path), "--deployment", str(GPU_YAML))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid_trace: ") and needle in result.stderr
    assert "Traceback" not in result.output


def test_bad_inputs_are_clear_errors(trace: Path, tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("version: 1\ndeployments:\n  - name: x\n", encoding="utf-8")
    result = run("--trace", str(trace), "--deployment", str(bad_yaml))
    assert result.exit_code == 1 and "error: invalid_deployment:" in result.stderr
    assert "deployments[0].model" in result.stderr

    result = run("--trace", str(trace), "--deployment", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1 and "error: unreadable_file:" in result.stderr

    result = run("--trace", str(trace), "--deployment", str(GPU_YAML), "--policy", "fastest")
    assert result.exit_code == 1 and "--policy must be one of inventiv, ray" in result.stderr

    result = run("--trace", str(trace), "--deployment", str(GPU_YAML), "--instance-type", "X9")
    assert result.exit_code == 1 and "unknown instance type 'X9'" in result.stderr
