"""`inventiv db …`: database migrations."""

from __future__ import annotations

import typer
from alembic.util.exc import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cli.output import fail, info

app = typer.Typer(help="Database migrations (INVENTIV_DATABASE_URL, default SQLite in the data "
                       "dir).", no_args_is_help=True)


def _engine() -> Engine:
    from control_api.settings import Settings
    from core.db import make_engine

    return make_engine(Settings().resolved_database_url())


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the Alembic migrations up to REVISION (default: head)."""
    from control_api import migrate

    engine = _engine()
    try:
        migrate.upgrade(engine, revision)
    except (CommandError, SQLAlchemyError) as exc:
        raise fail("migration_failed", f"{_shown(engine)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    info(f"database {_shown(engine)} upgraded to {revision}")


@app.command("check")
def check() -> None:
    """Fail unless the database is at head and matches the models (`alembic check`)."""
    from control_api import migrate

    engine = _engine()
    try:
        migrate.check(engine)
    except (CommandError, SQLAlchemyError) as exc:
        raise fail("migrations_out_of_date", f"{_shown(engine)}: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    info(f"database {_shown(engine)} is up to date")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
