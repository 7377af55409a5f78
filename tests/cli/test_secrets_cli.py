"""`inventiv secrets …` against the real control API over HTTP (Postgres and SQLite): the value
goes in on stdin or from a file, is stored sealed, and is never printed by any command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_api.services import secrets as secrets_service
from core.models_secrets import StoredSecret
from tests.cli.conftest import Cli, LiveServer

TOKEN = "hf_cli-secret-value-0123456789-never-printed"
OTHER = "replaced-secret-value-never-printed"

DEPLOYMENT_YAML = """\
version: 1
deployments:
  - name: cli-secret-user
    model: {name: cli-secret-model, source: builtin:tiny-llama}
    engine: {max_model_len: 512}
    limits: {max_tokens: 64}
    env:
      API_TOKEN: {secret: cli-token}
      PLAIN: not-a-secret
"""


def stored_value(db: sessionmaker[Session], server: LiveServer, name: str) -> str | None:
    """The value as the control API would hand it to a replica (opened with its key)."""
    with db() as s:
        row = s.scalar(select(StoredSecret).where(StoredSecret.name == name))
        if row is None:
            return None
        box = secrets_service.box_for(server.app.state.settings)
        return box.open(name, row.ciphertext, row.key_id)


def output(result: object) -> str:
    return f"{getattr(result, 'stdout', '')}{getattr(result, 'stderr', '')}"


def test_set_from_stdin_and_file_list_show_delete_never_print_the_value(
        admin_cli: Cli, live_server: LiveServer, db: sessionmaker[Session],
        tmp_path: Path) -> None:
    created = admin_cli.ok("secrets", "set", "cli-token", "--description", "gated model",
                           input=TOKEN + "\n")
    assert "Created secret cli-token" in created.stdout
    assert TOKEN not in output(created)
    # The trailing newline of `echo`/files is not part of the value.
    assert stored_value(db, live_server, "cli-token") == TOKEN

    path = tmp_path / "token.txt"
    path.write_text(OTHER + "\r\n")
    replaced = admin_cli.ok("secrets", "set", "cli-token", "--from-file", str(path))
    assert "Replaced secret cli-token" in replaced.stdout
    assert OTHER not in output(replaced)
    assert stored_value(db, live_server, "cli-token") == OTHER

    # A deployment references it: list and show name it, the deploy output has no value.
    deploy_file = tmp_path / "dep.yaml"
    deploy_file.write_text(DEPLOYMENT_YAML)
    deployed = admin_cli.ok("deploy", "-f", str(deploy_file))
    assert OTHER not in output(deployed) and "not-a-secret" not in output(deployed)
    listed = admin_cli.json("secrets", "list")
    assert [(s["name"], s["description"], s["used_by"], s["updated_by"])
            for s in listed["items"]] == [("cli-token", "gated model", ["cli-secret-user"],
                                          "admin")]
    assert all("value" not in s for s in listed["items"])
    table = admin_cli.ok("secrets", "list")
    assert "cli-token" in table.stdout and "cli-secret-user" in table.stdout
    shown = admin_cli.ok("secrets", "show", "cli-token")
    assert "cli-secret-user" in shown.stdout and "gated model" in shown.stdout
    shown_dep = admin_cli.ok("deployments", "show", "cli-secret-user", "--json")
    assert OTHER not in shown_dep.stdout and "cli-token" in shown_dep.stdout
    for result in (table, shown, shown_dep):
        assert OTHER not in output(result) and TOKEN not in output(result)

    # In use: refused, naming the deployment; once the deployment is gone it can go.
    in_use = admin_cli("secrets", "delete", "cli-token")
    assert in_use.exit_code == 1
    assert in_use.stderr.startswith("error: secret_in_use: ")
    assert "cli-secret-user" in in_use.stderr
    assert stored_value(db, live_server, "cli-token") == OTHER
    admin_cli.ok("deployments", "delete", "cli-secret-user")
    gone = admin_cli.ok("secrets", "delete", "cli-token")
    assert "Deleted secret cli-token" in gone.stdout
    assert stored_value(db, live_server, "cli-token") is None
    assert admin_cli.json("secrets", "list") == {"items": []}
    missing = admin_cli("secrets", "show", "cli-token")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: secret_not_found: ")


def test_deploy_naming_an_unknown_secret_is_refused(admin_cli: Cli, tmp_path: Path) -> None:
    deploy_file = tmp_path / "dep.yaml"
    deploy_file.write_text(DEPLOYMENT_YAML)
    refused = admin_cli("deploy", "-f", str(deploy_file))
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: unknown_secret: ")
    assert "deployments[0].env.API_TOKEN" in refused.stderr and "cli-token" in refused.stderr
    assert admin_cli.json("deployments", "list")["items"] == []


def test_the_value_is_never_an_argument_and_bad_values_are_refused_locally(
        admin_cli: Cli, live_server: LiveServer, db: sessionmaker[Session],
        tmp_path: Path) -> None:
    # No option takes the value itself (argv is in shell history and `ps`).
    usage = admin_cli("secrets", "set", "argv-secret", "--value", TOKEN)
    assert usage.exit_code == 2
    assert stored_value(db, live_server, "argv-secret") is None
    empty = admin_cli("secrets", "set", "empty", input="\n")
    assert empty.exit_code == 1 and empty.stderr.startswith("error: invalid_secret_value: ")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (16 * 1024 + 1))
    too_big = admin_cli("secrets", "set", "big", "--from-file", str(big))
    assert too_big.exit_code == 1 and "longer than" in too_big.stderr
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00token")
    not_text = admin_cli("secrets", "set", "bin", "--from-file", str(binary))
    assert not_text.exit_code == 1 and "not UTF-8" in not_text.stderr
    absent = admin_cli("secrets", "set", "absent", "--from-file", str(tmp_path / "nope"))
    assert absent.exit_code == 1 and absent.stderr.startswith("error: unreadable_file: ")
    # A name the server refuses: its structured error, without the value.
    bad_name = admin_cli("secrets", "set", "Bad Name", input=TOKEN)
    assert bad_name.exit_code == 1
    assert bad_name.stderr.startswith("error: invalid_secret_name: ")
    assert TOKEN not in output(bad_name)
    for name in ("empty", "big", "bin", "absent"):
        assert stored_value(db, live_server, name) is None


def test_only_platform_admins_manage_secrets(admin_cli: Cli, make_cli: Callable[[], Cli]
                                             ) -> None:
    admin_cli.ok("users", "create", "carol", "--email", "carol@example.com",
                 "--password", "carol-password-123")
    carol = make_cli()
    carol.login("carol", "carol-password-123")
    denied = carol("secrets", "set", "carol-token", input=TOKEN)
    assert denied.exit_code == 1 and denied.stderr.startswith("error: forbidden: ")
    assert TOKEN not in output(denied)
    assert carol("secrets", "list").exit_code == 1
    assert admin_cli.json("secrets", "list") == {"items": []}
