"""kit.db.send_before_commit: the commit queues' statements go with COMMIT on PostgreSQL.

While a session writes its ``CommitQueue``s at COMMIT, a statement given to
``send_before_commit`` is held back and sent in the same message as COMMIT, so the rows it
writes (the audit chain's head, a busy velocity bucket) are locked only while the server runs
it. On SQLite (one writer) it is executed as the session commits. On both: what it writes
commits with the transaction, its answer is handed over once it ran, and a failure fails the
commit with nothing of the transaction written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walletguard.bootstrap import Container
from walletguard.kit.db import CommitQueue, core, send_before_commit, unit_of_work
from walletguard.kit.ratelimit import AttemptCounter

_COUNTERS = cast(Table, AttemptCounter.__table__)
_INSERT = insert(_COUNTERS)
_BUMP = (
    update(_COUNTERS)
    .where(_COUNTERS.c.key == bindparam("k"))
    .values(failures=_COUNTERS.c.failures + 1)
    .returning(_COUNTERS.c.failures)
)
_COUNT = select(func.count()).select_from(_COUNTERS)
_FAILURES = select(_COUNTERS.c.failures).where(_COUNTERS.c.key == bindparam("k"))
AT = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


@dataclass
class _Sent:
    statement: Any
    params: dict[str, Any]
    answers: list[list[Any]]


def _send(session: Session, items: list[_Sent]) -> None:
    for item in items:
        send_before_commit(session, item.statement, item.params, answer=item.answers.append)


_QUEUE: CommitQueue[_Sent] = CommitQueue("test_commit_message", _send, order=50)


def _row(key: str, failures: int = 0) -> dict[str, Any]:
    return {
        "key": key,
        "failures": failures,
        "window_start": AT,
        "locked_until": None,
        "lock_count": 0,
    }


def _failures(container: Container, key: str) -> int | None:
    with container.sessions() as db:
        return cast(int | None, core(db).execute(_FAILURES, {"k": key}).scalar())


def test_queued_statements_commit_with_the_transaction_and_are_answered(
    container: Container,
) -> None:
    answers: list[list[Any]] = []
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _row("commit:a"))
        _QUEUE.add(db, _Sent(_BUMP, {"k": "commit:a"}, answers))
        _QUEUE.add(db, _Sent(_BUMP, {"k": "commit:a"}, answers))
        assert answers == []  # not before COMMIT
    assert answers == [[(1,)], [(2,)]]
    assert _failures(container, "commit:a") == 2


def test_on_postgresql_they_reach_the_server_in_the_commits_message(
    container: Container, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("SQLite runs in process: there is no message to the server")
    with container.engine.connect() as other:
        with unit_of_work(container.sessions) as db:
            core(db).execute(_INSERT, _row("commit:one-message"))
            pid = core(db).execute(text("SELECT pg_backend_pid()")).scalar_one()
            _QUEUE.add(db, _Sent(_BUMP, {"k": "commit:one-message"}, []))
            _QUEUE.add(db, _Sent(_BUMP, {"k": "commit:one-message"}, []))
        last = other.execute(
            text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar_one()
    # The backend's last query: both statements, their values written in, and COMMIT.
    statements = [part.strip() for part in last.split(";")]
    assert [part.split(" ")[0] for part in statements] == ["UPDATE", "UPDATE", "COMMIT"]
    assert all("'commit:one-message'" in part for part in statements[:2])
    assert _failures(container, "commit:one-message") == 2


def test_a_failing_statement_fails_the_commit_and_nothing_is_written(
    container: Container,
) -> None:
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _row("commit:taken"))
    with pytest.raises(IntegrityError) as refused, unit_of_work(container.sessions) as db:  # noqa: PT012
        core(db).execute(_INSERT, _row("commit:written-before"))
        _QUEUE.add(db, _Sent(_BUMP, {"k": "commit:taken"}, []))
        _QUEUE.add(db, _Sent(_INSERT, _row("commit:taken"), []))  # the same key again
        _QUEUE.add(db, _Sent(_INSERT, _row("commit:after-the-failure"), []))
    # The error names the statements as written, not the query with their values in.
    assert "INSERT INTO attempt_counters" in str(refused.value)
    assert "'commit:taken'" not in str(refused.value)
    assert "[parameters:" not in str(refused.value)
    with container.sessions() as db:
        assert core(db).execute(_COUNT).scalar_one() == 1
    assert _failures(container, "commit:taken") == 0
    # The pool's connections go on working, and nothing of the failed commit is sent again.
    for attempt in range(12):
        with unit_of_work(container.sessions) as db:
            _QUEUE.add(db, _Sent(_INSERT, _row(f"commit:later-{attempt}"), []))
    with container.sessions() as db:
        assert core(db).execute(_COUNT).scalar_one() == 13


def test_a_rolled_back_transaction_or_savepoint_sends_nothing(container: Container) -> None:
    with container.sessions() as db:
        _QUEUE.add(db, _Sent(_INSERT, _row("commit:rolled-back"), []))
        db.rollback()
    with unit_of_work(container.sessions) as db:
        _QUEUE.add(db, _Sent(_INSERT, _row("commit:kept"), []))
        savepoint = db.begin_nested()
        _QUEUE.add(db, _Sent(_INSERT, _row("commit:savepoint"), []))
        savepoint.rollback()
    with container.sessions() as db:
        assert db.scalars(select(AttemptCounter.key)).all() == ["commit:kept"]


def test_outside_the_commit_a_statement_runs_at_once(container: Container) -> None:
    answers: list[list[Any]] = []
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _row("commit:now", failures=3))
        send_before_commit(db, _BUMP, {"k": "commit:now"}, answer=answers.append)
        assert answers == [[(4,)]]
        assert core(db).execute(_FAILURES, {"k": "commit:now"}).scalar() == 4
        # A queue written early (``write_now``: a read that needs it) runs at once too.
        _QUEUE.add(db, _Sent(_BUMP, {"k": "commit:now"}, answers))
        _QUEUE.write_now(db)
        assert answers[-1] == [(5,)]
