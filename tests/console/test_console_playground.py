"""The playground in a real browser: a member of org A chats with a deployment and reads the
answer as it streams, then the request's tokens and cost; and a signed-in user ends one of their
other sessions from the profile page.

The answer comes from a real serving path on a local Ray cluster started for this module: Serve's
HTTP proxy, our ingress (the key check through the console's control API, limits, metering),
Ray Serve LLM's ``LLMServer`` and its stream batcher, with the null engine in place of vLLM
(``serve_apps/null_engine.py``: vLLM 0.32's wire format, one token per 50 ms), as the e2e tier's
``tiny-burst`` does. A vLLM replica here would be a second vLLM start in the suite, on top of
tests/serve_apps' shared one that runs later (and cannot be shared: it answers to its own control
API). The Ray cluster goes at module end, before any other tier starts its own.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import select

from core.models import Deployment, UsageRecord
from tests.client.conftest import free_port
from tests.conftest import SERVICE_TOKEN
from tests.console.conftest import (
    World,
    css,
    no_console_errors,
    rows_text,
    shot,
    sign_in,
    sign_out,
    table_loaded,
    wait,
)
from tests.serve_apps.conftest import READY_TIMEOUT_S, model_cache_root, require_modules

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
APP_NAME = "inventiv-console-playground"
SPEC = """
version: 1
deployments:
  - name: console-play
    model: {name: console-tiny, source: "%(tiny)s", task: chat}
    engine: {max_model_len: 512, dtype: float32, enforce_eager: true, max_num_seqs: 4}
    placement: {accelerator_type: null, cpus: 1, resources: {local_gpu_slot: 1}}
    autoscaling: {min_replicas: 1, max_replicas: 1, target_ongoing_requests: 2,
                  max_ongoing_requests: 8}
    limits: {max_tokens: 128}
    price: {input_eur_per_1m: "100", output_eur_per_1m: "1000"}
    env:
      RAYLLM_VLLM_ENGINE_CLS: serve_apps.null_engine.NullEngine
      INVENTIV_NULL_TOKEN_DELAY_S: "0.05"
"""


@pytest.fixture(scope="module")
def playground_ingress(console_world: World, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[str]:
    """The OpenAI endpoint (Serve on a local Ray) for the console's control API; its URL."""
    require_modules("ray", "vllm")
    import ray
    from ray import serve
    from ray._private.authentication_test_utils import reset_auth_token_state

    from core.ray_private import wait_app_running
    from core.spec import parse_spec
    from serve_apps.builder import IngressOptions, build_app
    from serve_apps.tiny_model import cached_tiny_model

    tiny = cached_tiny_model(model_cache_root())
    spec = parse_spec(SPEC % {"tiny": tiny})
    app = console_world.app
    with app.state.sessionmaker() as s, s.begin():
        for dep in spec.deployments:
            s.add(Deployment(name=dep.name, spec=dep.model_dump(mode="json"), status="running"))
    state = tmp_path_factory.mktemp("playground-ingress")
    token_file = state / "service_token"
    token_file.write_text(SERVICE_TOKEN)
    token_file.chmod(0o600)
    ray_token = state / "ray_auth_token"
    ray_token.write_text(secrets.token_hex(32))
    ray_token.chmod(0o600)
    temp_dir = tempfile.mkdtemp(prefix="ia-play-", dir="/tmp")
    options = IngressOptions(
        control_api_url=console_world.base, service_token_file=str(token_file),
        spool_dir=str(state / "spool"), key_ttl_s=2.0, key_stale_s=120.0, negative_ttl_s=1.0,
        usage_flush_interval_s=0.5, app_name=APP_NAME, num_replicas=1)
    port = free_port()
    env = pytest.MonkeyPatch()
    # Ray token auth on, as in production, the way tests/serve_apps/conftest.py turns it on
    # (and off again once the local cluster holds the token).
    env.setenv("RAY_AUTH_MODE", "token")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(ray_token))
    env.delenv("RAY_AUTH_TOKEN", raising=False)
    try:
        reset_auth_token_state()
        ray.init(num_cpus=4, resources={"local_gpu_slot": 2}, include_dashboard=False,
                 _temp_dir=temp_dir, log_to_driver=False, namespace="inventiv-console-tests")
        env.undo()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        errors: list[BaseException] = []

        def run() -> None:
            try:
                serve.run(build_app(spec, options), name=APP_NAME, route_prefix="/",
                          blocking=False)
            except BaseException as exc:  # noqa: BLE001 - reported by wait_app_running
                errors.append(exc)

        threading.Thread(target=run, name="playground-serve-run", daemon=True).start()
        wait_app_running(APP_NAME, READY_TIMEOUT_S, errors=errors)
        url = f"http://127.0.0.1:{port}"
        app.state.playground_ingress_url = url
        yield url
    finally:
        app.state.playground_ingress_url = None
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            env.undo()
            reset_auth_token_state()
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_member_chats_in_the_playground_streamed_with_tokens_and_cost(
        browser: WebDriver, console_world: World, playground_ingress: str) -> None:
    m = console_world.member_a
    browser.get_log("browser")  # what earlier tests left (their expected refusals) is theirs
    sign_in(browser, console_world, m.username, m.password)
    browser.get(console_world.base + "/playground")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-model option"))
    Select(css(browser, "#chat-org")).select_by_value(str(console_world.org_a))
    wait(browser).until(lambda d: "console-tiny" in css(d, "#chat-model").text)
    # The page never holds a key: nothing key-like in its HTML, and none in its storage.
    held = browser.execute_script(
        "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie")
    assert not re.search(r"ia-[A-Za-z0-9_]{16,}", held + browser.page_source)
    max_tokens = css(browser, "#chat-max")
    max_tokens.clear()
    max_tokens.send_keys("60")
    css(browser, "#chat-input").send_keys("Say something about GPUs")
    css(browser, "#chat-send").click()
    # Streamed: the answer grows over several chunks while the request is still running.
    seen: list[int] = []

    def growing(d: WebDriver) -> bool:
        n = d.execute_script(
            "const a = document.querySelector('#chat-log li.assistant');"
            "return a && a.getAttribute('aria-busy') === 'true' ? a.innerText.length : -1")
        if n and n > 0:
            seen.append(int(n))
        return len(set(seen)) >= 2
    WebDriverWait(browser, 60, poll_frequency=0.05).until(growing)
    wait(browser).until(lambda d: css(d, "#chat-stats").get_attribute("data-done"))
    done = json.loads(css(browser, "#chat-stats").get_attribute("data-done"))
    usage = done["usage"]
    assert usage["completion_tokens"] == 60 and usage["prompt_tokens"] > 0, done
    # Priced deployment: exact cost = tokens x its prices.
    want = (Decimal(100) * usage["prompt_tokens"] + Decimal(1000) * 60) / 1_000_000
    assert Decimal(done["cost_eur"]) == want.quantize(Decimal("0.000001")), done
    assert done["cost_basis"] == "price"
    stats = css(browser, "#chat-stats").text
    assert "60 completion tokens" in stats and "€" in stats, stats
    answer = css(browser, "#chat-log li.assistant").text
    assert len(answer) > 10
    shot(browser, "playground")
    # A second turn carries the conversation (the prompt grows with the first answer).
    css(browser, "#chat-input").send_keys("And more?")
    css(browser, "#chat-send").click()
    wait(browser).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-log li")) == 4
                        and json.loads(css(d, "#chat-stats").get_attribute("data-done") or "{}"
                                       ).get("usage", {}).get("prompt_tokens", 0)
                        > usage["prompt_tokens"])
    no_console_errors(browser, "/playground")
    # The usage is the org's, through the ingress's metering, on the playground key.
    keys = httpx.get(console_world.base + "/api/api-keys", headers=m.headers, timeout=30).json()
    play = [k for k in keys["items"] if k["name"] == "playground"]
    assert len(play) == 1 and play[0]["org_id"] == str(console_world.org_a), play
    key_id = uuid.UUID(play[0]["id"])
    deadline = time.monotonic() + 60
    rows: list[UsageRecord] = []
    while time.monotonic() < deadline and len(rows) < 2:
        with console_world.app.state.sessionmaker() as s:
            rows = list(s.scalars(select(UsageRecord).where(UsageRecord.api_key_id == key_id)
                                  .order_by(UsageRecord.id)))
        time.sleep(0.5)
    assert len(rows) == 2, rows
    assert rows[0].completion_tokens == 60 and rows[0].org_id == console_world.org_a
    sign_out(browser, console_world)


def test_user_signs_out_another_session_from_the_profile(
        browser: WebDriver, console_world: World) -> None:
    m = console_world.member_a
    other = httpx.post(console_world.base + "/api/auth/login",
                       headers={"User-Agent": "phone-app/1.0"},
                       json={"username": m.username, "password": m.password}, timeout=30)
    other_headers = {"Authorization": f"Bearer {other.json()['access_token']}"}
    assert httpx.get(console_world.base + "/api/auth/me", headers=other_headers,
                     timeout=30).status_code == 200
    browser.get_log("browser")
    sign_in(browser, console_world, m.username, m.password)
    browser.get(console_world.base + "/profile")
    wait(browser).until(lambda d: "phone-app/1.0" in rows_text(d, "sessions-table"))
    assert "this session" in rows_text(browser, "sessions-table")
    shot(browser, "profile-sessions")
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#sessions-table tbody tr")
               if "phone-app/1.0" in r.text)
    row.find_element(By.CSS_SELECTOR, "button").click()
    wait(browser).until(lambda d: "phone-app/1.0" not in rows_text(d, "sessions-table"))
    assert "signed out" in css(browser, "#flash").text
    assert httpx.get(console_world.base + "/api/auth/me", headers=other_headers,
                     timeout=30).status_code == 401
    # This browser's session is untouched.
    browser.get(console_world.base + "/keys")
    wait(browser).until(table_loaded("keys-table"))
    no_console_errors(browser, "/profile")
    sign_out(browser, console_world)
