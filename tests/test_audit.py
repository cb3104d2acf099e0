"""The audit log: every security event chained; edits, deletions and reorders are found."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.conftest import DEFAULT_PHONE, STRONG_PASSWORD, assert_problem, login, register
from walletguard.audit import service as audit
from walletguard.audit.service import verify
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work


def _events(container: Container) -> list[str]:
    with container.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT event FROM audit_log ORDER BY seq"))]


@contextmanager
def _tamper(container: Container) -> Iterator[Connection]:
    """What an attacker with direct database access can do: switch the guard off and edit."""
    with container.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        yield conn
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))


def _populated(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    login(client, DEFAULT_PHONE, "wrong-password-1")
    login(client, DEFAULT_PHONE, STRONG_PASSWORD)
    client.post("/api/v1/sessions/revoke-others", headers=holder.auth)


def test_security_events_are_recorded_and_the_chain_verifies(
    client: TestClient, container: Container
) -> None:
    _populated(client, container)
    events = _events(container)
    for expected in [
        "registration.started",
        "holder.registered",
        "login.succeeded",
        "login.failed",
        "sessions.revoked",
    ]:
        assert expected in events
    with container.sessions() as db:
        report = verify(db)
    assert report.ok, report.problems
    assert report.entries == len(events)


def test_holder_sees_own_security_events(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    register(client, container, "+8613900000000", name="李娜")
    page = client.get("/api/v1/me/security-events", headers=holder.auth).json()
    assert {item["event"] for item in page["items"]} >= {"holder.registered", "login.succeeded"}
    assert page["pagination"]["total"] == len(page["items"])


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET event = 'x'", "DELETE FROM audit_log"])
def test_the_application_cannot_update_or_delete_audit_rows(
    client: TestClient, container: Container, statement: str
) -> None:
    _populated(client, container)
    with pytest.raises(DBAPIError, match="append-only"), container.engine.begin() as conn:
        conn.execute(text(statement))
    assert _events(container)


def test_truncate_is_refused_on_postgres(
    client: TestClient, container: Container, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("TRUNCATE exists only on PostgreSQL")
    _populated(client, container)
    with pytest.raises(DBAPIError, match="append-only"), container.engine.begin() as conn:
        conn.execute(text("TRUNCATE audit_log"))


def test_an_edited_entry_is_named(client: TestClient, container: Container) -> None:
    _populated(client, container)
    with _tamper(container) as conn:
        conn.execute(text("UPDATE audit_log SET ip = '6.6.6.6' WHERE seq = 3"))
    with container.sessions() as db:
        report = verify(db)
    assert [(p.seq, p.kind) for p in report.problems] == [(3, "edited")]


def test_a_deleted_entry_is_named(client: TestClient, container: Container) -> None:
    _populated(client, container)
    with _tamper(container) as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    with container.sessions() as db:
        report = verify(db)
    assert (4, "missing") in [(p.seq, p.kind) for p in report.problems]


def test_a_deleted_tail_is_found(client: TestClient, container: Container) -> None:
    _populated(client, container)
    total = len(_events(container))
    with _tamper(container) as conn:
        conn.execute(text(f"DELETE FROM audit_log WHERE seq = {total}"))
    with container.sessions() as db:
        report = verify(db)
    assert [(p.seq, p.kind) for p in report.problems] == [(total, "truncated")]


def test_reordered_entries_are_named(client: TestClient, container: Container) -> None:
    _populated(client, container)
    # Swap the last two entries (an entry after a swapped pair is flagged as well).
    last = len(_events(container))
    before = last - 1
    with _tamper(container) as conn:
        conn.execute(text(f"UPDATE audit_log SET seq = -5 WHERE seq = {before}"))
        conn.execute(text(f"UPDATE audit_log SET seq = {before} WHERE seq = {last}"))
        conn.execute(text(f"UPDATE audit_log SET seq = {last} WHERE seq = -5"))
    with container.sessions() as db:
        report = verify(db)
    assert [(p.seq, p.kind) for p in report.problems] == [
        (before, "reordered"),
        (last, "reordered"),
    ]
    assert f"written as entry {last}" in report.problems[0].message


def test_audit_never_holds_the_phone_number_or_password(
    client: TestClient, container: Container
) -> None:
    _populated(client, container)
    with container.engine.connect() as conn:
        dump = " ".join(str(r) for r in conn.execute(text("SELECT * FROM audit_log")))
    assert "13812345678" not in dump
    assert STRONG_PASSWORD not in dump


def test_unauthenticated_security_events_is_401(client: TestClient) -> None:
    assert_problem(client.get("/api/v1/me/security-events"), 401, "not-authenticated")


def test_concurrent_first_entries_chain_one_after_the_other(container: Container) -> None:
    """On an empty log there is no head row to lock yet; two first entries must still chain."""
    import threading

    from walletguard.audit.service import record
    from walletguard.kit.db import unit_of_work

    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def first_entry(name: str) -> None:
        try:
            with unit_of_work(container.sessions) as db:
                barrier.wait(timeout=10)
                record(db, container.clock, f"test.first_{name}")
        except BaseException as exc:  # reported below, in the test's own thread
            failures.append(exc)

    threads = [threading.Thread(target=first_entry, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    with unit_of_work(container.sessions) as db:
        report = verify(db)
    assert report.ok, report.problems
    assert report.entries == 2


def test_concurrent_appends_chain_one_after_the_other(container: Container) -> None:
    """Many transactions, each with two entries, committing at once: one linear chain."""
    import threading

    from walletguard.audit.service import record
    from walletguard.kit.db import unit_of_work

    writers = 8
    barrier = threading.Barrier(writers)
    failures: list[BaseException] = []

    def append(name: int) -> None:
        try:
            with unit_of_work(container.sessions) as db:
                record(db, container.clock, "test.first", data={"writer": name})
                record(db, container.clock, "test.second", data={"writer": name})
                barrier.wait(timeout=20)
        except BaseException as exc:  # reported below, in the test's own thread
            failures.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with unit_of_work(container.sessions) as db:
        report = verify(db)
    assert report.ok, report.problems
    assert report.entries == report.head_seq == 2 * writers
    with container.engine.connect() as conn:
        rows = conn.execute(text("SELECT event, data FROM audit_log ORDER BY seq")).all()
    # A transaction's entries stay together and in the order they were recorded.
    for first, second in zip(rows[0::2], rows[1::2], strict=True):
        assert (first[0], second[0]) == ("test.first", "test.second")
        assert first[1] == second[1]


def test_an_open_transaction_does_not_hold_up_other_appends(
    container: Container, is_postgres: bool
) -> None:
    """The head is locked only while a transaction chains its entries, just before COMMIT: a
    writer still busy with its own work does not make every other writer wait for it."""
    if not is_postgres:
        pytest.skip("SQLite has one writer at a time (BEGIN IMMEDIATE) by design")
    import threading

    from walletguard.audit.service import record
    from walletguard.kit.db import unit_of_work
    from walletguard.kit.ratelimit import AttemptCounters

    recorded = threading.Event()
    other_committed = threading.Event()
    failures: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with unit_of_work(container.sessions) as db:
                AttemptCounters(db, container.clock).reserve("test:slow", lambda _: None)
                record(db, container.clock, "test.slow")
                recorded.set()
                # Still inside its transaction; before, it held the chain's head from here on.
                other_committed.wait(timeout=10)
        except BaseException as exc:  # reported below, in the test's own thread
            failures.append(exc)

    slow = threading.Thread(target=slow_writer)
    slow.start()
    assert recorded.wait(timeout=10)
    with unit_of_work(container.sessions) as db:
        record(db, container.clock, "test.quick")
    other_committed.set()
    slow.join(timeout=30)
    assert failures == []
    # The quick one committed while the slow one was still open, so it comes first.
    assert _events(container) == ["test.quick", "test.slow"]
    with unit_of_work(container.sessions) as db:
        assert verify(db).ok


def test_entries_of_what_rolled_back_are_never_written(container: Container) -> None:
    from walletguard.audit.service import record
    from walletguard.kit.db import unit_of_work

    def refused_transaction() -> None:
        with unit_of_work(container.sessions) as db:
            record(db, container.clock, "test.rolled_back")
            raise RuntimeError("refused")

    def refused_savepoint(db: Session) -> None:
        with db.begin_nested():
            record(db, container.clock, "test.in_savepoint")
            raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        refused_transaction()
    with unit_of_work(container.sessions) as db:
        record(db, container.clock, "test.kept_before")
        with pytest.raises(RuntimeError):
            refused_savepoint(db)
        with db.begin_nested():
            record(db, container.clock, "test.in_released_savepoint")
        record(db, container.clock, "test.kept_after")
    assert _events(container) == [
        "test.kept_before",
        "test.in_released_savepoint",
        "test.kept_after",
    ]
    with unit_of_work(container.sessions) as db:
        assert verify(db).ok


def test_a_transaction_reads_its_own_entries(container: Container) -> None:
    """Reading the log chains what the transaction has recorded so far (e.g. a case timeline
    built right after the freeze it records)."""
    import uuid

    from walletguard.audit.service import events_for_holder, record
    from walletguard.kit.db import unit_of_work

    holder_id = uuid.uuid4()
    with unit_of_work(container.sessions) as db:
        entry = record(db, container.clock, "test.own", holder_id=holder_id)
        rows, total = events_for_holder(db, holder_id, offset=0, limit=10)
        assert total == 1
        assert [r.event for r in rows] == ["test.own"]
        assert entry.seq == 1
        record(db, container.clock, "test.own_later", holder_id=holder_id)
    with unit_of_work(container.sessions) as db:
        report = verify(db)
    assert report.ok, report.problems
    assert report.entries == 2


TRICKY = [
    {"note": 'quote " backslash \\ slash /', "n": 1},
    {"note": "line\nbreak\ttab\r\x01\x1f\x7f", "list": [1, "二"]},
    {"note": "中文 emoji 💸 \u2028 separator", "prev_hash": "not the link", "seq": -1},
    {},
]


def test_entries_of_any_text_chain_and_verify(container: Container) -> None:
    """One or two entries a transaction, the first of the log included: whatever their text,
    they reach the database as written (on PostgreSQL as one JSON parameter), so they verify."""
    recorded = []
    for i, data in enumerate(TRICKY * 2):
        with unit_of_work(container.sessions) as db:
            for _ in range(1 + i % 2):
                entry = audit.record(
                    db,
                    container.clock,
                    "test.text",
                    holder_id=uuid.uuid4() if i % 2 else None,
                    ip="198.51.100.7" if i % 3 else None,
                    data=data,
                )
                recorded.append(entry)
    assert [e.seq for e in recorded] == list(range(1, len(recorded) + 1))
    assert all(a.hash == b.prev_hash for a, b in itertools.pairwise(recorded))
    with container.sessions() as db:
        report = verify(db)
        head = db.execute(text("SELECT seq, hash FROM audit_head")).one()
    assert report.ok, report.problems
    assert report.entries == len(recorded)
    assert tuple(head) == (recorded[-1].seq, recorded[-1].hash)
