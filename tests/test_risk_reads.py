"""What a risk decision reads, and how: the security events come from their own partial index
(migration 0012): the index lists exactly the events the risk engine reads, and a holder with
hundreds of payments' audit entries has its few security events found without reading the
payments'. The place the holder was last let in is one short read that finds what the 90-day
history would; the history itself is read only when a rule reaches a signal made from it."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import column, select, text
from sqlalchemy.orm import Session

from tests.conftest import START, Holder, register
from tests.wallet_support import PIN, funded_holder, money_post
from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import one_of, unit_of_work
from walletguard.risk import repository
from walletguard.risk.models import AUDIT_STEPS, RiskDecision
from walletguard.risk.rules import HISTORY_SIGNALS, RECENT_SIGNALS
from walletguard.risk.service import RiskService
from walletguard.risk.signals import HISTORY_DAYS, RiskEvent, cards_and_payees_after

INDEX = "ix_audit_log_risk_events"
T = TypeVar("T")


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
    assert str(one_of(column("status"), ["pending"])) == "status = 'pending'"
    with pytest.raises(ValueError, match="plain words"):
        one_of(column("event"), ["x') OR ('1' = '1"])


# -- the place the holder was last let in, and the history -----------------------------------

PLACES = [("上海/上海", 31.23, 121.47), ("北京/北京", 39.9, 116.4), (None, None, None)]


def _decision(holder_id: uuid.UUID, at: datetime, outcome: str, where: Any) -> RiskDecision:
    place, lat, lon = where
    return RiskDecision(
        holder_id=holder_id,
        kind="movement",
        action="payment",
        place=place,
        lat=lat,
        lon=lon,
        outcome=outcome,
        score=0,
        rules="[]",
        shadow_rules="[]",
        reasons_zh="[]",
        reasons_en="[]",
        signals="{}",
        created_at=at,
    )


def _newest_let_in(history: list[repository.Past], now: datetime) -> repository.Past | None:
    """What the signals took from the history before the short read: its first (newest) row
    that let the holder in at a known place, made at or before ``now``."""
    return next(
        (
            past
            for past in history
            if past.outcome == "allow"
            and past.lat is not None
            and past.lon is not None
            and past.created_at <= now
        ),
        None,
    )


def _stored_then_read(
    container: Container,
    rows: list[RiskDecision],
    holder_id: uuid.UUID,
    since: datetime,
    short_read: Callable[[Session, uuid.UUID, datetime], T],
) -> tuple[list[repository.Past], T]:
    """Store ``rows``, then read the holder's history and ``short_read`` (given the session,
    the holder and ``since``) in one session: what a short read finds is compared with what the
    history gives."""
    with unit_of_work(container.sessions) as db:
        db.add_all(rows)
    with container.sessions() as db:
        return repository.history(db, holder_id, since), short_read(db, holder_id, since)


def test_the_last_place_the_holder_was_let_in_is_the_history_s(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    chance = random.Random(11643)
    for round_ in range(12):
        holder_id = uuid.UUID(register(client, container, f"+86139{round_:08d}").holder_id)
        # Distinct minutes (no two decisions at once: "the newest" is one row), some before
        # the 90 days, some after now (a decision made on a clock ahead).
        minutes = chance.sample(range(-30, HISTORY_DAYS * 24 * 60 + 600), chance.randint(0, 40))
        rows = [
            _decision(
                holder_id,
                now - timedelta(minutes=minute),
                chance.choice(["allow", "allow", "challenge", "hold", "block"]),
                chance.choice(PLACES),
            )
            for minute in minutes
        ]
        history, found = _stored_then_read(
            container,
            rows,
            holder_id,
            since,
            lambda db, holder, since: repository.last_allowed_place(db, holder, since, now),
        )
        assert found == _newest_let_in(history, now), round_


def test_the_short_read_looks_no_further_back_than_the_history(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    # A place more than HISTORY_ROWS decisions ago is out of the history: out of the short
    # read too, so a decision is the same whichever of them it was made from.
    now = clock.now()
    holder_id = uuid.UUID(register(client, container).holder_id)
    old = _decision(holder_id, now - timedelta(days=3), "allow", PLACES[0])
    newer = [
        _decision(holder_id, now - timedelta(minutes=minute), "allow", PLACES[2])
        for minute in range(1, repository.HISTORY_ROWS + 1)
    ]
    with unit_of_work(container.sessions) as db:
        db.add_all([old, *newer])
    since = now - timedelta(days=HISTORY_DAYS)
    with container.sessions() as db:
        assert _newest_let_in(repository.history(db, holder_id, since), now) is None
        assert repository.last_allowed_place(db, holder_id, since, now) is None
    with unit_of_work(container.sessions) as db:
        db.add(_decision(holder_id, now - timedelta(seconds=30), "allow", PLACES[1]))
    with container.sessions() as db:
        found = repository.last_allowed_place(db, holder_id, since, now)
    assert found is not None
    assert found.place == "北京/北京"


def test_the_last_half_hour_s_cards_and_payees_are_the_history_s(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    now = clock.now()
    since = now - timedelta(days=HISTORY_DAYS)
    after = now - timedelta(minutes=30)
    chance = random.Random(6222)
    cards = [uuid.uuid4() for _ in range(4)]
    beyond = uuid.uuid4()
    for round_ in range(12):
        holder_id = uuid.UUID(register(client, container, f"+86138{round_:08d}").holder_id)
        # Mostly the last hour, some ahead of the clock; in two rounds more decisions in the
        # half hour than the history holds, the oldest of them with a card and a payee of
        # their own: out of the history, so out of the short read too.
        many = round_ in (3, 7)
        if many:
            seconds = list(range(1, repository.HISTORY_ROWS + 41))
        else:
            seconds = chance.sample(range(-300, 3600), chance.randint(0, 40))
        rows = []
        for second in seconds:
            row = _decision(
                holder_id,
                now - timedelta(seconds=second),
                chance.choice(["allow", "challenge", "hold", "block"]),
                PLACES[2],
            )
            row.kind = chance.choice(["movement", "movement", "movement", "login"])
            row.action = chance.choice(["payment", "transfer", "top_up", "withdraw"])
            row.card_id = chance.choice([*cards, None])
            row.payee_key = chance.choice(["p1", "p2", "p3", "p4", "p5", None])
            if second > repository.HISTORY_ROWS:
                row.kind, row.action, row.card_id, row.payee_key = (
                    "movement",
                    "top_up",
                    beyond,
                    "beyond",
                )
            rows.append(row)
        history, found = _stored_then_read(
            container,
            rows,
            holder_id,
            since,
            lambda db, holder, since: repository.recent_cards_and_payees(db, holder, since, after),
        )
        assert found == cards_and_payees_after(history, after), round_
        if many:
            assert beyond not in found[0]
            assert "beyond" not in found[1]


def _signals_of_payment(container: Container, amount_fen: int) -> dict[str, Any]:
    with container.sessions() as db:
        stored = db.scalars(
            select(RiskDecision.signals).where(
                RiskDecision.action == "payment", RiskDecision.amount_fen == amount_fen
            )
        ).one()
    found: dict[str, Any] = json.loads(stored)
    return found


def _everyday_payment_after_top_up(
    client: TestClient, container: Container, top_up: str
) -> tuple[Holder, dict[str, Any]]:
    """A holder topped up with ``top_up`` from a card pays 35.00 at a convenience store from
    the balance: the holder, and the signals stored with that payment's decision."""
    holder, _card, _ = funded_holder(client, container, "+8613812345678", top_up=top_up)
    body = {"merchant": "全家便利店", "amount": "35.00", "payment_password": PIN}
    assert money_post(client, "/api/v1/payments", body, holder).status_code == 201
    return holder, _signals_of_payment(container, 3_500)


def test_the_history_is_read_only_when_a_rule_reaches_it(
    client: TestClient, container: Container
) -> None:
    # Under 3,000.00 in the hour: "several cards drained" needs no look at the history.
    holder, everyday = _everyday_payment_after_top_up(client, container, "2900.00")
    # An everyday payment from the holder's own phone: every rule is settled by what is known
    # with the event, so nothing of the history is read, or stored as its evidence.
    assert {*HISTORY_SIGNALS, *RECENT_SIGNALS}.isdisjoint(everyday)
    # 2,500.00 to a payee never paid before: "far above the usual amount" has to look at the
    # history, which holds the top-up and the first payment; both are its evidence.
    body = {"merchant": "金店", "amount": "2500.00", "payment_password": PIN}
    paid = money_post(client, "/api/v1/payments", body, holder)
    assert paid.status_code == 201, paid.text
    signals = _signals_of_payment(container, 250_000)
    assert signals["history_count_90d"] == 2
    assert signals["amount_vs_p95"] == round(250_000 / 290_000, 2)  # the top-up is the p95


def test_after_a_large_top_up_only_the_last_half_hour_is_read(
    client: TestClient, container: Container
) -> None:
    # 5,000.00 topped up from the card: over 3,000.00 in the hour, so "several cards drained"
    # counts the cards of the last half hour (the top-up's one), and nothing more of the
    # history is read or stored.
    _holder, signals = _everyday_payment_after_top_up(client, container, "5000.00")
    assert (signals["cards_debited_30m"], signals["payees_30m"]) == (1, 1)
    assert set(HISTORY_SIGNALS).isdisjoint(signals)


def test_a_refused_payment_stores_the_history_s_signals_whichever_rule_refused_it(
    client: TestClient, container: Container
) -> None:
    # "Scam-named payee" blocks on a signal made with the event; the reviewer still sees what
    # the history says (the usual amount, the cards of the last half hour).
    holder, _card, _ = funded_holder(client, container, "+8613812345678", top_up="500.00")
    holder_id = uuid.UUID(holder.holder_id)
    with unit_of_work(container.sessions) as db:
        risk = RiskService(db, container)
        risk.scam_exposure(holder_id, typology="fake_police", named_payee="公检法安全账户")
        refused = risk.decide(
            RiskEvent(
                kind="movement",
                holder_id=holder_id,
                action="payment",
                amount_fen=1_000,
                payee="公检法安全账户",
            )
        )
    assert (refused.outcome, refused.rules) == ("block", ("scam-named-payee",))
    assert {*HISTORY_SIGNALS, *RECENT_SIGNALS} <= set(refused.signals)
    assert refused.signals["payees_30m"] == 1  # this payment's own payee
    assert refused.signals["history_count_90d"] == 1  # the top-up
