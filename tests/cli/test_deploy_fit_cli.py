"""`inventiv deploy` / `inventiv deployments show` with revision pinning and the fit check,
against the real control API (uvicorn) and the fake Hub serving Llama-3.1-8B's config.json."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Cli, closed_port_url
from tests.weights.fake_hub import FakeHub

REPO = "meta-llama/Llama-3.1-8B-Instruct"
CONFIG_8B = Path(__file__).resolve().parents[1] / "core" / "data" / \
    "llama-3.1-8b-instruct.config.json"
COMMIT = "0e9e39f249a16976918f6564b8830bc894c89659"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    files = tmp_path_factory.mktemp("llama")
    (files / "config.json").write_bytes(CONFIG_8B.read_bytes())
    with FakeHub(repos={REPO: {"files_dir": files, "branches": {"main": COMMIT}}}) as h:
        yield h


def deployment_file(tmp_path: Path, max_model_len: int) -> Path:
    path = tmp_path / f"chat-{max_model_len}.yaml"
    path.write_text(f"""\
version: 1
deployments:
  - name: chat-8b
    model: {{name: llama-8b, source: "hf:{REPO}"}}
    engine: {{max_model_len: {max_model_len}, dtype: bfloat16}}
    placement: {{accelerator_type: L4, accelerator_candidates: [P100]}}
    limits: {{max_tokens: 256}}
""")
    return path


def test_deploy_refuses_a_misfit_then_pins_the_revision(
        admin_cli: Cli, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    refused = admin_cli("deploy", "-f", str(deployment_file(tmp_path, 131072)))
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: no_gpu_fits: deployment 'chat-8b': no candidate "
                                     "GPU fits: needs 35.")
    assert "L4: does not fit" in refused.stderr and "P100: does not fit" in refused.stderr
    assert "Fit: needs 35." in refused.stdout and "21.6" in refused.stdout
    assert "Traceback" not in refused.output
    assert admin_cli("deployments", "show", "chat-8b").exit_code == 1

    done = admin_cli.ok("deploy", "-f", str(deployment_file(tmp_path, 8192)))
    assert f"main -> {COMMIT[:12]}" in done.stdout and "created" in done.stdout
    shown = admin_cli.ok("deployments", "show", "chat-8b").stdout
    assert re.search(r"revision requested\s+\S\s+main\s", shown), shown
    assert COMMIT in shown and f"hf:{REPO}@{COMMIT}" in shown
    assert "Fit: needs 19." in shown
    as_json = admin_cli.json("deployments", "show", "chat-8b")
    assert (as_json["source"]["revision"], as_json["source"]["requested"]) == (COMMIT,
                                                                               f"hf:{REPO}")


def test_deploy_without_the_hub_warns_it_is_not_pinned(
        admin_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    done = admin_cli.ok("deploy", "-f", str(deployment_file(tmp_path, 131072)))
    assert "main (not pinned)" in done.stdout
    assert "warning: chat-8b: revision not pinned" in done.stderr
    assert "warning: chat-8b: fit not checked" in done.stderr
