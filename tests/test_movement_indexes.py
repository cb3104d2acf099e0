"""The indexes a movement writes, and the reads that need them (migration 0013).

A payment from the balance has no counterparty, card or reversed movement, its risk decision is
not reviewed, and its in-app delivery is written delivered: the indexes on those columns hold
only the rows that have a value, the outbox's only the deliveries still pending, and the indexes
no read used (by status, by time alone, by audit event alone) are gone. What must stay true is
that every read by those columns can still use an index. Each case runs the service code's own
read and asks the database for its plan: on PostgreSQL with sequential scans priced out (so the
plan shows whether an index can serve the read at all, whatever the table's size), on SQLite as
its planner chooses (it prefers a usable index on an equality)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from tests.conftest import START
from walletguard.alerts import worker
from walletguard.alerts.models import AlertDelivery
from walletguard.bootstrap import Container
from walletguard.risk import repository as risk_repository
from walletguard.wallet import ledger
from walletguard.wallet import repository as wallet_repository
from walletguard.wallet.limits import CARD_COUNTED_KINDS, HOLDER_COUNTED_KINDS

HOLDER = uuid.uuid4()
CARD = uuid.uuid4()
DEVICE = uuid.uuid4()
SINCE = START - timedelta(hours=8)


def _plans(container: Container, read: Callable[[Session], Any]) -> str:
    """The plans of every statement ``read`` sends, one text."""
    sent: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    with container.sessions() as db:
        connection = db.connection()
        event.listen(connection, "before_cursor_execute", keep)
        try:
            read(db)
        finally:
            event.remove(connection, "before_cursor_execute", keep)
        shown = []
        for statement, parameters in sent:
            if container.settings.is_sqlite:
                plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                shown += [str(row[-1]) for row in plan]
            else:
                connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
                shown += [str(row[0]) for row in plan]
        db.rollback()
    return "\n".join(shown)


READS: dict[str, tuple[Callable[[Session], Any], str]] = {
    "a holder's movements, sent and received": (
        lambda db: wallet_repository.list_movements(
            db, HOLDER, wallet_repository.MovementFilter(), offset=0, limit=20
        ),
        "ix_ledger_transactions_counterparty_holder_id",
    ),
    "a card's day, for its limits": (
        lambda db: wallet_repository.spent_since(db, SINCE, CARD_COUNTED_KINDS, card_id=CARD),
        "ix_ledger_transactions_card_id",
    ),
    "a cooling-off device's day": (
        lambda db: wallet_repository.spent_since(
            db, SINCE, HOLDER_COUNTED_KINDS, holder_id=HOLDER, device_id=DEVICE
        ),
        "ix_ledger_transactions_holder_id_created_at",
    ),
    "the expired holds of every holder": (
        lambda db: wallet_repository.expired_pending(db, START, None),
        "ix_ledger_transactions_holder_id_pending",
    ),
    "the ledger check's refunds of each movement": (
        ledger.reconcile,
        "ix_ledger_transactions_reverses_id",
    ),
    "the deliveries a worker claims": (
        lambda db: db.execute(
            select(AlertDelivery.id).where(*worker._due(START)).order_by(AlertDelivery.due_at)
        ).all(),
        "ix_alert_outbox_pending_due_at",
    ),
    "the operators' review queue": (
        lambda db: risk_repository.pending_review(db, offset=0, limit=20),
        "ix_risk_decisions_review_created_at",
    ),
}


@pytest.mark.parametrize("name", list(READS))
def test_every_read_by_a_lightened_column_can_use_an_index(container: Container, name: str) -> None:
    read, index = READS[name]
    assert index in _plans(container, read)


def test_spending_is_counted_by_holder_or_by_card_never_over_everyones_day(
    container: Container,
) -> None:
    with container.sessions() as db, pytest.raises(ValueError, match="holder's movements"):
        wallet_repository.spent_since(db, SINCE, HOLDER_COUNTED_KINDS, device_id=DEVICE)


PARTIAL = {
    "ix_ledger_transactions_counterparty_holder_id": "counterparty_holder_id IS NOT NULL",
    "ix_ledger_transactions_card_id": "card_id IS NOT NULL",
    "ix_ledger_transactions_reverses_id": "reverses_id IS NOT NULL",
    "ix_risk_decisions_review_created_at": "review IS NOT NULL",
    "ix_alert_outbox_pending_due_at": "status = 'pending'",
}
DROPPED = (
    "ix_ledger_transactions_status",
    "ix_ledger_transactions_created_at",
    "ix_audit_log_event",
    "ix_alert_outbox_status_due_at",
)


def test_the_migrated_indexes_are_partial_or_gone(container: Container) -> None:
    if container.settings.is_sqlite:
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    else:
        query = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    with container.sessions() as db:
        found = {name: sql for name, sql in db.execute(text(query)).all()}
    for name, where in PARTIAL.items():
        # PostgreSQL gives the predicate back with its casts and parentheses.
        assert where in re.sub(r"[()]|::text", "", found[name]), found[name]
    assert not set(DROPPED) & set(found)
