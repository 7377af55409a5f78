"""Rendering for the CLI: Rich tables for people, plain JSON (``--json``) for scripts, and the one
place where the clients' errors become ``error: <code>: <message>`` on stderr with exit code 1."""

from __future__ import annotations

import enum
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from control_api.client.errors import ClientError, ControlApiError

P = ParamSpec("P")
R = TypeVar("R")

JSON_OPTION_HELP = "Print machine-readable JSON only."


def stdout() -> Console:
    # Built per call so the current sys.stdout and COLUMNS are honoured (tests swap both).
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def jsonable(value: Any) -> Any:
    """Models (and lists/dicts of them) as JSON-ready data: Decimal as string, ISO times."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    """Write JSON to stdout, without any Rich processing."""
    sys.stdout.write(json.dumps(jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def fmt(value: Any) -> str:
    """A cell: ``-`` for nothing, UTC times to the second, lists comma-separated, enums (roles,
    states...) by their value."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def print_table(title: str | None, headers: Sequence[str], rows: Iterable[Sequence[Any]],
                *, empty: str = "nothing to show") -> None:
    """A Rich table; cells are plain text (never parsed as markup)."""
    rows = list(rows)
    console = stdout()
    if not rows:
        console.print(Text(f"{title + ': ' if title else ''}{empty}"))
        return
    table = Table(title=title, title_justify="left")
    for header in headers:
        # Ids stay on one line (copy-paste); other columns fold when the terminal is narrow.
        table.add_column(header, overflow="fold", no_wrap=header == "id" or header.endswith(" id"))
    for row in rows:
        table.add_row(*(Text(fmt(cell)) for cell in row))
    console.print(table)


def print_fields(title: str | None, fields: Sequence[tuple[str, Any]]) -> None:
    """A two-column key/value table for one object."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in fields:
        table.add_row(Text(name), Text(fmt(value)))
    stdout().print(table)


def info(message: str) -> None:
    """A human message on stdout (not used in ``--json`` mode)."""
    stdout().print(Text(message))


def warn(message: str) -> None:
    stderr().print(Text(message, style="bold yellow"))


def fail(code: str, message: str) -> typer.Exit:
    """Print ``error: code: message`` on stderr; return the Exit(1) for the caller to raise."""
    sys.stderr.write(f"error: {code}: {message}\n")
    sys.stderr.flush()
    return typer.Exit(1)


def _message_with_hint(exc: ClientError) -> str:
    """The message of a client error, with a hint of what to do for some API answers."""
    message = exc.message
    if isinstance(exc, ControlApiError):
        if exc.status == 401:
            message += " (log in with `inventiv login`)"
        elif exc.status == 429 and exc.retry_after:
            message += f" (retry after {exc.retry_after}s)"
    return message


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn any error of the control API clients (``control_api.client.errors.ClientError``) into
    a one-line ``error: <code>: <message>`` on stderr and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ClientError as exc:
            raise fail(exc.code, _message_with_hint(exc)) from None

    return wrapper


# ``--json`` on every list/show command.
JsonOpt = Annotated[bool, typer.Option("--json", help=JSON_OPTION_HELP)]
