"""risk: velocity buckets split into shards, so that writers under one busy key rarely meet

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 11:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing buckets become shard 0 of their minute; a window sums every shard alike.
    with op.batch_alter_table("risk_velocity", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("shard", sa.SmallInteger(), server_default="0", nullable=False)
        )
        batch_op.drop_constraint("pk_risk_velocity", type_="primary")
        batch_op.create_primary_key("pk_risk_velocity", ["key", "minute", "shard"])


def downgrade() -> None:
    # Shards of one minute are summed back into one bucket before the column goes.
    op.execute(
        "CREATE TABLE risk_velocity_merged AS SELECT key, minute, sum(count) AS count,"
        " sum(sum_fen) AS sum_fen FROM risk_velocity GROUP BY key, minute"
    )
    op.execute("DELETE FROM risk_velocity")
    with op.batch_alter_table("risk_velocity", schema=None) as batch_op:
        batch_op.drop_constraint("pk_risk_velocity", type_="primary")
        batch_op.drop_column("shard")
        batch_op.create_primary_key("pk_risk_velocity", ["key", "minute"])
    op.execute(
        "INSERT INTO risk_velocity (key, minute, count, sum_fen)"
        " SELECT key, minute, count, sum_fen FROM risk_velocity_merged"
    )
    op.execute("DROP TABLE risk_velocity_merged")
