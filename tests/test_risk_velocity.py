"""Velocity windows: the same interface on the database and on a real Redis server."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from tests.conftest import START
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.risk.velocity import (
    RETENTION,
    DatabaseVelocity,
    RedisVelocity,
    VelocityStore,
    Window,
)

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


def _minute(at: datetime) -> int:
    return int(at.timestamp()) // 60


def test_redis_velocity(redis_store: RedisVelocity) -> None:
    exercise(redis_store)
    # Per key, a hash for each hour of its minutes and for each day of its hours, each expiring
    # on its own, RETENTION (and an hour) after its last write; a key's hashes share one Redis
    # Cluster slot (the braces).
    keys = {key.decode() for key in redis_store.client.scan_iter(match=redis_store.prefix + "*")}
    holder_times = [START + timedelta(minutes=m) for m in (-30 * 60, -120, -30, -5, 0, 1)]
    card_times = [START + timedelta(minutes=m) for m in (-30 * 60, -120, -5)]
    expected = 0
    for times in (holder_times, card_times):
        expected += len({_minute(at) // 60 for at in times})
        expected += len({_minute(at) // 60 // 24 for at in times})
    assert len(keys) == expected
    assert all(
        0 < redis_store.client.ttl(key) <= (RETENTION + timedelta(hours=1)).total_seconds()
        for key in keys
    )
    assert all(
        re.fullmatch(re.escape(redis_store.prefix) + r"\{(holder|card):[^}]+\}:[mh]:\d+", key)
        for key in keys
    )


def test_a_busy_key_is_summed_in_redis_by_the_minute_and_hour_not_by_the_payment(
    redis_store: RedisVelocity,
) -> None:
    """A merchant paid 3,000 times in a day: its hashes hold a pair of fields a minute and an
    hour, not a member a payment, and a window comes back as its sums alone, counted by the
    minute as the database counts them (the window's first minute whole), whichever hours its
    ends fall in."""
    merchant = f"payee:{uuid.uuid4().hex}"
    first = START - timedelta(hours=23, minutes=20)
    times = [first + timedelta(seconds=28 * i) for i in range(3_000)]  # the last 28 s before START
    for at in times:
        redis_store.record([merchant], at, 100)
    keys = list(redis_store.client.scan_iter(match=redis_store.prefix + "*"))
    fields = sum(redis_store.client.hlen(key) for key in keys)
    minutes = {_minute(at) for at in times}
    assert fields == 2 * (len(minutes) + len({m // 60 for m in minutes})) < 3_000
    spans = [timedelta(minutes=m) for m in (1, 7, 10, 59, 60, 61, 120, 330, 24 * 60)]
    for now in (START, START - timedelta(minutes=17), START - timedelta(hours=3, seconds=-61)):
        found = redis_store.window_map({merchant: spans}, now)
        for span in spans:
            hits = sum(1 for at in times if _minute(now - span) <= _minute(at) <= _minute(now))
            assert found[(merchant, span)] == Window(hits, 100 * hits), (now, span)
    day = timedelta(hours=24)
    assert redis_store.window_map({merchant: [day]}, START) == {
        (merchant, day): Window(3_000, 300_000)
    }


def test_a_redis_that_lost_its_scripts_is_given_the_script_again(
    redis_store: RedisVelocity,
) -> None:
    """A restarted Redis (or ``SCRIPT FLUSH``) no longer knows the script by its hash: the read
    sends it whole (which Redis keeps for the next one) and answers the same."""
    holder = f"holder:{uuid.uuid4()}"
    redis_store.record([holder], START - timedelta(minutes=3), 700)
    spans = (timedelta(minutes=10),)
    before = redis_store.windows([holder], START, spans)
    redis_store.client.script_flush()
    assert (
        redis_store.windows([holder], START, spans)
        == before
        == {(holder, spans[0]): Window(1, 700)}
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
