"""Invitations by username: an invitation is stored for every request, whether or not the
username exists, so the org's pending list does not reveal which usernames exist.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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
