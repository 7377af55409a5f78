"""The console's world: a live control API (uvicorn, real Postgres) with two orgs, their users,
instances that bill (reported through the internal lifecycle route, as the node provider does),
and a Chromium driven by Selenium.

Without Chromium the browser tests skip, unless ``INVENTIV_REQUIRE_BROWSER=1`` (``.ci/run`` sets
it, and installs Chromium when missing). The live server is session-scoped: one migrated
Postgres database, one uvicorn thread on a free port, one browser, shared by the console tests
(the browser tier stays short). The browser tests' helpers (waits, sign in and out,
screenshots, the console-log check) are here too, shared by every test module.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from control_api.app import create_app
from control_api.background import finops_refresh
from control_api.settings import Settings
from core.db import session_scope
from core.models import Role
from tests.conftest import (
    ADMIN_PASSWORD,
    JWT_SECRET,
    SERVICE_TOKEN,
    Factory,
    TestUser,
    migrated_postgres_database,
)

# Where the browser tests write their screenshots: a temp dir, so a test run leaves the
# checkout clean; INVENTIV_SCREENSHOTS_DIR=docs/screenshots refreshes the README's pictures.
SCREENSHOTS = Path(os.environ.get("INVENTIV_SCREENSHOTS_DIR")
                   or Path(tempfile.gettempdir()) / "inventiv-console-screenshots")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    base: str
    app: Any
    org_a: uuid.UUID
    org_b: uuid.UUID
    member_a: TestUser        # member of org A
    member_b: TestUser        # member of org B only
    admin_password: str
    live_instance: uuid.UUID  # running since 30 h (billing)
    old_instance: uuid.UUID   # ran for 2 days, gone since yesterday
    launch_ids: list[str]


class _Holder:
    """What :class:`tests.conftest.Factory` needs of a TestClient: the app."""

    def __init__(self, app: Any) -> None:
        self.app = app


def _event(launch_id: str, state: str, at: datetime, exists: bool | None,
           **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{launch_id}-{state}-{uuid.uuid4().hex[:8]}", "launch_id": launch_id,
            "cluster_name": "console-test", "provider": "scaleway",
            "instance_type": "L4-1-24G", "zone": "fr-par-2", "state": state,
            "at": at.isoformat(), "cloud_exists": exists, **extra}


def refresh_finops(app: Any) -> None:
    """What the background job does (the test app runs none): cost spans, usage, budgets."""
    with session_scope(app.state.sessionmaker) as s:
        finops_refresh(s, datetime.now(UTC))


def _seed(base: str, app: Any) -> World:
    factory = Factory(_Holder(app))  # type: ignore[arg-type]
    org_a, org_b = factory.org("console-org-a"), factory.org("console-org-b")
    member_a = factory.user(org_a, Role.MEMBER)
    member_b = factory.user(org_b, Role.MEMBER)
    now = datetime.now(UTC)
    live, old = f"console-live-{uuid.uuid4().hex[:6]}", f"console-old-{uuid.uuid4().hex[:6]}"
    events = [
        _event(live, "provisioning", now - timedelta(hours=30), True,
               provider_instance_id="srv-live"),
        _event(live, "ready", now - timedelta(hours=29, minutes=50), True,
               private_ip="10.0.0.5"),
        _event(old, "provisioning", now - timedelta(days=3), True),
        _event(old, "ready", now - timedelta(days=3) + timedelta(minutes=5), True),
        _event(old, "terminating", now - timedelta(days=1, minutes=5), True,
               reason="scale down"),
        _event(old, "terminated", now - timedelta(days=1), False),
    ]
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    r = httpx.post(f"{base}/api/internal/lifecycle-events", json={"events": events},
                   headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == [], r.text
    refresh_finops(app)
    login = httpx.post(f"{base}/api/auth/login",
                       json={"username": "admin", "password": ADMIN_PASSWORD}, timeout=30)
    admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
    items = httpx.get(f"{base}/api/instances", headers=admin, timeout=30).json()["items"]
    ids = {i["launch_id"]: uuid.UUID(i["id"]) for i in items}
    return World(base=base, app=app, org_a=org_a, org_b=org_b, member_a=member_a,
                 member_b=member_b, admin_password=ADMIN_PASSWORD, live_instance=ids[live],
                 old_instance=ids[old], launch_ids=[live, old])


@pytest.fixture(scope="session")
def console_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A live control API on Postgres with the seeded world."""
    with migrated_postgres_database("inventiv_console") as url:
        settings = Settings(
            database_url=url, data_dir=tmp_path_factory.mktemp("console-data"),
            admin_password=ADMIN_PASSWORD,  # type: ignore[arg-type]
            jwt_secret=JWT_SECRET,  # type: ignore[arg-type]
            service_token=SERVICE_TOKEN,  # type: ignore[arg-type]
            cookie_secure=False, run_migrations=False, background_jobs=False,
            argon2_time_cost=1, argon2_memory_cost=8192,
        )
        app = create_app(settings)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                if server.started:
                    break
                if not thread.is_alive():
                    pytest.fail("the console's uvicorn thread exited at start")
                time.sleep(0.05)
            else:
                pytest.fail("the console's uvicorn did not start")
            yield _seed(base, app)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            app.state.engine.dispose()


@pytest.fixture(scope="session")
def browser(console_world: World) -> Iterator[Any]:
    """Headless Debian Chromium through chromedriver, with the browser console log kept."""
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        why = ("chromium and chromium-driver are needed (`apt-get install -y chromium "
               "chromium-driver`; .ci/run installs them)")
        if os.environ.get("INVENTIV_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console_factory(console_world: World) -> Factory:
    """Users and orgs written straight into the live API's database (as tests.conftest's)."""
    return Factory(_Holder(console_world.app))  # type: ignore[arg-type]


# ---------------------------------------------------------------- browser helpers

WAIT_S = 30


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    # A table re-rendered while a condition reads it: read again.
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))


def css(driver: WebDriver, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def no_console_errors(driver: WebDriver, where: str, allow_refusals: bool = False) -> None:
    """No error in the browser console; ``allow_refusals``: except Chrome's own network line
    for an API answer of 403/404 the page expects (the API hiding what the caller may not see).
    """
    entries = driver.get_log("browser")
    errors = [e for e in entries if e.get("level") in ("SEVERE", "ERROR")
              and not (allow_refusals and e.get("source") == "network"
                       and re.search(r"status of 40[34]", e.get("message", "")))]
    assert errors == [], f"browser console errors on {where}: {errors}"


def shot(driver: WebDriver, name: str) -> None:
    """The whole page (the window grown to its height for the picture), into SCREENSHOTS."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    height = driver.execute_script(
        "return Math.min(document.documentElement.scrollHeight, 3000)")
    if height > size["height"]:
        driver.set_window_size(size["width"], height + 140)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    driver.set_window_size(size["width"], size["height"])


def rows_text(driver: WebDriver, table_id: str) -> str:
    """The table body's text, read in one script call (atomic against a re-render)."""
    return str(driver.execute_script(
        "const b = document.querySelector(arguments[0]); return b ? b.innerText : ''",
        f"#{table_id} tbody"))


def table_loaded(table_id: str) -> Any:
    def check(driver: WebDriver) -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"))
    return check


def sign_in(driver: WebDriver, world: World, username: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(world.base + "/costs")
    wait(driver).until(ec.url_contains("/login"))
    css(driver, "#username").send_keys(username)
    css(driver, "#password").send_keys(password)
    css(driver, "#login-form button[type=submit]").click()
    wait(driver).until(ec.url_contains("/costs"))
    wait(driver).until(ec.presence_of_element_located((By.ID, "logout")))


def sign_out(driver: WebDriver, world: World) -> None:
    css(driver, "#logout").click()
    wait(driver).until(ec.url_contains("/login"))
    driver.get(world.base + "/keys")
    wait(driver).until(ec.url_contains("/login?next=/keys"))
