"""ledger, audit and risk: indexes a payment no longer writes entries into

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 03:00:00

Every payment from the balance inserts one ``ledger_transactions`` row, two ``audit_log``
entries and one ``risk_decisions`` row, and each of their indexes takes an entry (and its WAL)
per row. Some of those indexes served no read, and some held mostly NULLs no read asks for:

- ``ledger_transactions (status)``: every read by status asks for pending movements, which
  the partial index ``(holder_id, expires_at) WHERE status = 'pending'`` of migration 0011
  holds by themselves (the holds' expiry sweep and the ledger check read all of it); any other
  status is filtered within one holder's range. Dropped.
- ``ledger_transactions (created_at)``: served only the cooling-off cap's "spent today from this
  device", which read every holder's movements of the day; that read now names the holder and
  is one range of ``(holder_id, created_at)``. Dropped.
- ``ledger_transactions (counterparty_holder_id)``, ``(card_id)``, ``(reverses_id)``: only
  transfers, card movements and refunds have one; every read asks for one value, which implies
  it is not NULL, so the index keeps only the rows that have one (``WHERE ... IS NOT NULL``).
- ``risk_decisions (review, created_at)``: only holds and blocks are reviewed; the review
  queue reads pending, confirmed or released ones. Partial the same way.
- ``audit_log (event)``: no read looks entries up by event alone (the risk engine's events have
  migration 0012's partial index, the incident desk reads by holder). Dropped.
- ``alert_outbox (status, due_at)``: the workers claim pending rows by when they are due; every
  alert also writes an in-app row, already delivered, and delivered rows are never claimed.
  Replaced by ``(due_at) WHERE status = 'pending'`` (the workers' query names 'pending' in its
  SQL), which holds only the rows still to deliver.

A balance payment writes 9 index entries fewer (5 of its movement, 1 of its decision, 1 of each
audit entry, 1 of its in-app delivery).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from walletguard.migrations import online

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, index name, columns) that keep only the rows whose first column is set.
PARTIAL = (
    (
        "ledger_transactions",
        "ix_ledger_transactions_counterparty_holder_id",
        ["counterparty_holder_id"],
    ),
    ("ledger_transactions", "ix_ledger_transactions_card_id", ["card_id"]),
    ("ledger_transactions", "ix_ledger_transactions_reverses_id", ["reverses_id"]),
    ("risk_decisions", "ix_risk_decisions_review_created_at", ["review", "created_at"]),
)
# (table, index name, columns) dropped.
DROPPED = (
    ("ledger_transactions", "ix_ledger_transactions_status", ["status"]),
    ("ledger_transactions", "ix_ledger_transactions_created_at", ["created_at"]),
    ("audit_log", "ix_audit_log_event", ["event"]),
    ("alert_outbox", "ix_alert_outbox_status_due_at", ["status", "due_at"]),
)
PENDING = sa.text("status = 'pending'")


def _set(column: str) -> sa.TextClause:
    return sa.text(f"{column} IS NOT NULL")


def upgrade() -> None:
    # Each without holding writes (migrations.online).
    for table, name, columns in PARTIAL:
        online.replace_index(name, table, columns, where=_set(columns[0]))
    for table, name, _columns in DROPPED:
        online.drop_index(name, table)
    online.create_index("ix_alert_outbox_pending_due_at", "alert_outbox", ["due_at"], where=PENDING)


def downgrade() -> None:
    online.drop_index("ix_alert_outbox_pending_due_at", "alert_outbox")
    for table, name, columns in DROPPED:
        online.create_index(name, table, columns)
    for table, name, columns in PARTIAL:
        online.replace_index(name, table, columns)
