"""Migrations go up, down and up again on both backends, and match the models."""

from __future__ import annotations

from sqlalchemy import inspect, text

from control_api import migrate
from core.db import Base, make_engine


def test_upgrade_downgrade_upgrade_and_check(db_url: str) -> None:
    eng = make_engine(db_url)
    try:
        migrate.check(eng)  # `alembic check`: models and migrations agree
        migrate.downgrade(eng, "base")
        assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(eng, "head")
        assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
        migrate.check(eng)
    finally:
        eng.dispose()


def test_a_database_upgraded_through_the_empty_placeholders_gets_their_tables(
        db_url: str) -> None:
    """Revisions 0005/0006 first landed empty: a database that ran them then lacks the
    secrets and weights tables, and the next revision creates them."""
    eng = make_engine(db_url)
    try:
        migrate.downgrade(eng, "0004")
        # What the placeholders left: nothing, with the version at 0006.
        with eng.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
        migrate.upgrade(eng, "head")
        assert {"secrets", "weight_downloads", "deployment_sources"} \
            <= set(inspect(eng).get_table_names())
        migrate.check(eng)
    finally:
        eng.dispose()
