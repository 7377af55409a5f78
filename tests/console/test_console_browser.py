"""The console end to end in a real browser (Debian's Chromium via chromedriver and Selenium).

One signed-in journey per role, in order (the tests share one browser and one live control API
on Postgres, see conftest): the admin signs in, reads the costs chart (points from the billing
intervals the lifecycle route recorded), filters instances, terminates one and sees its history,
searches the action logs; a member of org A creates a key (shown once; verified through the
internal verify route the ingress uses — using it with the ``openai`` client needs the serving
stack, which this tier does not start) and revokes it; a member of org B sees none of org A's
keys, logs or costs. Each page is screenshotted (into a temp dir, or $INVENTIV_SCREENSHOTS_DIR,
e.g. docs/screenshots/), and the browser's console log must hold no error on any page.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

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

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


# ---------------------------------------------------------------- the admin


def test_admin_signs_in_and_sees_the_costs_chart(browser: WebDriver, console_world: World) -> None:
    browser.get(console_world.base + "/login")
    assert css(browser, "#username") == browser.switch_to.active_element  # autofocus
    shot(browser, "login")
    no_console_errors(browser, "/login")
    sign_in(browser, console_world, "admin", console_world.admin_password)
    wait(browser).until(lambda d: int(css(d, "#chart").get_attribute("data-points") or 0) > 0)
    assert browser.find_elements(By.CSS_SELECTOR, "#chart canvas"), "uPlot drew no canvas"
    wait(browser).until(table_loaded("breakdown-table"))
    summary = css(browser, "#summary").text
    assert "Running instances\n1" in summary, summary
    assert "Burn rate\n€0.75 / h" in summary, summary  # one L4-1-24G at 0.75 €/h
    # The numbers behind the chart, one click away.
    css(browser, "#series-numbers summary").click()
    wait(browser).until(table_loaded("series-table"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#series-table tbody tr")) >= 24
    assert "L4-1-24G" in rows_text(browser, "breakdown-table")
    Select(css(browser, "#series-window")).select_by_value("7d")
    wait(browser).until(lambda d: int(css(d, "#chart").get_attribute("data-points") or 0) > 100)
    shot(browser, "costs")
    no_console_errors(browser, "/costs")


def test_csv_export_matches_the_table(browser: WebDriver, console_world: World) -> None:
    # The CSV is built from the same rows as the table; read it back through a Blob URL.
    csv_text = browser.execute_async_script("""
        const done = arguments[0];
        const t = document.getElementById('breakdown-table');
        const orig = URL.createObjectURL;
        URL.createObjectURL = b => { b.text().then(done); return orig.call(URL, b); };
        document.querySelector('button[data-table=breakdown-table]').click();
        URL.createObjectURL = orig;
    """)
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("instance type,EUR,Share")
    assert any(line.startswith("L4-1-24G,") for line in lines[1:]), lines


def test_admin_filters_instances_and_terminates_one(browser: WebDriver,
                                                    console_world: World) -> None:
    live, old = console_world.launch_ids
    browser.get(console_world.base + "/instances")
    wait(browser).until(lambda d: live in rows_text(d, "instances-table"))
    assert old in rows_text(browser, "instances-table")
    shot(browser, "instances")
    Select(css(browser, "#f-state")).select_by_value("terminated")
    css(browser, "#instance-filter button[type=submit]").click()
    wait(browser).until(lambda d: live not in rows_text(d, "instances-table"))
    assert old in rows_text(browser, "instances-table")
    no_console_errors(browser, "/instances")

    browser.get(f"{console_world.base}/instances/{console_world.live_instance}")
    wait(browser).until(lambda d: "ready" in rows_text(d, "history-table"))
    assert "open" in rows_text(browser, "billing-table")
    css(browser, "#terminate").click()
    dialog = css(browser, "#terminate-dialog")
    assert dialog.get_attribute("open") is not None
    css(browser, "#terminate-reason").send_keys("console test")
    css(browser, "#terminate-confirm").click()
    wait(browser).until(lambda d: "terminating" in rows_text(d, "history-table"))
    assert "console test" in rows_text(browser, "history-table")
    assert css(browser, "#field-state").text == "terminating"
    assert not css(browser, "#terminate").is_displayed()
    wait(browser).until(table_loaded("instance-logs"))
    shot(browser, "instance")
    no_console_errors(browser, "/instances/{id}")


def test_admin_searches_the_action_logs(browser: WebDriver, console_world: World) -> None:
    browser.get(console_world.base + "/logs")
    wait(browser).until(lambda d: "Matches per status" in css(d, "#log-counts").text)
    css(browser, "#l-instance").send_keys(str(console_world.live_instance))
    css(browser, "#log-filter button[type=submit]").click()
    short = str(console_world.live_instance)[:8]

    def only_live(d: WebDriver) -> bool:
        cells = d.find_elements(By.CSS_SELECTOR, "#logs-table tbody tr td:nth-child(5)")
        return bool(cells) and all(c.text == short for c in cells)
    wait(browser).until(only_live)
    shot(browser, "logs")
    no_console_errors(browser, "/logs")


DEPLOYMENT_YAML = """version: 1
deployments:
  - name: console-chat
    model:
      name: console-tiny
      source: builtin:tiny-llama
      task: chat
    engine:
      max_model_len: 512
    placement:
      accelerator_type: null
      cpus: 1
      resources: {local_gpu_slot: 1}
    autoscaling:
      min_replicas: 1
      max_replicas: MAX
    limits:
      max_tokens: 256
"""


def test_admin_applies_a_deployment_and_sees_errors_at_their_line(
        browser: WebDriver, console_world: World) -> None:
    browser.get(console_world.base + "/deployments")
    wait(browser).until(table_loaded("deployments-table"))
    ta = css(browser, "#apply-yaml")
    browser.execute_script("arguments[0].value = arguments[1]", ta,
                           DEPLOYMENT_YAML.replace("MAX", "0"))
    css(browser, "#apply-form button[type=submit]").click()
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#apply-list li"))
    first = css(browser, "#apply-list li")
    assert "Line 16" in first.text and "max_replicas" in first.text, first.text
    # The error is a button that puts the cursor on its line.
    assert browser.switch_to.active_element == css(browser, "#apply-list button")
    browser.switch_to.active_element.click()
    sel = browser.execute_script(
        "const t = arguments[0]; return t.value.slice(t.selectionStart, t.selectionEnd)", ta)
    assert sel.strip() == "max_replicas: 0"
    shot(browser, "deployments-error")
    browser.execute_script("arguments[0].value = arguments[1]", ta,
                           DEPLOYMENT_YAML.replace("MAX", "2"))
    css(browser, "#apply-form button[type=submit]").click()
    wait(browser).until(lambda d: "console-chat" in rows_text(d, "deployments-table"))
    assert "console-chat: created" in css(browser, "#flash").text
    # Replica bounds, changed in the table.
    mx = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[id$='-max']"))[0]
    mx.clear()
    mx.send_keys("3")
    css(browser, "button[aria-label='Save replica bounds of console-chat']").click()
    wait(browser).until(lambda d: "console-chat: updated" in css(d, "#flash").text)
    dep = httpx.get(console_world.base + "/api/deployments/console-chat",
                    headers=_admin_headers(console_world), timeout=30).json()
    assert dep["spec"]["autoscaling"]["max_replicas"] == 3
    shot(browser, "deployments")
    css(browser, "button[aria-label='Delete deployment console-chat']").click()
    wait(browser).until(ec.alert_is_present()).accept()
    wait(browser).until(lambda d: "being deleted" in css(d, "#flash").text)
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"
              and "status of 422" not in e.get("message", "")]
    assert errors == [], errors  # the one 422 is the invalid file the test sent on purpose


def _admin_headers(world: World) -> dict[str, str]:
    tok = httpx.post(world.base + "/api/auth/login",
                     json={"username": "admin", "password": world.admin_password},
                     timeout=30).json()["access_token"]
    return {"Authorization": f"Bearer {tok}"}


def test_admin_pages_render_without_errors(browser: WebDriver, console_world: World) -> None:
    for path, table in (("/catalog", "catalog-table"),):
        browser.get(console_world.base + path)
        wait(browser).until(table_loaded(table))
        shot(browser, path.strip("/"))
        no_console_errors(browser, path)
    assert "L4-1-24G" in rows_text(browser, "catalog-table")
    browser.get(console_world.base + "/people")
    wait(browser).until(table_loaded("orgs-table"))
    css(browser, "button[aria-label='Show members of console-org-a']").click()
    wait(browser).until(lambda d: console_world.member_a.username in rows_text(d, "members-table"))
    assert browser.switch_to.active_element == css(browser, "#h-members")
    wait(browser).until(lambda d: console_world.member_b.username in rows_text(d, "users-table"))
    shot(browser, "people")
    no_console_errors(browser, "/people")
    browser.get(console_world.base + "/profile")
    shot(browser, "profile")
    no_console_errors(browser, "/profile")
    # A phone-sized window: the navigation wraps, nothing is cut off horizontally.
    browser.set_window_size(390, 844)
    browser.get(console_world.base + "/costs")
    wait(browser).until(table_loaded("budgets-table"))
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, width
    shot(browser, "costs-phone")
    browser.set_window_size(1280, 1000)
    sign_out(browser, console_world)
    no_console_errors(browser, "sign-out")


# ---------------------------------------------------------------- members


def _verify(world: World, secret: str) -> httpx.Response:
    return httpx.post(world.base + "/api/internal/keys/verify",
                      json={"key_hash": hashlib.sha256(secret.encode()).hexdigest()},
                      headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}, timeout=30)


def test_member_creates_a_key_shown_once_and_revokes_it(browser: WebDriver,
                                                        console_world: World) -> None:
    m = console_world.member_a
    sign_in(browser, console_world, m.username, m.password)
    # A member sees no platform-wide cost section (the API refuses them), only their org's.
    assert not css(browser, "#summary-section").is_displayed()
    wait(browser).until(table_loaded("chargeback-table"))
    browser.get(console_world.base + "/keys")
    wait(browser).until(table_loaded("keys-table"))
    css(browser, "#key-name").send_keys("console-key")
    css(browser, "#key-rpm").send_keys("60")
    css(browser, "#key-form button[type=submit]").click()
    wait(browser).until(lambda d: css(d, "#key-secret").get_attribute("value"))
    secret = css(browser, "#key-secret").get_attribute("value")
    assert secret and secret in css(browser, "#key-snippet").get_attribute("value")
    assert "from openai import OpenAI" in css(browser, "#key-snippet").get_attribute("value")
    assert browser.switch_to.active_element == css(browser, "#key-created")
    wait(browser).until(lambda d: "console-key" in rows_text(d, "keys-table"))
    assert "60 rpm" in rows_text(browser, "keys-table")
    css(browser, "#copy-key").click()
    wait(browser).until(lambda d: "copied" in css(d, "#flash").text.lower()
                        or "ctrl+c" in css(d, "#flash").text.lower())
    shot(browser, "keys")
    ok = _verify(console_world, secret)
    assert ok.status_code == 200, ok.text
    assert ok.json()["org_id"] == str(console_world.org_a)
    # Shown once: a reload shows the prefix only.
    browser.refresh()
    wait(browser).until(lambda d: "console-key" in rows_text(d, "keys-table"))
    assert secret not in browser.page_source
    css(browser, "#keys-table button.danger").click()
    alert = wait(browser).until(ec.alert_is_present())
    alert.accept()
    wait(browser).until(lambda d: "revoked" in rows_text(d, "keys-table"))
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    gone = _verify(console_world, secret)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "revoked_api_key"
    no_console_errors(browser, "/keys")
    sign_out(browser, console_world)


def test_member_of_another_org_sees_none_of_it(browser: WebDriver,
                                               console_world: World) -> None:
    m = console_world.member_b
    sign_in(browser, console_world, m.username, m.password)
    wait(browser).until(table_loaded("chargeback-table"))
    assert "console-org-a" not in browser.page_source
    browser.get(console_world.base + "/keys")
    wait(browser).until(table_loaded("keys-table"))
    assert "console-key" not in rows_text(browser, "keys-table")
    assert "No keys yet." in rows_text(browser, "keys-table")
    browser.get(console_world.base + "/logs")
    wait(browser).until(table_loaded("logs-table"))
    logs = rows_text(browser, "logs-table")
    assert str(console_world.live_instance)[:8] not in logs
    assert "api_key" not in logs  # org A's key creation and revocation
    browser.get(console_world.base + "/people")
    wait(browser).until(table_loaded("orgs-table"))
    assert "console-org-b" in rows_text(browser, "orgs-table")
    assert "console-org-a" not in rows_text(browser, "orgs-table")
    wait(browser).until(table_loaded("users-table"))
    assert console_world.member_a.username not in rows_text(browser, "users-table")
    # Instances: exactly what the API lists for this member (the API's scoping is the console's).
    browser.get(console_world.base + "/instances")
    wait(browser).until(table_loaded("instances-table"))
    api = httpx.get(console_world.base + "/api/instances", headers=m.headers, timeout=30).json()
    shown = rows_text(browser, "instances-table")
    for launch_id in console_world.launch_ids:
        listed = any(i["launch_id"] == launch_id for i in api["items"])
        assert (launch_id in shown) == listed, launch_id
    # The admin-only controls are absent, and the API refuses the write anyway.
    browser.get(f"{console_world.base}/instances/{console_world.old_instance}")
    assert not browser.find_elements(By.ID, "terminate")
    no_console_errors(browser, "member of org B", allow_refusals=True)
    sign_out(browser, console_world)
