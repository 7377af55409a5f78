"""`inventiv up`, `inventiv down`, `inventiv status`: the laptop cluster in one command.

Progress goes to stderr; stdout carries what scripts read: the URLs and the lines
``OPENAI_BASE_URL=…``, ``OPENAI_API_KEY=…``, ``INVENTIV_API_URL=…`` (with ``--env``, only those
lines as ``export`` statements, so ``eval "$(inventiv up --env)"`` works). The work is in
:mod:`cli.laptop`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from cli import laptop
from cli.output import JsonOpt, fail, print_fields, print_json, print_table

StateDirOpt = Annotated[Path, typer.Option(
    "--state-dir", envvar="INVENTIV_LAPTOP_DIR",
    help="Where the laptop cluster keeps its database, keys, logs and Ray state.")]


def _progress() -> laptop.Say:
    console = Console(stderr=True, highlight=False)

    def say(message: str) -> None:
        console.print(Text("• ", style="cyan") + Text(message))

    return say


def console_url(api_url: str) -> str:
    """The web console (served by the control API at ``/``; sign in as the admin)."""
    return api_url.rstrip("/") + "/"


def up(
    state_dir: StateDirOpt = laptop.DEFAULT_STATE_DIR,
    api_port: Annotated[int, typer.Option("--api-port", min=1, max=65535,
                                          help="Control API port.")] = 8080,
    serve_port: Annotated[int, typer.Option("--serve-port", min=1, max=65535,
                                            help="OpenAI endpoint (Serve HTTP) port.")] = 8000,
    dashboard_port: Annotated[int, typer.Option("--dashboard-port", min=1, max=65535,
                                                help="Ray dashboard port.")] = 8265,
    cluster_file: Annotated[Path, typer.Option(
        "--cluster", exists=True, dir_okay=False,
        help="Cluster file (cloud: local).")] = laptop.DEFAULT_CLUSTER_FILE,
    deployments: Annotated[list[Path] | None, typer.Option(
        "--deployments", "-f", exists=True, dir_okay=False,
        help="Deployment file(s) to deploy (repeatable); default "
             "configs/deployments/local.yaml.")] = None,
    org: Annotated[str, typer.Option("--org", help="Org of the printed API key.")] = "default",
    timeout: Annotated[float, typer.Option("--timeout", min=1,
                                           help="Seconds to wait for the models.")] = 900,
    update_interval: Annotated[int | None, typer.Option(
        "--update-interval", min=1, help="Autoscaler update interval (s).")] = None,
    env: Annotated[bool, typer.Option(
        "--env", help="Print only `export` lines (for eval \"$(inventiv up --env)\").")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Start the laptop cluster (control API, Ray head with the local autoscaler, the tiny
    model and the embedding model) and print the endpoints and an API key. Idempotent."""
    opts = laptop.UpOptions(
        state_dir=state_dir, api_port=api_port, serve_port=serve_port,
        dashboard_port=dashboard_port, cluster_file=cluster_file,
        deployment_files=tuple(deployments or (laptop.DEFAULT_DEPLOYMENTS_FILE,)), org=org,
        timeout_s=timeout, update_interval_s=update_interval)
    say = _progress()
    try:
        result = laptop.up(opts, say)
    except laptop.LaptopError as exc:
        raise fail(exc.code, exc.message) from None
    except KeyboardInterrupt:
        raise fail("interrupted", "stopped waiting; what started keeps running (`inventiv "
                                  "status`, `inventiv down`)") from None
    lines = result.env()
    if json_out:
        data = {k: v for k, v in vars(result).items()}
        data["console_url"] = console_url(result.api_url)
        data["env"] = lines
        print_json(data)
        return
    if env:
        for name, value in lines.items():
            sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
        sys.stdout.flush()
        say("ready" + (" (already running)" if result.reused else ""))
        return
    print_fields("Inventiv laptop cluster" + (" (already running)" if result.reused else ""), [
        ("web console", console_url(result.api_url)),
        ("OpenAI endpoint", result.openai_base_url),
        ("models", result.models),
        ("control API docs", result.docs_url),
        ("Ray dashboard", f"{result.dashboard_url} (token: {result.ray_token_file})"),
        ("admin", f"{result.admin_username}, password in {result.admin_password_file}"
         if result.admin_password_file else result.admin_username),
        ("API key", f"org default, kept in {result.api_key_file}"),
        ("logs", f"{result.control_api_log}, {result.node_logs}/"),
        ("stop", "inventiv down"),
    ])
    for name, value in lines.items():
        sys.stdout.write(f"{name}={value}\n")
    sys.stdout.flush()


def down(
    state_dir: StateDirOpt = laptop.DEFAULT_STATE_DIR,
    purge: Annotated[bool, typer.Option(
        "--purge", help="Also delete the state dir (database, keys, logs).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Stop everything `inventiv up` started (Ray nodes, head, control API); keeps the data
    unless --purge. Idempotent."""
    try:
        result = laptop.down(state_dir, purge=purge, say=_progress())
    except laptop.LaptopError as exc:
        raise fail(exc.code, exc.message) from None
    if json_out:
        print_json(vars(result))
        return
    print_fields("Stopped", [
        ("control API", result.control_api_stopped), ("Ray head", result.head_stopped),
        ("Ray nodes", result.nodes_stopped), ("stray processes", result.stray_processes_killed),
        ("data", "deleted" if result.purged else f"kept in {result.state_dir}"),
    ])


def status(state_dir: StateDirOpt = laptop.DEFAULT_STATE_DIR, json_out: JsonOpt = False) -> None:
    """What the laptop cluster runs: control API, head, nodes, Serve application."""
    data = laptop.status(state_dir)
    if json_out:
        print_json(data)
        return
    if "control_api" not in data:
        print_fields("Laptop cluster", [("state dir", data["state_dir"]), ("running", False)])
        return
    serve = data.get("serve") or {}
    print_fields("Laptop cluster", [
        ("state dir", data["state_dir"]),
        ("control API", f"{data['control_api']['url']} "
         f"({'healthy' if data['control_api']['healthy'] else 'down'})"),
        ("web console", console_url(data["control_api"]["url"])),
        ("OpenAI endpoint", data["openai_base_url"]),
        ("Ray dashboard", data["dashboard_url"]),
        ("Ray head", (data.get("head") or {}).get("gcs_address")),
        ("Serve", f"{serve.get('status')}: {serve.get('summary')}" if serve else None),
    ])
    print_table("Nodes", ["id", "node type", "type", "state"],
                [(n["id"], n["node_type"], n["instance_type"], n["state"]) for n in data["nodes"]],
                empty="no node")
