"""risk: decisions with holds and review, payees, scam exposures, velocity buckets

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 23:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "risk_decisions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("ip_key", sa.String(length=64), nullable=True),
        sa.Column("device_key", sa.String(length=64), nullable=True),
        sa.Column("place", sa.String(length=64), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("card_id", sa.Uuid(), nullable=True),
        sa.Column("payee_key", sa.String(length=64), nullable=True),
        sa.Column("payee_label", sa.String(length=64), nullable=True),
        sa.Column("payee_new", sa.Boolean(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("shadow_rules", sa.Text(), nullable=False),
        sa.Column("reasons_zh", sa.Text(), nullable=False),
        sa.Column("reasons_en", sa.Text(), nullable=False),
        sa.Column("signals", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review", sa.String(length=16), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_by", sa.String(length=80), nullable=True),
        sa.Column("approval_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_risk_decisions_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_decisions")),
    )
    with op.batch_alter_table("risk_decisions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_risk_decisions_holder_id_created_at", ["holder_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_risk_decisions_payee_key_created_at", ["payee_key", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_risk_decisions_ip_key_created_at", ["ip_key", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_risk_decisions_device_key_created_at", ["device_key", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_risk_decisions_review_created_at", ["review", "created_at"], unique=False
        )
    op.create_table(
        "risk_payees",
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("payee_key", sa.String(length=64), nullable=False),
        sa.Column("payments", sa.Integer(), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trusted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_risk_payees_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("holder_id", "payee_key", name=op.f("pk_risk_payees")),
    )
    op.create_table(
        "risk_scam_exposures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("typology", sa.String(length=48), nullable=False),
        sa.Column("payee_key", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_risk_scam_exposures_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_scam_exposures")),
    )
    with op.batch_alter_table("risk_scam_exposures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_risk_scam_exposures_holder_id_received_at",
            ["holder_id", "received_at"],
            unique=False,
        )
    op.create_table(
        "risk_velocity",
        sa.Column("key", sa.String(length=96), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum_fen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", "minute", name=op.f("pk_risk_velocity")),
    )


def downgrade() -> None:
    op.drop_table("risk_velocity")
    with op.batch_alter_table("risk_scam_exposures", schema=None) as batch_op:
        batch_op.drop_index("ix_risk_scam_exposures_holder_id_received_at")
    op.drop_table("risk_scam_exposures")
    op.drop_table("risk_payees")
    with op.batch_alter_table("risk_decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_risk_decisions_review_created_at")
        batch_op.drop_index("ix_risk_decisions_device_key_created_at")
        batch_op.drop_index("ix_risk_decisions_ip_key_created_at")
        batch_op.drop_index("ix_risk_decisions_payee_key_created_at")
        batch_op.drop_index("ix_risk_decisions_holder_id_created_at")
    op.drop_table("risk_decisions")
