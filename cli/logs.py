"""`inventiv logs`: search the action logs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from cli.config import make_client
from cli.output import JsonOpt, handles_errors, info, print_json, print_table
from control_api.client.api import is_uuid
from control_api.schemas.action_logs import ActionLogList, ActionLogOut

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str | None, *, now: datetime | None = None,
               option: str = "--since") -> datetime | None:
    """An ISO-8601 time (UTC when no offset is given) or a duration ago: ``15m``, ``2h``, ``7d``."""
    if value is None:
        return None
    match = _RELATIVE.match(value.strip())
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither an ISO-8601 time nor a duration like 15m, 2h, 7d",
            param_hint=option) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _row(log: ActionLogOut) -> tuple[object, ...]:
    error = f"{log.error_code}: {log.error_message}" if log.error_code else log.error_message
    return (log.created_at, log.type, log.status, log.component, log.instance_id, log.duration_ms,
            error)


@handles_errors
def logs(
    type_: Annotated[str | None, typer.Option("--type", help="Action type, e.g. "
                                              "instance.transition.")] = None,
    status: Annotated[str | None, typer.Option("--status",
                                               help="success, failure or info.")] = None,
    component: Annotated[str | None, typer.Option("--component")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="Instance id.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="User id or username.")] = None,
    org: Annotated[str | None, typer.Option("--org", help="Organisation id or name.")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="ISO-8601 time or duration ago (15m, 2h, 7d).")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="ISO-8601 time or duration ago.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Page size.")] = None,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Page to start at.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Search the action logs, newest first, with counts per status."""
    now = datetime.now(UTC)
    since_at = parse_when(since, now=now)
    until_at = parse_when(until, now=now, option="--until")
    with make_client() as client:
        user_id = (user if is_uuid(user) else str(client.find_user(user).id)) if user else None
        org_id = (org if is_uuid(org) else str(client.find_org(org).id)) if org else None

        def fetch(at: str | None) -> ActionLogList:
            return client.list_action_logs(
                type=type_, status=status, component=component, instance_id=instance,
                user_id=user_id, org_id=org_id, since=since_at, until=until_at, limit=limit,
                cursor=at)

        page = fetch(cursor)
        items, counts, next_cursor = list(page.items), page.counts, page.next_cursor
        while all_pages and next_cursor:
            page = fetch(next_cursor)
            items.extend(page.items)
            next_cursor = page.next_cursor
    if json_out:
        print_json({"items": items, "next_cursor": next_cursor, "counts": counts})
        return
    print_table("Action logs", ["at", "type", "status", "component", "instance", "ms", "error"],
                [_row(log) for log in items], empty="no action log")
    if counts:
        info("counts: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if next_cursor:
        info(f"more: --cursor {next_cursor} (or --all)")
