"""Migrations go up, down and up again on both backends, and match the models."""

from __future__ import annotations

from sqlalchemy import inspect

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
