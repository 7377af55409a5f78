"""Money: cost_daily totals index, replica placements, budget webhooks and threshold events.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cost_daily", schema=None) as batch_op:
        batch_op.create_index("ix_cost_daily_totals", ["day_us"], unique=False,
                              postgresql_where=sa.text("dims = ''"),
                              sqlite_where=sa.text("dims = ''"))
    op.create_table(
        "replica_placements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("replica_id", sa.String(length=200), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("deployment", sa.String(length=128), nullable=False),
        sa.Column("ray_node_id", sa.String(length=128), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=True),
        sa.Column("share_ppm", sa.Integer(), nullable=False),
        sa.Column("started_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", core.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("replica_id", "ray_node_id", "started_at",
                            name="uq_replica_placement"),
    )
    with op.batch_alter_table("replica_placements", schema=None) as batch_op:
        batch_op.create_index("ix_replica_placements_instance", ["instance_id", "started_at"],
                              unique=False)
        batch_op.create_index("ix_replica_placements_open", ["ended_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_replica_placements_deployment_id"),
                              ["deployment_id"], unique=False)
    op.create_table(
        "budget_webhooks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("budget_webhooks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_webhooks_org_id"), ["org_id"], unique=False)
    op.create_table(
        "budget_threshold_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("budget_id", sa.Uuid(), nullable=False),
        sa.Column("period_start", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("threshold_pct", sa.Integer(), nullable=False),
        sa.Column("spent_eur", sa.String(length=40), nullable=False),
        sa.Column("fired_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("budget_id", "period_start", "threshold_pct",
                            name="uq_budget_threshold_once"),
    )
    with op.batch_alter_table("budget_threshold_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_threshold_events_budget_id"), ["budget_id"],
                              unique=False)


def downgrade() -> None:
    op.drop_table("budget_threshold_events")
    op.drop_table("budget_webhooks")
    op.drop_table("replica_placements")
    with op.batch_alter_table("cost_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_cost_daily_totals", postgresql_where=sa.text("dims = ''"),
                            sqlite_where=sa.text("dims = ''"))
