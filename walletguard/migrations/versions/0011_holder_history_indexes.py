"""audit and ledger: a holder's recent entries found by index, however long their history

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 07:00:00

Before every movement and every risk decision two reads look at one holder's recent past: the
security events of the last days (``walletguard.risk.repository.holder_and_events``) and the
movements since local midnight plus any pending one (``walletguard.wallet.repository``'s
movement facts). Both found the holder's rows through an index on ``holder_id`` alone and
filtered every row the holder ever had: a holder with a few thousand entries paid a millisecond
of database time on each payment, growing with every payment.

- ``audit_log (holder_id, event, at)`` replaces ``(holder_id)``: one short range per event
  asked for (its leading column still serves every read by holder).
- ``ledger_transactions (holder_id, created_at)`` replaces ``(holder_id)``: the day's movements
  as one range (and a holder's history, newest first, in index order).
- ``ledger_transactions (holder_id, expires_at) WHERE status = 'pending'``: a holder's pending
  movements, few whatever the history.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_log_holder_id_event_at", ["holder_id", "event", "at"], unique=False
        )
        batch_op.drop_index("ix_audit_log_holder_id")
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_transactions_holder_id_created_at",
            ["holder_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_ledger_transactions_holder_id_pending",
            ["holder_id", "expires_at"],
            unique=False,
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        )
        batch_op.drop_index("ix_ledger_transactions_holder_id")


def downgrade() -> None:
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_transactions_holder_id", ["holder_id"], unique=False)
        batch_op.drop_index("ix_ledger_transactions_holder_id_pending")
        batch_op.drop_index("ix_ledger_transactions_holder_id_created_at")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_holder_id", ["holder_id"], unique=False)
        batch_op.drop_index("ix_audit_log_holder_id_event_at")
