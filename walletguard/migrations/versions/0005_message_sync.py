"""message sync: SIM devices, per-device cloud sync, carrier SIM swaps

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-22 14:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sim_bindings",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("phone_index", sa.String(length=64), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_sim_bindings_holder_id_holders")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_sim_bindings_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sim_bindings")),
    )
    with op.batch_alter_table("sim_bindings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sim_bindings_holder_id"), ["holder_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sim_bindings_device_id"), ["device_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sim_bindings_phone_index"), ["phone_index"], unique=False
        )
    op.create_table(
        "message_sync",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.Column("enabled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_message_sync_holder_id_holders")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_message_sync_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_sync")),
    )
    with op.batch_alter_table("message_sync", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_sync_holder_id"), ["holder_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_message_sync_device_id"), ["device_id"], unique=False)
    op.create_table(
        "sim_swaps",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("phone_index", sa.String(length=64), nullable=False),
        sa.Column("swapped_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sim_swaps")),
    )
    with op.batch_alter_table("sim_swaps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sim_swaps_phone_index"), ["phone_index"], unique=False)


def downgrade() -> None:
    op.drop_table("sim_swaps")
    op.drop_table("message_sync")
    op.drop_table("sim_bindings")
