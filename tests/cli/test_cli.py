"""The `inventiv` CLI against the real control API over HTTP (Postgres and SQLite)."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.models import (
    ActionLog,
    BillingInterval,
    Instance,
    InstanceState,
    InstanceStateHistory,
    Org,
)
from tests.cli.conftest import Cli, closed_port_url
from tests.conftest import ADMIN_PASSWORD

USER_PASSWORD = "alice-password-123"


def _stored(cli: Cli) -> dict[str, str]:
    return json.loads((cli.config_dir / "credentials.json").read_text())


# ---------------------------------------------------------------- login, logout, whoami


def test_login_stores_token_0600_and_whoami(cli: Cli) -> None:
    result = cli.ok("login", "--username", "admin", "--password", ADMIN_PASSWORD)
    path = cli.config_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = _stored(cli)
    assert stored["url"] == cli.url
    assert stored["token"].count(".") == 2  # a JWT
    # The token never reaches the terminal; the password neither.
    assert stored["token"] not in result.stdout + result.stderr
    assert ADMIN_PASSWORD not in result.stdout + result.stderr
    assert "Logged in" in result.stdout and "admin" in result.stdout

    me = cli.json("whoami")
    assert me["username"] == "admin" and me["is_platform_admin"] is True
    assert [(m["org_name"], m["role"]) for m in me["memberships"]] == [("default", "owner")]
    table = cli.ok("whoami").stdout
    assert "default" in table and "owner" in table


def test_login_prompts_for_a_hidden_password(cli: Cli) -> None:
    result = cli.ok("login", "--username", "admin", input=f"{ADMIN_PASSWORD}\n")
    assert ADMIN_PASSWORD not in result.stdout + result.stderr
    assert cli.json("whoami")["username"] == "admin"


def test_login_with_a_bad_password_fails_cleanly(cli: Cli) -> None:
    result = cli("login", "--username", "admin", "--password", "not-the-password")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: unauthorized: ")
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert not (cli.config_dir / "credentials.json").exists()


def test_logout_revokes_the_session_and_forgets_the_token(admin_cli: Cli) -> None:
    token = _stored(admin_cli)["token"]
    result = admin_cli.ok("logout")
    assert "Logged out" in result.stdout
    assert not (admin_cli.config_dir / "credentials.json").exists()
    # The old token is dead on the server, not just forgotten locally.
    denied = admin_cli("whoami", INVENTIV_TOKEN=token)
    assert denied.exit_code == 1
    assert denied.stderr.startswith("error: unauthorized: ")
    assert admin_cli.ok("logout").stdout.startswith("Not logged in")


def test_env_token_overrides_the_file(make_cli: Callable[[], Cli]) -> None:
    admin = make_cli()
    admin.login()
    token = _stored(admin)["token"]
    other = make_cli()  # no credentials file at all
    assert other("whoami").exit_code == 1
    assert other.json("whoami", INVENTIV_TOKEN=token)["username"] == "admin"


def test_xdg_config_home_is_respected(cli: Cli, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    cli.ok("login", "--username", "admin", "--password", ADMIN_PASSWORD,
           INVENTIV_CONFIG_DIR=None, XDG_CONFIG_HOME=str(xdg))
    assert (xdg / "inventiv" / "credentials.json").exists()
    assert cli.json("whoami", INVENTIV_CONFIG_DIR=None,
                    XDG_CONFIG_HOME=str(xdg))["username"] == "admin"


# ---------------------------------------------------------------- users and orgs


def test_users_and_orgs(admin_cli: Cli, make_cli: Callable[[], Cli]) -> None:
    created = admin_cli.json("users", "create", "alice", "--email", "alice@example.com",
                             "--password", USER_PASSWORD)
    assert created["username"] == "alice" and created["is_platform_admin"] is False
    assert "password" not in json.dumps(created)
    org = admin_cli.json("orgs", "create", "acme", "--display-name", "Acme Corp")
    assert org["name"] == "acme" and org["display_name"] == "Acme Corp"

    admin_cli.ok("orgs", "add-member", "acme", "alice", "--role", "admin")
    members = admin_cli.json("orgs", "members", "acme")["items"]
    assert [(m["username"], m["role"]) for m in members] == [("alice", "admin")]
    assert "alice" in admin_cli.ok("orgs", "members", "acme").stdout

    names = {o["name"] for o in admin_cli.json("orgs", "list")["items"]}
    assert names == {"default", "acme"}
    users = {u["username"] for u in admin_cli.json("users", "list")["items"]}
    assert users == {"admin", "alice"}
    assert admin_cli.json("users", "show", "alice")["email"] == "alice@example.com"
    assert admin_cli.json("users", "show", created["id"])["username"] == "alice"

    alice = make_cli()
    alice.login("alice", USER_PASSWORD)
    # Alice sees only her own org and herself.
    assert [o["name"] for o in alice.json("orgs", "list")["items"]] == ["acme"]
    assert [u["username"] for u in alice.json("users", "list")["items"]] == ["alice"]

    admin_cli.ok("orgs", "remove-member", "acme", "alice")
    assert admin_cli.json("orgs", "members", "acme")["items"] == []

    disabled = admin_cli.json("users", "disable", "alice")
    assert disabled["is_active"] is False
    denied = make_cli()("login", "--username", "alice", "--password", USER_PASSWORD)
    assert denied.exit_code == 1 and denied.stderr.startswith("error: unauthorized: ")
    assert admin_cli.json("users", "enable", "alice")["is_active"] is True


# ---------------------------------------------------------------- API keys


def test_keys_create_list_revoke(admin_cli: Cli) -> None:
    result = admin_cli.ok("keys", "create", "ci-key", "--org", "default", "--models", "m1,m2",
                          "--models", "m3", "--rpm", "60", "--tpm", "10000", "--budget-eur",
                          "12.50", "--expires-in-days", "30")
    secret_lines = [line for line in result.stdout.splitlines() if line.startswith("ia-")]
    assert len(secret_lines) == 1
    secret = secret_lines[0]
    assert "will not be shown again" in result.stderr

    listed = admin_cli.json("keys", "list")["items"]
    assert len(listed) == 1
    key = listed[0]
    assert key["name"] == "ci-key" and secret.startswith(key["prefix"])
    assert key["allowed_models"] == ["m1", "m2", "m3"]
    assert (key["rpm_limit"], key["tpm_limit"]) == (60, 10000)
    assert Decimal(key["monthly_budget_eur"]) == Decimal("12.50")
    expires = datetime.fromisoformat(key["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert key["revoked_at"] is None
    # The secret is never listed again, in JSON nor in the table.
    assert "key" not in key
    table = admin_cli.ok("keys", "list").stdout
    assert secret not in table and "ci-key" in table and "active" in table

    revoked = admin_cli.json("keys", "revoke", key["id"])
    assert revoked["revoked_at"] is not None and "key" not in revoked
    assert "revoked" in admin_cli.ok("keys", "list").stdout
    again = admin_cli.json("keys", "list", "--org", "default")["items"]
    assert again[0]["revoked_at"] is not None


def test_keys_create_json_returns_the_secret_once(admin_cli: Cli) -> None:
    created = admin_cli.json("keys", "create", "scripted")
    assert created["key"].startswith("ia-") and created["monthly_budget_eur"] is None
    assert created["allowed_models"] is None
    assert created["key"] not in admin_cli.ok("keys", "list", "--json").stdout


def test_keys_create_rejects_a_bad_budget_as_usage_error(admin_cli: Cli) -> None:
    result = admin_cli("keys", "create", "k", "--budget-eur", "lots")
    assert result.exit_code == 2
    assert "--budget-eur" in result.stderr


# ---------------------------------------------------------------- instances


def _insert_instances(db: sessionmaker[Session], n: int) -> list[uuid.UUID]:
    base = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    ids = []
    with db() as s, s.begin():
        for k in range(n):
            at = base + timedelta(minutes=10 * k)
            inst = Instance(launch_id=f"launch-{k}", cluster_name="test", provider_code="scaleway",
                            zone_code="fr-par-2", instance_type_name="L4-1-24G",
                            state=InstanceState.READY, state_entered_at=at + timedelta(minutes=3),
                            created_at=at, updated_at=at)
            s.add(inst)
            s.flush()
            prev = None
            for j, state in enumerate((InstanceState.REQUESTED, InstanceState.PROVISIONING,
                                       InstanceState.BOOTING, InstanceState.READY)):
                s.add(InstanceStateHistory(instance_id=inst.id, from_state=prev, to_state=state,
                                           at=at + timedelta(minutes=j), actor="test",
                                           reason=f"step {j}"))
                prev = state
            s.add(BillingInterval(instance_id=inst.id, provider_code="scaleway",
                                  zone_code="fr-par-2", instance_type_name="L4-1-24G",
                                  started_at=at + timedelta(minutes=1)))
            ids.append(inst.id)
    return ids


def test_instances_list_show_terminate(admin_cli: Cli, db: sessionmaker[Session]) -> None:
    ids = _insert_instances(db, 3)
    listed = admin_cli.json("instances", "list")
    assert [i["id"] for i in listed["items"]] == [str(i) for i in reversed(ids)]
    assert listed["next_cursor"] is None

    first = admin_cli.json("instances", "list", "--limit", "2")
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = admin_cli.json("instances", "list", "--limit", "2", "--cursor", first["next_cursor"])
    assert [i["id"] for i in rest["items"]] == [str(ids[0])]
    everything = admin_cli.json("instances", "list", "--limit", "2", "--all")
    assert len(everything["items"]) == 3 and everything["next_cursor"] is None
    assert admin_cli.json("instances", "list", "--state", "booting")["items"] == []
    table = admin_cli.ok("instances", "list", "--limit", "2").stdout
    assert str(ids[2]) in table and "more: --cursor" in table

    detail = admin_cli.json("instances", "show", str(ids[0]))
    assert [h["to_state"] for h in detail["history"]] == [
        "requested", "provisioning", "booting", "ready"]
    assert len(detail["billing_intervals"]) == 1
    assert detail["billing_intervals"][0]["ended_at"] is None
    shown = admin_cli.ok("instances", "show", str(ids[0])).stdout
    assert "History" in shown and "provisioning" in shown and "step 2" in shown
    assert "open" in shown

    terminated = admin_cli.json("instances", "terminate", str(ids[0]), "--yes",
                                "--reason", "cli test")
    assert terminated["state"] == "terminating"
    assert terminated["history"][-1]["reason"] == "cli test"
    # Terminating twice is a conflict, reported as such.
    again = admin_cli("instances", "terminate", str(ids[0]), "--yes")
    assert again.exit_code == 1
    assert again.stderr.startswith("error: invalid_transition: ")


def test_instances_terminate_asks_first(admin_cli: Cli, db: sessionmaker[Session]) -> None:
    (iid,) = _insert_instances(db, 1)
    declined = admin_cli("instances", "terminate", str(iid), input="n\n")
    assert declined.exit_code == 1
    assert admin_cli.json("instances", "show", str(iid))["state"] == "ready"


# ---------------------------------------------------------------- action logs


def _insert_logs(db: sessionmaker[Session], n: int, *, type_: str = "test.event",
                 at: datetime | None = None) -> None:
    at = at or datetime.now(UTC) - timedelta(minutes=5)
    with db() as s, s.begin():
        org_id = s.scalar(select(Org.id).where(Org.name == "default"))
        for k in range(n):
            s.add(ActionLog(type=type_, component="tests",
                            status="failure" if k % 3 == 0 else "success",
                            error_code="boom" if k % 3 == 0 else None,
                            error_message="it broke" if k % 3 == 0 else None,
                            org_id=org_id, duration_ms=k,
                            created_at=at + timedelta(seconds=k)))


def test_logs_paging_with_all(admin_cli: Cli, db: sessionmaker[Session]) -> None:
    _insert_logs(db, 7)
    page = admin_cli.json("logs", "--type", "test.event", "--limit", "3")
    assert len(page["items"]) == 3 and page["next_cursor"]
    assert page["counts"] == {"failure": 3, "success": 4}
    everything = admin_cli.json("logs", "--type", "test.event", "--limit", "3", "--all")
    assert len(everything["items"]) == 7 and everything["next_cursor"] is None
    assert len({item["id"] for item in everything["items"]}) == 7
    # Newest first.
    assert [i["duration_ms"] for i in everything["items"]] == [6, 5, 4, 3, 2, 1, 0]
    failures = admin_cli.json("logs", "--type", "test.event", "--status", "failure", "--all")
    assert {i["error_code"] for i in failures["items"]} == {"boom"}

    table = admin_cli.ok("logs", "--type", "test.event", "--limit", "3").stdout
    assert "counts: failure=3, success=4" in table and "more: --cursor" in table
    assert "boom: it broke" in table


def test_logs_time_range(admin_cli: Cli, db: sessionmaker[Session]) -> None:
    _insert_logs(db, 2, type_="old.event", at=datetime.now(UTC) - timedelta(days=3))
    _insert_logs(db, 1, type_="old.event", at=datetime.now(UTC) - timedelta(hours=1))
    assert len(admin_cli.json("logs", "--type", "old.event", "--since", "1d")["items"]) == 1
    assert len(admin_cli.json("logs", "--type", "old.event", "--until", "2d")["items"]) == 2
    since = (datetime.now(UTC) - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%S")
    assert len(admin_cli.json("logs", "--type", "old.event", "--since", since)["items"]) == 3
    bad = admin_cli("logs", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "--since" in bad.stderr


# ---------------------------------------------------------------- catalog and JSON output


def test_every_list_prints_parseable_json_only(admin_cli: Cli, db: sessionmaker[Session]) -> None:
    _insert_instances(db, 1)
    for args in (["users", "list"], ["orgs", "list"], ["orgs", "members", "default"],
                 ["keys", "list"], ["instances", "list"], ["logs"], ["whoami"],
                 ["catalog", "types"], ["catalog", "providers"], ["catalog", "zones"]):
        out = admin_cli.ok(*args, "--json").stdout
        data = json.loads(out)  # nothing but JSON on stdout
        assert isinstance(data, dict), args
        assert "\x1b[" not in out, args  # no ANSI styling


def test_catalog_types(admin_cli: Cli) -> None:
    types = admin_cli.json("catalog", "types", "--provider", "scaleway", "--gpu-model", "L4")
    by_name = {t["name"]: t for t in types["items"]}
    assert set(by_name) == {"L4-1-24G", "L4-2-24G", "L4-4-24G", "L4-8-24G"}
    assert by_name["L4-1-24G"]["hourly_eur"] == "0.75"
    table = admin_cli.ok("catalog", "types", "--zone", "fr-par-1").stdout
    assert "RENDER-S" in table and "1.2426" in table and "L4-1-24G" not in table


# ---------------------------------------------------------------- errors


def test_error_messages_for_401_403_404_422(admin_cli: Cli, make_cli: Callable[[], Cli]) -> None:
    anonymous = make_cli()
    unauth = anonymous("keys", "list")
    assert unauth.exit_code == 1
    assert unauth.stderr.startswith("error: unauthorized: ")
    assert "inventiv login" in unauth.stderr
    forged = anonymous("whoami", INVENTIV_TOKEN="not.a.jwt")
    assert forged.exit_code == 1 and forged.stderr.startswith("error: unauthorized: ")

    admin_cli.ok("users", "create", "bob", "--email", "bob@example.com",
                 "--password", USER_PASSWORD)
    bob = make_cli()
    bob.login("bob", USER_PASSWORD)
    forbidden = bob("users", "create", "eve", "--email", "eve@example.com",
                    "--password", USER_PASSWORD)
    assert forbidden.exit_code == 1
    assert forbidden.stderr.startswith("error: forbidden: ")

    missing = admin_cli("instances", "show", str(uuid.uuid4()))
    assert missing.exit_code == 1
    assert missing.stderr == "error: not_found: instance not found\n"
    no_org = admin_cli("keys", "list", "--org", "no-such-org")
    assert no_org.exit_code == 1 and no_org.stderr.startswith("error: not_found: ")

    malformed = admin_cli("instances", "show", "not-a-uuid")
    assert malformed.exit_code == 1
    assert malformed.stderr.startswith("error: validation_error: ")
    for result in (unauth, forbidden, missing, malformed):
        assert "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_server_is_a_clean_error(cli: Cli) -> None:
    url = closed_port_url()
    for args in (["keys", "list"], ["login", "--username", "admin", "--password", "x"],
                 ["logs", "--all"]):
        result = cli(*args, INVENTIV_API_URL=url, INVENTIV_TOKEN="whatever")
        assert result.exit_code == 1, args
        assert result.stderr.startswith(f"error: unreachable: cannot reach the control API at "
                                        f"{url}"), result.stderr
        assert "Traceback" not in result.output


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli("keys", "create").exit_code == 2  # missing NAME
    assert cli("orgs", "add-member", "default", "bob", "--role", "emperor").exit_code == 2
    assert cli("no-such-command").exit_code == 2


def test_db_check_on_the_test_database(cli: Cli, db_url: str) -> None:
    result = cli.ok("db", "check", INVENTIV_DATABASE_URL=db_url)
    assert "up to date" in result.stdout


def test_db_upgrade_then_check_on_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    cli = Cli("http://unused.invalid", tmp_path / "config")
    before = cli("db", "check", INVENTIV_DATABASE_URL=url)
    assert before.exit_code == 1
    assert before.stderr.startswith("error: migrations_out_of_date: ")
    assert "upgraded to head" in cli.ok("db", "upgrade", INVENTIV_DATABASE_URL=url).stdout
    assert "up to date" in cli.ok("db", "check", INVENTIV_DATABASE_URL=url).stdout
