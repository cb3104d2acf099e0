"""Storage: migrations up and down on both databases; no plaintext personal data at rest;
timestamps come back as the instants stored, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url

from tests.conftest import (
    STRONG_PASSWORD,
    Database,
    register,
    schema_differences,
    scratch_postgres,
)
from walletguard.bootstrap import Container
from walletguard.kit.db import create_db_engine, unit_of_work
from walletguard.kit.ratelimit import AttemptCounter
from walletguard.migrations import current_heads, downgrade, upgrade
from walletguard.models import Base

ID_NUMBER = (
    "11010519850312123"
    + "10X98765432"[
        sum(
            int(d) * w
            for d, w in zip(
                "11010519850312123",
                [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2],
                strict=True,
            )
        )
        % 11
    ]
)


def test_migrations_go_down_and_up_again(database: Database, tmp_path: Path) -> None:
    if database.is_postgres:
        name = f"{make_url(database.url).database}_updown"
        with scratch_postgres(database.url, name) as url:
            _down_and_up(url)
    else:
        _down_and_up(f"sqlite:///{tmp_path / 'updown.db'}")


def _down_and_up(url: str) -> None:
    engine = create_db_engine(url)
    try:
        upgrade(engine)
        assert current_heads(engine)
        tables = set(inspect(engine).get_table_names())
        assert {t.name for t in Base.metadata.sorted_tables} <= tables
        downgrade(engine, "base")
        assert not current_heads(engine)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert {t.name for t in Base.metadata.sorted_tables} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


def test_database_holds_no_plaintext_personal_data(
    client: TestClient, container: Container
) -> None:
    register(client, container, "+8613812345678", name="欧阳娜娜", id_number=ID_NUMBER)
    needles = ["13812345678", "欧阳娜娜", ID_NUMBER, "1985-03-12", STRONG_PASSWORD]
    with container.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                dump = " ".join(str(value) for value in row)
                for needle in needles:
                    assert needle not in dump, f"{needle!r} in plain text in {table.name}"


def test_migrations_match_the_models(db_url: str) -> None:
    """Every model change has its migration: the migrated schema and the models agree."""
    engine = create_db_engine(db_url)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_timestamps_come_back_as_the_same_instant_in_utc(container: Container) -> None:
    beijing = datetime(2026, 3, 12, 17, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))
    with unit_of_work(container.sessions) as db:
        db.add(AttemptCounter(key="tz", failures=0, window_start=beijing, lock_count=0))
    with unit_of_work(container.sessions) as db:
        stored = db.scalar(select(AttemptCounter.window_start).where(AttemptCounter.key == "tz"))
        if container.settings.is_sqlite:
            return_zone = None
        else:
            # Every PostgreSQL session of ours is in UTC (kit.db.create_db_engine), whatever
            # the server's default zone, so values arrive in Python's own UTC.
            return_zone = db.execute(text("SHOW TimeZone")).scalar_one()
    assert stored == beijing
    assert stored is not None and stored.tzinfo is UTC
    assert stored.hour == 9
    assert return_zone in (None, "UTC")
