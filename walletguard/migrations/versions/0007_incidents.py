"""incidents: cases and complaints, movement marks, checklist ticks, operator notes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
# Marks refer to ledger movements (0002, another branch).
depends_on: str | Sequence[str] | None = ("0002",)


def upgrade() -> None:
    op.create_table(
        "incident_cases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("reported_by", sa.String(length=16), nullable=False),
        sa.Column("opened_by_operator", sa.String(length=64), nullable=True),
        sa.Column("reporting_device_id", sa.Uuid(), nullable=True),
        sa.Column("reporting_session_id", sa.Uuid(), nullable=True),
        sa.Column("lost_control_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("description_enc", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("assignee", sa.String(length=64), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("freeze_summary", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_incident_cases_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_cases")),
        sa.UniqueConstraint("reference", name=op.f("uq_incident_cases_reference")),
    )
    with op.batch_alter_table("incident_cases", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incident_cases_holder_id"), ["holder_id"], unique=False
        )
        batch_op.create_index("ix_incident_cases_status_due_at", ["status", "due_at"], unique=False)
    op.create_table(
        "incident_movement_marks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("movement_id", sa.Uuid(), nullable=False),
        sa.Column("unauthorised", sa.Boolean(), nullable=False),
        sa.Column("marked_by", sa.String(length=80), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["incident_cases.id"],
            name=op.f("fk_incident_movement_marks_case_id_incident_cases"),
        ),
        sa.ForeignKeyConstraint(
            ["movement_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_incident_movement_marks_movement_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_movement_marks")),
        sa.UniqueConstraint(
            "case_id", "movement_id", name=op.f("uq_incident_movement_marks_case_id")
        ),
    )
    with op.batch_alter_table("incident_movement_marks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incident_movement_marks_case_id"), ["case_id"], unique=False
        )
    op.create_table(
        "incident_checklist",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("item", sa.String(length=48), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["incident_cases.id"],
            name=op.f("fk_incident_checklist_case_id_incident_cases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_checklist")),
        sa.UniqueConstraint("case_id", "item", name=op.f("uq_incident_checklist_case_id")),
    )
    with op.batch_alter_table("incident_checklist", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incident_checklist_case_id"), ["case_id"], unique=False
        )
    op.create_table(
        "incident_case_notes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("body_enc", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["incident_cases.id"],
            name=op.f("fk_incident_case_notes_case_id_incident_cases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_case_notes")),
    )
    with op.batch_alter_table("incident_case_notes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incident_case_notes_case_id"), ["case_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("incident_case_notes")
    op.drop_table("incident_checklist")
    op.drop_table("incident_movement_marks")
    op.drop_table("incident_cases")
