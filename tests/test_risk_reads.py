"""The security events every risk decision reads come from their own partial index (migration
0012): the index lists exactly the events the risk engine reads, and a holder with hundreds of
payments' audit entries has its few security events found without reading the payments'."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import column, text

from tests.conftest import START
from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import one_of, unit_of_work
from walletguard.risk import repository
from walletguard.risk.models import AUDIT_STEPS

INDEX = "ix_audit_log_risk_events"


def _index_sql(container: Container) -> str:
    with container.sessions() as db:
        if container.settings.is_sqlite:
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
        found = db.execute(text(query), {"name": INDEX}).scalar_one()
    assert isinstance(found, str)
    return found


def test_the_index_holds_exactly_the_events_the_risk_engine_reads(container: Container) -> None:
    events = set(re.findall(r"'([^']+)'", _index_sql(container)))
    assert events == set(AUDIT_STEPS)


def test_a_decision_reads_the_security_events_by_that_index(
    container: Container, clock: ManualClock
) -> None:
    holder = uuid.uuid4()
    with unit_of_work(container.sessions) as db:
        audit.record(db, clock, "login.succeeded", holder_id=holder)
        for _ in range(300):
            audit.record(db, clock, "movement.created", holder_id=holder, data={"kind": "payment"})
            audit.record(db, clock, "movement.posted", holder_id=holder, data={"kind": "payment"})
    statement = repository._AUDIT_EVENTS.params(
        holder_id=holder, audit_since=START - timedelta(days=30)
    )
    with container.sessions() as db:
        connection = db.connection()
        # The values written into the SQL: the plan is what is looked at, not the rows.
        sql = statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
        if container.settings.is_sqlite:
            connection.exec_driver_sql("ANALYZE")
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            shown = " ".join(str(row[-1]) for row in plan)
        else:
            connection.exec_driver_sql("ANALYZE audit_log")
            plan = connection.exec_driver_sql(f"EXPLAIN {sql}").all()
            shown = " ".join(str(row[0]) for row in plan)
        found = connection.execute(statement).all()
    if container.settings.is_sqlite:
        # SQLite seeks (holder, event, time) ranges of either index, one per event.
        assert INDEX in shown or "event=?" in shown, shown
    else:
        assert INDEX in shown, shown
    assert [row.event for row in found] == ["login.succeeded"]


def test_one_of_writes_only_plain_words_into_the_sql() -> None:
    assert str(one_of(column("event"), ["login.succeeded", "a_b"])) == (
        "event IN ('login.succeeded', 'a_b')"
    )
    with pytest.raises(ValueError, match="plain words"):
        one_of(column("event"), ["x') OR ('1' = '1"])
