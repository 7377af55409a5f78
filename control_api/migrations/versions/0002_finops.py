"""FinOps: cost spans, hourly usage aggregates, ledger/rollup flags, budget evaluation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 12:18:13.573989
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import core.db
import core.models

LEDGER_PENDING = "NOT ledger_closed AND (NOT ledger_spans OR ended_at IS NOT NULL)"

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "finops_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column(
            "value",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "usage_hourly",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("hour", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("dims", sa.String(length=400), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("deployment", sa.String(length=128), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hour", "dims", name="uq_usage_hourly_hour_dims"),
    )
    with op.batch_alter_table("usage_hourly", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_hourly_deployment_hour", ["deployment", "hour"], unique=False
        )
        batch_op.create_index("ix_usage_hourly_key_hour", ["api_key_id", "hour"], unique=False)
        batch_op.create_index("ix_usage_hourly_org_hour", ["org_id", "hour"], unique=False)

    op.create_table(
        "cost_spans",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("interval_id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("provider_code", sa.String(length=32), nullable=False),
        sa.Column("zone_code", sa.String(length=32), nullable=True),
        sa.Column("instance_type_name", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("interval_start_us", sa.BigInteger(), nullable=False),
        sa.Column("start_us", sa.BigInteger(), nullable=False),
        sa.Column("end_us", sa.BigInteger(), nullable=True),
        sa.Column("is_open", sa.Boolean(), nullable=False),
        sa.Column("granularity_us", sa.BigInteger(), nullable=False),
        sa.Column("minimum_us", sa.BigInteger(), nullable=False),
        sa.Column("price_micro", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["interval_id"], ["billing_intervals.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cost_spans", schema=None) as batch_op:
        batch_op.create_index("ix_cost_spans_end", ["end_us", "start_us"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_cost_spans_interval_id"), ["interval_id"], unique=False
        )
        batch_op.create_index("ix_cost_spans_start", ["start_us", "end_us"], unique=False)

    op.create_table(
        "cost_daily",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("day_us", sa.BigInteger(), nullable=False),
        sa.Column("dims", sa.String(length=300), nullable=False),
        sa.Column("provider_code", sa.String(length=32), nullable=True),
        sa.Column("zone_code", sa.String(length=32), nullable=True),
        sa.Column("instance_type_name", sa.String(length=64), nullable=True),
        sa.Column("deployment_id", sa.Uuid(), nullable=True),
        sa.Column("units", core.models.BigUnits(length=48), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("day_us", "dims", name="uq_cost_daily_day_dims"),
    )
    with op.batch_alter_table("cost_spans", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cost_spans_open",
            ["start_us"],
            unique=False,
            postgresql_where=sa.text("is_open"),
            sqlite_where=sa.text("is_open"),
        )

    with op.batch_alter_table("billing_intervals", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ledger_spans", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("ledger_closed", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index("ix_billing_intervals_ended", ["ended_at"], unique=False)
        batch_op.create_index(
            "ix_billing_intervals_ledger_pending",
            ["id"],
            unique=False,
            postgresql_where=sa.text(LEDGER_PENDING),
            sqlite_where=sa.text(LEDGER_PENDING),
        )

    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spent_eur", core.db.Money(length=40), nullable=True))
        batch_op.add_column(
            sa.Column("evaluated_at", core.db.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rolled_up", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index(
            "ix_usage_records_unrolled",
            ["at"],
            unique=False,
            postgresql_where=sa.text("NOT rolled_up"),
            sqlite_where=sa.text("NOT rolled_up"),
        )


def downgrade() -> None:
    op.drop_table("cost_daily")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_usage_records_unrolled",
            postgresql_where=sa.text("NOT rolled_up"),
            sqlite_where=sa.text("NOT rolled_up"),
        )
        batch_op.drop_column("rolled_up")

    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_column("evaluated_at")
        batch_op.drop_column("spent_eur")

    with op.batch_alter_table("billing_intervals", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_billing_intervals_ledger_pending",
            postgresql_where=sa.text(LEDGER_PENDING),
            sqlite_where=sa.text(LEDGER_PENDING),
        )
        batch_op.drop_index("ix_billing_intervals_ended")
        batch_op.drop_column("ledger_closed")
        batch_op.drop_column("ledger_spans")

    with op.batch_alter_table("cost_spans", schema=None) as batch_op:
        batch_op.drop_index("ix_cost_spans_open")
        batch_op.drop_index("ix_cost_spans_start")
        batch_op.drop_index(batch_op.f("ix_cost_spans_interval_id"))
        batch_op.drop_index("ix_cost_spans_end")

    op.drop_table("cost_spans")
    with op.batch_alter_table("usage_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_hourly_org_hour")
        batch_op.drop_index("ix_usage_hourly_key_hour")
        batch_op.drop_index("ix_usage_hourly_deployment_hour")

    op.drop_table("usage_hourly")
    op.drop_table("finops_state")
