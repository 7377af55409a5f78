"""Access: service-token scopes, org invitations.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import core.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tokens made before scopes existed get the scope their component names, when it names one.
_COMPONENT_SCOPES = {"node-provider": "node-provider", "node_provider": "node-provider",
                     "ingress": "ingress", "reconciler": "reconciler"}


def upgrade() -> None:
    with op.batch_alter_table("service_tokens") as batch:
        batch.add_column(sa.Column(
            "scopes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True))
    tokens = sa.table("service_tokens", sa.column("id", sa.Uuid()),
                      sa.column("component", sa.String()),
                      sa.column("scopes", sa.JSON().with_variant(postgresql.JSONB(),
                                                                  "postgresql")))
    conn = op.get_bind()
    for component, scope in _COMPONENT_SCOPES.items():
        conn.execute(tokens.update().where(tokens.c.component == component)
                     .values(scopes=[scope]))
    op.create_table(
        "org_invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.Enum("owner", "admin", "member", "viewer", name="invitation_role",
                                  native_enum=False, create_constraint=True, length=32),
                  nullable=False),
        sa.Column("invited_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["invited_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "user_id", name="uq_invitation_org_user"),
    )
    op.create_index("ix_org_invitations_org_id", "org_invitations", ["org_id"])
    op.create_index("ix_org_invitations_user_id", "org_invitations", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_org_invitations_user_id", table_name="org_invitations")
    op.drop_index("ix_org_invitations_org_id", table_name="org_invitations")
    op.drop_table("org_invitations")
    with op.batch_alter_table("service_tokens") as batch:
        batch.drop_column("scopes")
