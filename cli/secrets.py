"""`inventiv secrets set|list|show|delete`: stored secrets (platform admin) that deployment specs
reference as ``{secret: NAME}`` (``model.hf_token``, ``model.s3`` keys, ``env`` values).

The value goes in on stdin, from ``--from-file`` or from a hidden prompt, never as a command
argument (argv lands in shell history and in every process listing). No command prints a value:
the control API never returns one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli.config import make_client
from cli.output import JsonOpt, fail, handles_errors, info, print_fields, print_json, print_table

app = typer.Typer(help="Stored secrets deployments reference as {secret: NAME} (values are "
                       "write-only).", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Secret name, e.g. hf-token.")]
# The server's limit (control_api.services.secrets.MAX_VALUE_BYTES); checked here too so a
# wrong file (an image, a model) is refused before it is read whole or sent.
MAX_VALUE_BYTES = 16 * 1024
INVALID = "invalid_secret_value"


def _path(name: str) -> str:
    return f"/api/secrets/{quote(name, safe='')}"


def _decode(data: bytes, where: str) -> str:
    if len(data) > MAX_VALUE_BYTES:
        raise fail(INVALID, f"{where}: longer than {MAX_VALUE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(INVALID, f"{where}: not UTF-8 text") from None
    # Files and `echo` end with a newline that is not part of a token or key.
    value = text.rstrip("\r\n")
    if not value:
        raise fail(INVALID, f"{where}: the value is empty")
    return value


def read_value(from_file: Path | None) -> str:
    """The value from ``from_file``, else piped stdin, else a hidden prompt (typed twice)."""
    if from_file is not None:
        try:
            with from_file.open("rb") as f:
                return _decode(f.read(MAX_VALUE_BYTES + 1), str(from_file))
        except OSError as exc:
            raise fail("unreadable_file", f"{from_file}: {exc.strerror or exc}") from None
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        typed = typer.prompt("Value", hide_input=True, confirmation_prompt=True)
        return _decode(typed.encode("utf-8"), "the value")
    raw = stdin.buffer.read(MAX_VALUE_BYTES + 1) if hasattr(stdin, "buffer") \
        else stdin.read(MAX_VALUE_BYTES + 1).encode("utf-8")
    return _decode(raw, "stdin")


def _used_by(s: dict[str, Any]) -> str:
    return ", ".join(s.get("used_by") or []) or "-"


@app.command("set")
@handles_errors
def set_secret(
    name: NameArg,
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", dir_okay=False,
        help="Read the value from this file (trailing newlines dropped).")] = None,
    description: Annotated[str | None, typer.Option(
        "--description", help="What it is for (kept on a replace when omitted).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create or replace a secret (the value is never printed).

    The value comes from --from-file, or stdin (`inventiv secrets set hf-token < token.txt`),
    or a hidden prompt. Running replicas keep the value they fetched until they restart.
    """
    value = read_value(from_file)
    body: dict[str, Any] = {"value": value}
    if description is not None:
        body["description"] = description
    with make_client() as client:
        s = client.request("PUT", _path(name), json=body)
    if json_out:
        print_json(s)
        return
    # A new secret is created and updated in the same instant; a replace moves updated_at.
    verb = "Created" if s["created_at"] == s["updated_at"] else "Replaced"
    info(f"{verb} secret {s['name']} (used by: {_used_by(s)}). Reference it as "
         f"{{secret: {s['name']}}} in a deployment file.")


@app.command("list")
@handles_errors
def list_secrets(json_out: JsonOpt = False) -> None:
    """List stored secrets and the deployments using each (never a value)."""
    with make_client() as client:
        result = client.request("GET", "/api/secrets")
    if json_out:
        print_json(result)
        return
    print_table("Secrets", ["name", "description", "used by", "updated", "updated by"],
                [(s["name"], s.get("description"), s.get("used_by"), s["updated_at"],
                  s.get("updated_by")) for s in result["items"]], empty="no secret")


@app.command("show")
@handles_errors
def show(name: NameArg, json_out: JsonOpt = False) -> None:
    """Show one secret's metadata and the deployments using it (never its value)."""
    with make_client() as client:
        s = client.request("GET", _path(name))
    if json_out:
        print_json(s)
        return
    print_fields(f"Secret {s['name']}", [
        ("description", s.get("description")), ("used by", s.get("used_by")),
        ("created", s["created_at"]), ("created by", s.get("created_by")),
        ("updated", s["updated_at"]), ("updated by", s.get("updated_by"))])


@app.command("delete")
@handles_errors
def delete(name: NameArg) -> None:
    """Delete a secret (refused while a stored deployment references it).

    The error names the deployments that reference it: change or delete them first.
    """
    with make_client() as client:
        client.request("DELETE", _path(name))
    info(f"Deleted secret {name}")
