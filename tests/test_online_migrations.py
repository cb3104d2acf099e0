"""Index migrations on PostgreSQL build and drop their indexes without holding the wallet's
writes (``walletguard.migrations.online``), and a migration interrupted part-way runs again to
the schema of the models."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from tests.conftest import Database, schema_differences, scratch_postgres
from walletguard.kit.db import create_db_engine
from walletguard.migrations import current_heads, downgrade, upgrade

INDEX_DDL = re.compile(r"^\s*(CREATE|DROP)\s+(UNIQUE\s+)?INDEX\b", re.IGNORECASE)


@contextmanager
def scratch_engine(database: Database) -> Iterator[Engine]:
    """A fresh PostgreSQL database of its own beside the suite's, dropped afterwards."""
    if not database.is_postgres:
        pytest.skip("concurrent index builds are PostgreSQL's")
    name = f"{make_url(database.url).database}_online_{uuid.uuid4().hex[:6]}"
    with scratch_postgres(database.url, name) as url:
        engine = create_db_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def at_revision(engine: Engine, revision: str) -> None:
    """Every branch migrated (MFA and money branch off the foundation), then the index
    migrations taken back down to ``revision``."""
    upgrade(engine)
    downgrade(engine, revision)


def test_index_migrations_build_concurrently_outside_a_transaction(database: Database) -> None:
    with scratch_engine(database) as engine:
        upgrade(engine)
        sent: list[tuple[str, bool]] = []

        def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if INDEX_DDL.match(statement):
                # In an autocommit block the driver has no transaction open.
                sent.append((" ".join(statement.split()), conn.connection.autocommit))

        event.listen(engine, "before_cursor_execute", record)
        try:
            downgrade(engine, "0010")
            upgrade(engine)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        # 0011-0013 down and up again: each way, every index built and dropped.
        assert len(sent) >= 24
        for statement, autocommit in sent:
            assert "CONCURRENTLY" in statement, statement
            assert autocommit, f"inside a transaction: {statement}"
        assert schema_differences(engine) == []


def test_writes_go_on_while_an_index_migration_waits(database: Database) -> None:
    """A plain CREATE INDEX waits for a transaction writing its table and makes every later
    writer wait behind it; a concurrent build lets the later writer through."""
    with scratch_engine(database) as engine:
        at_revision(engine, "0011")
        holder = uuid.uuid4()
        insert = text(
            "INSERT INTO audit_log (seq, at, event, holder_id, data, prev_hash, hash) "
            "VALUES (:seq, now(), 'test.write', :holder, '{}', '', :hash)"
        )
        # A writer that keeps its transaction open: the index build must wait for it.
        first = engine.connect()
        first.execute(insert, {"seq": 1, "holder": holder, "hash": "a" * 64})
        migrating = threading.Thread(target=upgrade, args=(engine, "0012"), daemon=True)
        migrating.start()
        second = create_engine(engine.url)
        try:
            with second.connect() as conn:
                _until_the_build_waits(conn)
                assert migrating.is_alive(), "the build did not wait for the open writer"
                conn.execute(text("SET lock_timeout = '2s'"))
                conn.execute(insert, {"seq": 2, "holder": holder, "hash": "b" * 64})
                conn.commit()
        finally:
            second.dispose()
            first.rollback()
            first.close()
            migrating.join(timeout=60)
        assert not migrating.is_alive()
        assert "0012" in current_heads(engine)


def _until_the_build_waits(conn: Connection, timeout_s: float = 30.0) -> None:
    """Until a CREATE INDEX of this database is running and waiting (for a lock, or for the
    open transactions a concurrent build waits out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query ILIKE 'CREATE INDEX%' AND state = 'active'"
                " AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
        conn.rollback()
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("no index build waited for the open writer")


def test_an_interrupted_index_migration_runs_again(database: Database) -> None:
    with scratch_engine(database) as engine:
        at_revision(engine, "0012")
        # Migration 0013 stopped after its first replacement had built the new index beside
        # the old one and dropped the old: the new one still carries its building name, and
        # 0013 is not recorded as done.
        with engine.connect() as conn:
            conn.execute(text("DROP INDEX ix_ledger_transactions_counterparty_holder_id"))
            conn.execute(
                text(
                    "CREATE INDEX ix_ledger_transactions_counterparty_holder_id_new "
                    "ON ledger_transactions (counterparty_holder_id) "
                    "WHERE counterparty_holder_id IS NOT NULL"
                )
            )
            conn.commit()
        upgrade(engine)
        assert "0013" in current_heads(engine)
        assert schema_differences(engine) == []
