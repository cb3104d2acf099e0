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

from walletguard.migrations import online

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    # Built before the old ones are dropped, each without holding writes (migrations.online).
    online.create_index(
        "ix_audit_log_holder_id_event_at", "audit_log", ["holder_id", "event", "at"]
    )
    online.drop_index("ix_audit_log_holder_id", "audit_log")
    online.create_index(
        "ix_ledger_transactions_holder_id_created_at",
        "ledger_transactions",
        ["holder_id", "created_at"],
    )
    online.create_index(
        "ix_ledger_transactions_holder_id_pending",
        "ledger_transactions",
        ["holder_id", "expires_at"],
        where=PENDING,
    )
    online.drop_index("ix_ledger_transactions_holder_id", "ledger_transactions")


def downgrade() -> None:
    online.create_index("ix_ledger_transactions_holder_id", "ledger_transactions", ["holder_id"])
    online.drop_index("ix_ledger_transactions_holder_id_pending", "ledger_transactions")
    online.drop_index("ix_ledger_transactions_holder_id_created_at", "ledger_transactions")
    online.create_index("ix_audit_log_holder_id", "audit_log", ["holder_id"])
    online.drop_index("ix_audit_log_holder_id_event_at", "audit_log")
