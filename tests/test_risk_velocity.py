"""Velocity windows: the same interface on the database and on a real Redis server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from tests.conftest import START
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.risk.velocity import DatabaseVelocity, RedisVelocity, VelocityStore, Window

REDIS_URL = "redis://127.0.0.1:6379/15"
SPANS = (timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24))


def exercise(store: VelocityStore, record: bool = True) -> None:
    holder, card = f"holder:{uuid.uuid4()}", f"card:{uuid.uuid4()}"
    if record:
        store.record([holder, card], START - timedelta(hours=30), 999)  # out of every window
        store.record([holder, card], START - timedelta(hours=2), 10_000)
        store.record([holder], START - timedelta(minutes=30), 20_000)
        store.record([holder, card], START - timedelta(minutes=5), 30_000)
        store.record([holder], START, 40_000)
        store.record([holder], START + timedelta(minutes=1), 50_000)  # after "now"
    windows = store.windows([holder, card], START, SPANS)
    ten, hour, day = SPANS
    assert (windows[(holder, ten)].count, windows[(holder, ten)].sum_fen) == (2, 70_000)
    assert (windows[(holder, hour)].count, windows[(holder, hour)].sum_fen) == (3, 90_000)
    assert (windows[(holder, day)].count, windows[(holder, day)].sum_fen) == (4, 100_000)
    assert (windows[(card, ten)].count, windows[(card, day)].sum_fen) == (1, 40_000)
    unknown = store.windows(["ip:nobody"], START, SPANS)
    assert unknown[("ip:nobody", day)].count == 0
    # Each key read only over the spans asked for it (a busy IP's day is not read for its hour).
    asked = store.window_map({holder: (hour,), card: (ten,), "ip:nobody": ()}, START)
    assert asked == {(holder, hour): Window(3, 90_000), (card, ten): Window(1, 30_000)}


def test_database_velocity(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        exercise(DatabaseVelocity(db))
    with unit_of_work(container.sessions) as db:
        store = DatabaseVelocity(db)
        assert store.count() == 9
        assert store.trim(START + timedelta(days=1)) == 2  # the 30-hour-old rows
        assert store.count() == 7


def test_database_velocity_is_rolled_back_with_its_transaction(container: Container) -> None:
    def failing_movement() -> None:
        with unit_of_work(container.sessions) as db:
            DatabaseVelocity(db).record(["holder:x"], START, 1)
            raise RuntimeError("the movement failed")

    with pytest.raises(RuntimeError):
        failing_movement()
    with unit_of_work(container.sessions) as db:
        assert DatabaseVelocity(db).count() == 0


@pytest.fixture
def redis_store() -> Iterator[RedisVelocity]:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"wg-test-{uuid.uuid4().hex}:"
    yield RedisVelocity(client, prefix=prefix)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)


def test_redis_velocity(redis_store: RedisVelocity) -> None:
    exercise(redis_store)
    # every key expires on its own and old members are trimmed on write
    keys = list(redis_store.client.scan_iter(match=redis_store.prefix + "*"))
    assert keys
    assert all(0 < redis_store.client.ttl(key) <= 2 * 86400 for key in keys)
    for key in keys:
        assert (
            redis_store.client.zcount(key, "-inf", (START - timedelta(hours=49)).timestamp()) == 0
        )


def test_decisions_count_in_redis_when_it_is_configured(
    redis_store: RedisVelocity, tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    from fastapi.testclient import TestClient

    from tests.conftest import make_settings, register
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container
    from walletguard.risk.service import RiskEvent, RiskService
    from walletguard.risk.velocity import RedisVelocity as Store

    settings = make_settings(tmp_path, db_url, redis_url=SecretStr(REDIS_URL))
    container = build_container(settings, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            holder = register(client, container)
        event = RiskEvent(
            kind="movement",
            holder_id=uuid.UUID(holder.holder_id),
            action="payment",
            device_id=uuid.UUID(holder.device_id),
            amount_fen=1_500,
            payee="全家便利店",
        )
        seen = []
        for _ in range(3):
            with unit_of_work(container.sessions) as db:
                risk = RiskService(db, container)
                assert isinstance(risk.velocity, Store)
                seen.append(risk.decide(event).signals["holder_sum_10m"])
            clock.advance(timedelta(seconds=10))
        assert seen == [0, 1_500, 3_000]
        with unit_of_work(container.sessions) as db:
            assert DatabaseVelocity(db).count() == 0  # nothing went to the database
    finally:
        for key in redis_store.client.scan_iter(match=f"wg:vel:holder:{holder.holder_id}"):
            redis_store.client.delete(key)
        container.close()


def test_database_velocity_reads_what_its_transaction_counted(container: Container) -> None:
    """Buckets are written just before COMMIT; until then the transaction's own reads count
    what it recorded, and a savepoint that rolls back takes its counts with it."""
    hour = timedelta(hours=1)

    def refused_savepoint(store: DatabaseVelocity) -> None:
        with store.db.begin_nested():
            store.record(["holder:mine"], START, 1_000)
            raise RuntimeError("refused")

    with unit_of_work(container.sessions) as db:
        store = DatabaseVelocity(db)
        store.record(["holder:mine"], START - timedelta(minutes=2), 100)
        with pytest.raises(RuntimeError):
            refused_savepoint(store)
        store.record(["holder:mine", "ip:mine"], START, 10)
        assert store.window_map({"holder:mine": (hour,), "ip:mine": (hour,)}, START) == {
            ("holder:mine", hour): Window(2, 110),
            ("ip:mine", hour): Window(1, 10),
        }
    with unit_of_work(container.sessions) as db:
        store = DatabaseVelocity(db)
        assert store.windows(["holder:mine"], START, (hour,)) == {
            ("holder:mine", hour): Window(2, 110)
        }
        assert store.count() == 3


def test_an_open_transaction_does_not_hold_a_busy_bucket(
    container: Container, is_postgres: bool
) -> None:
    """A busy key's bucket (one IP, one merchant) is a row every movement adds to. It is
    written just before COMMIT, so a transaction still busy with its own work after counting
    does not make every other movement under that key wait for it."""
    if not is_postgres:
        pytest.skip("SQLite has one writer at a time (BEGIN IMMEDIATE) by design")
    import threading

    counted = threading.Event()
    other_committed = threading.Event()
    failures: list[BaseException] = []

    def slow_movement() -> None:
        try:
            with unit_of_work(container.sessions) as db:
                DatabaseVelocity(db).record(["ip:busy"], START, 1)
                counted.set()
                # Still inside its transaction; before, it held the bucket from here on.
                assert other_committed.wait(timeout=10)
        except BaseException as exc:  # reported below, in the test's own thread
            failures.append(exc)

    slow = threading.Thread(target=slow_movement)
    slow.start()
    assert counted.wait(timeout=10)
    with unit_of_work(container.sessions) as db:
        db.execute(text("SET LOCAL lock_timeout = '2s'"))
        DatabaseVelocity(db).record(["ip:busy"], START, 2)
    other_committed.set()
    slow.join(timeout=30)
    assert failures == []
    with unit_of_work(container.sessions) as db:
        assert DatabaseVelocity(db).windows(["ip:busy"], START, (timedelta(hours=1),)) == {
            ("ip:busy", timedelta(hours=1)): Window(2, 3)
        }
