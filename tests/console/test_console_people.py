"""People in a real browser: an org admin invites a user and withdraws the invitation; a
platform admin makes a password-reset link, and the user sets a new password through it."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from core.models import Role
from tests.conftest import Factory
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


def test_org_admin_invites_and_withdraws(browser: WebDriver, console_world: World,
                                         console_factory: Factory) -> None:
    admin = console_factory.user(console_world.org_b, Role.ADMIN)
    invitee = console_factory.user()
    browser.get_log("browser")
    sign_in(browser, console_world, admin.username, admin.password)
    browser.get(console_world.base + "/people")
    wait(browser).until(table_loaded("orgs-table"))
    css(browser, "button[aria-label='Show members of console-org-b']").click()
    wait(browser).until(lambda d: admin.username in rows_text(d, "members-table"))
    wait(browser).until(table_loaded("invitations-table"))
    css(browser, "#member-username").send_keys(invitee.username)
    css(browser, "#member-form button[type=submit]").click()
    wait(browser).until(lambda d: invitee.username in rows_text(d, "invitations-table"))
    assert invitee.username not in rows_text(browser, "members-table")  # not a member yet
    shot(browser, "people-invitations")
    css(browser, f"button[aria-label='Cancel the invitation of {invitee.username}']").click()
    wait(browser).until(lambda d: "No pending invitation." in rows_text(d, "invitations-table"))
    mine = httpx.get(console_world.base + "/api/auth/invitations", headers=invitee.headers,
                     timeout=30).json()
    assert mine["items"] == []
    no_console_errors(browser, "/people (org admin)")
    sign_out(browser, console_world)


def test_admin_makes_a_reset_link_and_the_user_sets_a_password(
        browser: WebDriver, console_world: World, console_factory: Factory) -> None:
    user = console_factory.user(console_world.org_b, Role.VIEWER)
    browser.get_log("browser")
    sign_in(browser, console_world, "admin", console_world.admin_password)
    browser.get(console_world.base + "/people")
    wait(browser).until(lambda d: user.username in rows_text(d, "users-table"))
    css(browser, f"button[aria-label='Make a password-reset link for {user.username}']").click()
    wait(browser).until(lambda d: "/reset#" in (css(d, "#reset-url").get_attribute("value")
                                                or ""))
    link = css(browser, "#reset-url").get_attribute("value")
    assert browser.switch_to.active_element == css(browser, "#reset-created")
    no_console_errors(browser, "/people (reset link)")
    sign_out(browser, console_world)
    browser.get(link)
    wait(browser).until(ec.presence_of_element_located((By.ID, "reset-form")))
    assert "#" not in browser.current_url  # the token left the address bar
    css(browser, "#reset-new").send_keys("a-brand-new-password")
    css(browser, "#reset-again").send_keys("a-brand-new-password")
    css(browser, "#reset-form button[type=submit]").click()
    wait(browser).until(lambda d: css(d, "#reset-done").is_displayed())
    assert httpx.get(console_world.base + "/api/auth/me", headers=user.headers,
                     timeout=30).status_code == 401  # its sessions ended
    no_console_errors(browser, "/reset")
    sign_in(browser, console_world, user.username, "a-brand-new-password")
    sign_out(browser, console_world)
