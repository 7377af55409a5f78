"""`inventiv instances …`: GPU instances and their lifecycle."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.config import make_client
from cli.output import (
    JsonOpt,
    fail,
    fmt,
    handles_errors,
    info,
    print_fields,
    print_json,
    print_table,
)
from control_api.schemas.instances import InstanceDetail, InstanceOut

app = typer.Typer(help="Instances (VMs and local nodes) through their lifecycle.",
                  no_args_is_help=True)

InstanceRef = Annotated[str, typer.Argument(help="Instance id.")]
HEADERS = ["id", "state", "cluster", "provider", "zone", "type", "node type", "since", "error"]


def _row(i: InstanceOut) -> tuple[object, ...]:
    return (i.id, i.state, i.cluster_name, i.provider, i.zone, i.instance_type, i.node_type,
            i.state_entered_at, i.error_code)


@app.command("list")
@handles_errors
def list_instances(
    state: Annotated[str | None, typer.Option("--state", help="Only this state.")] = None,
    provider: Annotated[str | None, typer.Option("--provider")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster")] = None,
    zone: Annotated[str | None, typer.Option("--zone")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Page size.")] = None,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Page to start at.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List instances, newest first."""
    with make_client() as client:
        page = client.list_instances(state=state, provider=provider, cluster=cluster, zone=zone,
                                     limit=limit, cursor=cursor)
        items, next_cursor = list(page.items), page.next_cursor
        while all_pages and next_cursor:
            page = client.list_instances(state=state, provider=provider, cluster=cluster,
                                         zone=zone, limit=limit, cursor=next_cursor)
            items.extend(page.items)
            next_cursor = page.next_cursor
    if json_out:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    print_table("Instances", HEADERS, [_row(i) for i in items], empty="no instance")
    if next_cursor:
        info(f"more: --cursor {next_cursor} (or --all)")


def _show(detail: InstanceDetail) -> None:
    print_fields(f"Instance {detail.id}", [
        ("state", detail.state), ("since", detail.state_entered_at),
        ("deadline", detail.state_deadline_at), ("cluster", detail.cluster_name),
        ("provider", detail.provider), ("zone", detail.zone), ("type", detail.instance_type),
        ("node type", detail.node_type), ("launch id", detail.launch_id),
        ("provider id", detail.provider_instance_id), ("ray node", detail.ray_node_id),
        ("private ip", detail.private_ip), ("public ip", detail.public_ip),
        ("deployment", detail.deployment_id), ("error", detail.error_code),
        ("error message", detail.error_message), ("created", detail.created_at),
    ])
    print_table("History", ["at", "from", "to", "reason", "error", "actor"],
                [(h.at, h.from_state, h.to_state, h.reason, h.error_code, h.actor)
                 for h in detail.history], empty="no transition")
    print_table("Billing intervals", ["started", "ended"],
                [(b.started_at, b.ended_at or "open") for b in detail.billing_intervals],
                empty="none (the cloud never confirmed a VM)")


@app.command("show")
@handles_errors
def show(instance: InstanceRef, json_out: JsonOpt = False) -> None:
    """Show an instance with its state history and billing intervals."""
    with make_client() as client:
        detail = client.get_instance(instance)
    if json_out:
        print_json(detail)
        return
    _show(detail)


@app.command("terminate")
@handles_errors
def terminate(
    instance: InstanceRef,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded in the history.")]
    = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
    = False,
    json_out: JsonOpt = False,
) -> None:
    """Ask for an instance to be terminated (platform admin); the node provider acts on it."""
    if not yes and not typer.confirm(f"Terminate instance {instance}?"):
        raise fail("aborted", "nothing done")
    with make_client() as client:
        detail = client.terminate_instance(instance, reason=reason)
    if json_out:
        print_json(detail)
        return
    info(f"Instance {detail.id} is now {fmt(detail.state)}")
