"""Invitations by username: an invitation is stored for every request, whether or not the
username exists, so the org's pending list does not reveal which usernames exist.

Also: revisions 0005 and 0006 first landed as empty placeholders and were filled later; a
database upgraded through the placeholders lacks their tables, which are created here.

Revision ID: 0007
Revises: 0006
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Revision file -> a table it creates: missing means the placeholder ran instead.
_FILLED_LATER = {"0005_secrets.py": "secrets", "0006_weights.py": "deployment_sources"}


def _run_missed_placeholders() -> None:
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    for filename, table in _FILLED_LATER.items():
        if table in tables:
            continue
        spec = importlib.util.spec_from_file_location(
            f"_inventiv_migration_{filename[:4]}", Path(__file__).with_name(filename))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.upgrade()


def upgrade() -> None:
    _run_missed_placeholders()
    with op.batch_alter_table("org_invitations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("invited_username", sa.String(length=64), nullable=True))
        batch_op.alter_column("user_id", existing_type=sa.Uuid(), nullable=True)
        batch_op.create_unique_constraint("uq_invitation_org_username",
                                          ["org_id", "invited_username"])


def downgrade() -> None:
    op.execute("DELETE FROM org_invitations WHERE user_id IS NULL")
    with op.batch_alter_table("org_invitations", schema=None) as batch_op:
        batch_op.drop_constraint("uq_invitation_org_username", type_="unique")
        batch_op.alter_column("user_id", existing_type=sa.Uuid(), nullable=False)
        batch_op.drop_column("invited_username")
