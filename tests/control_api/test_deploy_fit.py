"""Deploy time, through the API: revision pinning against the fake Hub, the fit check (#11's
table: the tiny model fits; Llama-3.1-8B in bf16 does not fit a 24 GB L4 at max_model_len 128k
but fits at 8k), the cheapest-fitting-GPU choice fed by the estimate, and the source errors
(422 with a stable code, nothing stored; 503 only when the remote answers that it fails; no
answer at all: stored unpinned with a warning).

The fake Hub (tests/weights/fake_hub.py) serves config.json files only (the fit needs no
weights); Object Storage is moto's real S3 API server. Real database, both backends.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from control_api.serve_client import ServeClient
from core.fit import EngineShape, estimate
from core.models import ActionLog
from core.spec import DeploymentSpec
from serve_apps.builder import choose_accelerator
from serve_apps.tiny_model import TinyModelSpec
from tests.api.routes.test_deployments import PLANE, closed_port
from tests.conftest import MotoS3
from tests.weights.fake_hub import FakeHub

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
GATED = "meta-llama/Llama-gated"
TINY = "inventiv/tiny"
GOOD_TOKEN = "hf_good-token-never-echoed"
CONFIG_8B = Path(__file__).resolve().parents[1] / "core" / "data" / \
    "llama-3.1-8b-instruct.config.json"
TINY_CONFIG = {**asdict(TinyModelSpec()), "model_type": "llama", "architectures":
               ["LlamaForCausalLM"], "tie_word_embeddings": False, "torch_dtype": "float32"}


@pytest.fixture
def api(client: TestClient) -> TestClient:
    """The app with a Serve client aimed at a closed port (every apply is "pending")."""
    app: Any = client.app
    app.state.serve_client = ServeClient(f"http://127.0.0.1:{closed_port()}", timeout_s=2)
    app.state.plane = PLANE
    return client


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    llama = tmp_path_factory.mktemp("llama")
    (llama / "config.json").write_bytes(CONFIG_8B.read_bytes())
    tiny = tmp_path_factory.mktemp("tiny")
    (tiny / "config.json").write_text(json.dumps(TINY_CONFIG))
    with FakeHub(repos={LLAMA: {"files_dir": llama, "branches": {"main": "a" * 40,
                                                                 "v1": "b" * 40}},
                        GATED: {"files_dir": llama, "gated": True, "tokens": {GOOD_TOKEN}},
                        TINY: {"files_dir": tiny}}) as h:
        yield h


@pytest.fixture
def on_hub(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.repos[LLAMA].branches.update({"main": "a" * 40, "v1": "b" * 40})
    return hub


def yaml_of(name: str = "chat-8b", source: str = f"hf:{LLAMA}", gpu: str | None = "L4",
            max_model_len: int = 8192, candidates: list[str] | None = None,
            extra_model: str = "", extra_placement: str = "") -> str:
    placement = f"accelerator_type: {gpu}" if gpu else "cpus: 1"
    if candidates:
        placement += f", accelerator_candidates: {json.dumps(candidates)}"
    return f"""\
version: 1
deployments:
  - name: {name}
    model: {{name: {name}-model, source: "{source}"{extra_model}}}
    engine: {{max_model_len: {max_model_len}, dtype: bfloat16}}
    placement: {{{placement}{extra_placement}}}
    limits: {{max_tokens: 128}}
"""


def post(api: TestClient, headers: dict[str, str], text: str) -> Any:
    return api.post("/api/deployments", json={"yaml": text}, headers=headers)


def error(r: Any) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


def assert_nothing_stored(api: TestClient, headers: dict[str, str], name: str) -> None:
    assert api.get(f"/api/deployments/{name}", headers=headers).status_code == 404
    with api.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        assert not list(s.scalars(select(ActionLog).where(
            ActionLog.type.like("deployment.%"), ActionLog.type != "deployment.apply")))


def test_8b_at_128k_does_not_fit_an_l4_and_the_refusal_names_the_numbers(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub) -> None:
    r = post(api, admin_headers, yaml_of(max_model_len=131072, candidates=["P100"]))
    status, code, message = error(r)
    assert (status, code) == (422, "no_gpu_fits"), r.text
    assert "no candidate GPU fits: needs 35." in message
    assert "weights 16.1 GB + KV cache 17.2 GB" in message and "bfloat16" in message
    assert "L4: does not fit (needs 35." in message and "24 GB GPU offers 21.6 GB usable" in message
    assert "P100: does not fit" in message and "16 GB GPU offers 14.4 GB usable" in message
    details = r.json()["error"]["details"]
    assert [(c["gpu"], c["fits"]) for c in details["candidates"]] == [("L4", False),
                                                                      ("P100", False)]
    assert_nothing_stored(api, admin_headers, "chat-8b")


def test_8b_at_8k_fits_an_l4_pinned_to_the_commit(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub) -> None:
    r = post(api, admin_headers, yaml_of(source=f"hf:{LLAMA}@main"))
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["change"] == "created"
    commit = on_hub.commit(LLAMA)
    assert item["spec"]["model"]["source"] == f"hf:{LLAMA}@{commit}"
    src = item["source"]
    assert (src["requested"], src["revision_requested"], src["revision"], src["pinned"]) == (
        f"hf:{LLAMA}@main", "main", commit, True)
    assert src["warnings"] == []
    want = estimate(json.loads(CONFIG_8B.read_text()),
                    EngineShape(max_model_len=8192, dtype="bfloat16"))
    assert item["spec"]["placement"]["model_memory_gb"] == want.gpu_memory_gb
    assert src["fit"]["need_gb"] == round(want.need_bytes / 1e9, 2)
    assert src["fit"]["model_memory_gb_from"] == "estimate"
    assert [(c["gpu"], c["gpu_memory_gb"], c["fits"]) for c in src["fit"]["candidates"]] == [
        ("L4", 24.0, True)]
    shown = api.get("/api/deployments/chat-8b", headers=admin_headers).json()
    assert shown["source"]["revision"] == commit and shown["source"]["pinned_at"]
    assert shown["spec"]["model"]["source"] == f"hf:{LLAMA}@{commit}"
    # The config.json was read at the pinned commit.
    assert on_hub.gets[(LLAMA, "config.json")] >= 1
    assert any(p.endswith(f"/resolve/{commit}/config.json") for _, p, _ in on_hub.requests)

    # Applying the same file again: main has not moved, unchanged.
    again = post(api, admin_headers, yaml_of(source=f"hf:{LLAMA}@main")).json()["items"][0]
    assert again["change"] == "unchanged" and again["version"] == 1
    # main moves: the next apply pins the new commit (a new version).
    on_hub.repos[LLAMA].branches["main"] = "c" * 40
    moved = post(api, admin_headers, yaml_of(source=f"hf:{LLAMA}@main")).json()["items"][0]
    assert (moved["change"], moved["version"]) == ("updated", 2)
    assert moved["spec"]["model"]["source"] == f"hf:{LLAMA}@{'c' * 40}"
    # A tag or a commit given as such.
    v1 = post(api, admin_headers, yaml_of(source=f"hf:{LLAMA}@v1")).json()["items"][0]
    assert v1["source"]["revision"] == "b" * 40
    sha = post(api, admin_headers, yaml_of(source=f"hf:{LLAMA}@{'b' * 40}")).json()["items"][0]
    assert sha["change"] == "unchanged" and sha["source"]["revision_requested"] == "b" * 40


def test_a_spec_read_back_and_written_again_is_checked_again(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub) -> None:
    assert post(api, admin_headers, yaml_of()).status_code == 200
    spec = api.get("/api/deployments/chat-8b", headers=admin_headers).json()["spec"]
    assert spec["placement"]["model_memory_gb"]  # filled by the estimate
    spec["engine"]["max_model_len"] = 131072
    r = api.post("/api/deployments", json={"spec": {"version": 1, "deployments": [spec]}},
                 headers=admin_headers)
    assert error(r)[:2] == (422, "no_gpu_fits"), r.text
    # The user's own model_memory_gb is kept (an override), with a warning.
    r = post(api, admin_headers, yaml_of(max_model_len=131072,
                                         extra_placement=", model_memory_gb: 20"))
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["spec"]["placement"]["model_memory_gb"] == 20
    assert item["source"]["fit"]["model_memory_gb_from"] == "spec"
    assert "no candidate GPU fits" in item["source"]["warnings"][0]


def test_the_estimate_feeds_the_cheapest_fitting_gpu_choice(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub) -> None:
    # Without the estimate, the cheapest candidate (L4) is chosen.
    bare = DeploymentSpec.model_validate({
        "name": "x", "model": {"name": "x", "source": "/m"}, "engine": {"max_model_len": 131072},
        "limits": {"max_tokens": 1},
        "placement": {"accelerator_type": "L4", "accelerator_candidates": ["L40S"]}})
    assert choose_accelerator(bare) == "L4"
    r = post(api, admin_headers, yaml_of(max_model_len=131072, candidates=["L40S"]))
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert [(c["gpu"], c["fits"]) for c in item["source"]["fit"]["candidates"]] == [
        ("L4", False), ("L40S", True)]
    stored = DeploymentSpec.model_validate(item["spec"])
    assert 35 < (stored.placement.model_memory_gb or 0) < 48
    assert choose_accelerator(stored) == "L40S"


def test_the_tiny_model_fits(api: TestClient, admin_headers: dict[str, str],
                             on_hub: FakeHub) -> None:
    r = post(api, admin_headers, yaml_of(name="tiny", source=f"hf:{TINY}", max_model_len=512))
    assert r.status_code == 200, r.text
    fit = r.json()["items"][0]["source"]["fit"]
    assert fit["candidates"][0]["fits"] and fit["need_gb"] < 2
    # A CPU placement: pinned, no config read, nothing to check.
    gets = on_hub.gets[(TINY, "config.json")]
    r = post(api, admin_headers, yaml_of(name="tiny-cpu", source=TINY, gpu=None))
    item = r.json()["items"][0]
    assert item["source"]["pinned"] and item["source"]["fit"] is None
    assert item["spec"]["model"]["source"] == f"hf:{TINY}@{on_hub.commit(TINY)}"
    assert on_hub.gets[(TINY, "config.json")] == gets


def put_secret(api: TestClient, headers: dict[str, str], name: str, value: str) -> None:
    r = api.put(f"/api/secrets/{name}", json={"value": value}, headers=headers)
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize(("source", "token", "code"), [
    (f"hf:{LLAMA}@no-such-branch", None, "source_not_found"),
    ("hf:meta-llama/no-such-model", None, "source_not_found"),
    (f"hf:{GATED}", None, "source_unauthorized"),
    (f"hf:{GATED}", "hf_wrong-token", "source_gated"),
])
def test_source_refusals_are_422_with_a_stable_code(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub,
        source: str, token: str | None, code: str) -> None:
    extra = ""
    if token is not None:
        put_secret(api, admin_headers, "hf-token", token)
        extra = ", hf_token: {secret: hf-token}"
    r = post(api, admin_headers, yaml_of(source=source, extra_model=extra))
    status, got, message = error(r)
    assert (status, got) == (422, code), r.text
    assert "deployment 'chat-8b'" in message
    assert token is None or token not in r.text
    assert_nothing_stored(api, admin_headers, "chat-8b")


def test_a_gated_model_with_the_stored_token(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub) -> None:
    extra = ", hf_token: {secret: hf-token}"
    r = post(api, admin_headers, yaml_of(source=f"hf:{GATED}", extra_model=extra))
    assert error(r)[:2] == (422, "unknown_secret"), r.text
    put_secret(api, admin_headers, "hf-token", GOOD_TOKEN)
    r = post(api, admin_headers, yaml_of(source=f"hf:{GATED}", extra_model=extra))
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["source"]["pinned"]
    assert GOOD_TOKEN not in r.text
    assert (("GET", f"/api/models/{GATED}/revision/main", GOOD_TOKEN) in on_hub.requests)


def test_a_hub_that_does_not_answer_stores_it_unpinned_with_a_warning(
        api: TestClient, admin_headers: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    r = post(api, admin_headers, yaml_of(max_model_len=131072))
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["spec"]["model"]["source"] == f"hf:{LLAMA}"
    assert item["spec"]["placement"].get("model_memory_gb") is None
    src = item["source"]
    assert (src["pinned"], src["revision"], src["fit"]) == (False, None, None)
    assert src["warnings"][0].startswith("revision not pinned: revision 'main' of "
                                         f"{LLAMA}: no answer from the Hub")
    assert src["warnings"][1].startswith("fit not checked")


class _Failing(BaseHTTPRequestHandler):
    """A Hub answering 503 to everything (an outage on its side)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_hub_answering_5xx_is_503_source_unreachable(
        api: TestClient, admin_headers: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        r = post(api, admin_headers, yaml_of())
    finally:
        server.shutdown()
        server.server_close()
    status, code, message = error(r)
    assert (status, code) == (503, "source_unreachable"), r.text
    assert r.headers["retry-after"] == "30" and "503" in message
    assert_nothing_stored(api, admin_headers, "chat-8b")


def test_a_local_directory_is_read_from_disk(
        api: TestClient, admin_headers: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(CONFIG_8B.read_bytes())
    r = post(api, admin_headers, yaml_of(source=str(tmp_path), max_model_len=131072))
    assert error(r)[:2] == (422, "no_gpu_fits"), r.text
    r = post(api, admin_headers, yaml_of(source=str(tmp_path)))
    assert r.status_code == 200, r.text
    src = r.json()["items"][0]["source"]
    assert (src["pinned"], src["fit"]["candidates"][0]["fits"]) == (False, True)
    (tmp_path / "config.json").write_text("{not json")
    r = post(api, admin_headers, yaml_of(source=str(tmp_path), max_model_len=4096))
    assert error(r)[:2] == (422, "invalid_model_config"), r.text
    r = post(api, admin_headers, yaml_of(name="elsewhere", source="/no/such/dir"))
    assert r.status_code == 200, r.text
    assert "is not on the control API's host" in r.json()["items"][0]["source"]["warnings"][0]


@pytest.fixture(scope="module")
def s3_server(moto_s3: MotoS3) -> str:
    moto_s3.bucket("models")
    moto_s3.put("models", "llama-8b", {"config.json": CONFIG_8B.read_bytes()})
    return moto_s3.url


def test_object_storage_config_is_read_through_the_s3_api(
        api: TestClient, admin_headers: dict[str, str], s3_server: str) -> None:
    put_secret(api, admin_headers, "s3-id", "SCWTEST")
    put_secret(api, admin_headers, "s3-key", "test-secret")
    extra = (f", s3: {{endpoint_url: \"{s3_server}\", region: fr-par, "
             "access_key_id: {secret: s3-id}, secret_access_key: {secret: s3-key}}")
    r = post(api, admin_headers, yaml_of(source="s3://models/llama-8b", max_model_len=131072,
                                         extra_model=extra))
    assert error(r)[:2] == (422, "no_gpu_fits"), r.text
    r = post(api, admin_headers, yaml_of(source="s3://models/llama-8b", extra_model=extra))
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["spec"]["model"]["source"] == "s3://models/llama-8b"
    assert r.json()["items"][0]["source"]["fit"]["candidates"][0]["fits"] is True
    for source in ("s3://models/nothing-here", "s3://no-such-bucket/llama-8b"):
        r = post(api, admin_headers, yaml_of(name="missing", source=source, extra_model=extra))
        assert error(r)[:2] == (422, "source_not_found"), (source, r.text)
    # An endpoint that does not answer: stored, the fit not checked (a warning says so).
    dead = extra.replace(s3_server, f"http://127.0.0.1:{closed_port()}")
    r = post(api, admin_headers, yaml_of(name="dead", source="s3://models/llama-8b",
                                         max_model_len=131072, extra_model=dead))
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["source"]["warnings"][0].startswith("fit not checked")


def test_a_re_apply_while_the_hub_does_not_answer_keeps_the_last_pin(
        api: TestClient, admin_headers: dict[str, str], on_hub: FakeHub,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = post(api, admin_headers, yaml_of()).json()["items"][0]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    again = post(api, admin_headers, yaml_of()).json()["items"][0]
    assert (again["change"], again["spec"]) == ("unchanged", first["spec"])
    assert again["source"]["revision"] == on_hub.commit(LLAMA)
    assert again["source"]["fit"] == first["source"]["fit"]
    assert again["source"]["warnings"][0].endswith("kept the commit pinned at the last apply")
    # Another engine shape: still on the pinned commit, but the fit could not be checked.
    longer = post(api, admin_headers, yaml_of(max_model_len=16384)).json()["items"][0]
    assert longer["change"] == "updated"
    assert longer["spec"]["model"]["source"] == f"hf:{LLAMA}@{on_hub.commit(LLAMA)}"
    assert longer["source"]["fit"] is None
    assert longer["source"]["warnings"][1].startswith("fit not checked")


def test_the_hubs_parameter_count_is_used_when_it_gives_one() -> None:
    from control_api.services.model_config import _safetensors_total

    assert _safetensors_total({"safetensors": {"total": 8_030_261_248}}) == 8_030_261_248
    for info in ({}, {"safetensors": None}, {"safetensors": {"total": "8B"}},
                 {"safetensors": {"total": True}}, {"safetensors": {"total": 0}}, []):
        assert _safetensors_total(info) is None
