"""Property-based: any sequence of movements, refunds and retries keeps the ledger whole.

Hypothesis drives random sequences through the API (top-ups confirmed, mistyped, cancelled or
left to expire; payments from balance and card; transfers; withdrawals; partial refunds; retries
with the same Idempotency-Key, and the same key with a different request). A simple model of
who should have what runs alongside. After every sequence:

* every cached balance and hold equals its postings and pending movements (``reconcile``);
* the ledger sums to zero, and money is conserved between the wallet and the bank's cards;
* no holder's balance is below zero;
* every balance, in the wallet and at the bank, is what the model says.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.conftest import Holder, make_settings
from tests.wallet_support import (
    PIN,
    bank_balance,
    funded_holder,
    latest_sms_code,
    money_post,
    wallet,
)
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import WalletguardError
from walletguard.kit.money import format_yuan_plain
from walletguard.kit.settings import Settings
from walletguard.wallet.ledger import reconcile
from walletguard.wallet.models import LedgerAccount
from walletguard.wallet.service import WalletService

PHONES = ("+8613812345678", "+8613912345678", "+8613712345678")
NAMES = ("张伟", "李娜", "王芳")
CARD_START = 20_000_000


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # Hypothesis runs many sequences against one database; the daily limit is not under test,
    # and neither is the risk engine, which rightly holds such bursts of card debits (its own
    # tests cover that).
    return make_settings(
        tmp_path, db_url, default_daily_limit_fen=10**12, disabled_controls="risk_engine"
    )


@dataclass
class Movement:
    id: str
    kind: str
    source: str
    holder: int
    to: int | None
    amount: int
    refunded: int = 0


@dataclass
class Model:
    wallets: list[int]
    cards: list[int]
    movements: list[Movement] = field(default_factory=list)


@dataclass
class Sandbox:
    client: TestClient
    container: Container
    clock: ManualClock
    holders: list[Holder]
    card_ids: list[str]
    numbers: list[str]
    model: Model
    conserved: int


@pytest.fixture
def sandbox(client: TestClient, container: Container, clock: ManualClock) -> Sandbox:
    holders, card_ids, numbers = [], [], []
    for index, (phone, name) in enumerate(zip(PHONES, NAMES, strict=True)):
        holder, card_id, number = funded_holder(
            client, container, phone, name=name, card_balance_fen=CARD_START, serial=index + 1
        )
        holders.append(holder)
        card_ids.append(card_id)
        numbers.append(number)
    return Sandbox(
        client=client,
        container=container,
        clock=clock,
        holders=holders,
        card_ids=card_ids,
        numbers=numbers,
        model=Model(wallets=[0, 0, 0], cards=[CARD_START] * 3),
        conserved=CARD_START * 3,
    )


who = st.integers(min_value=0, max_value=2)
fen = st.integers(min_value=1, max_value=300_000)
operation = st.one_of(
    st.tuples(
        st.just("top_up"), who, fen, st.sampled_from(["confirm", "wrong", "cancel", "expire"])
    ),
    st.tuples(st.just("pay"), who, fen, st.booleans()),
    st.tuples(st.just("transfer"), who, who, fen),
    st.tuples(st.just("withdraw"), who, fen),
    st.tuples(st.just("refund"), st.integers(min_value=0, max_value=50), st.floats(0.1, 1.0)),
    st.tuples(st.just("retry")),
    st.tuples(st.just("reuse")),
)


class Runner:
    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.last: tuple[str, dict[str, Any], Holder, str, Any] | None = None

    def post(self, path: str, body: dict[str, Any], holder: Holder) -> Any:
        key = str(uuid.uuid4())
        response = money_post(self.box.client, path, body, holder, key=key)
        self.last = (path, body, holder, key, response)
        return response

    def confirm(self, holder: Holder, movement_id: str, code: str) -> Any:
        return self.post(
            f"/api/v1/movements/{movement_id}/confirm", {"dynamic_password": code}, holder
        )

    def card_debit(self, h: int, path: str, body: dict[str, Any], outcome: str) -> Any:
        """Start a card debit and finish it as ``outcome`` says; the final response."""
        box, holder = self.box, self.box.holders[h]
        started = self.post(path, body, holder)
        assert started.status_code == 202, started.text
        movement_id = started.json()["movement_id"]
        code = latest_sms_code(box.container, holder.phone)
        if outcome == "wrong":
            wrong = "000000" if code != "000000" else "111111"
            assert self.confirm(holder, movement_id, wrong).status_code == 403
            return None
        if outcome == "cancel":
            cancelled = self.post(f"/api/v1/movements/{movement_id}/cancel", {}, holder)
            assert cancelled.status_code == 200, cancelled.text
            return None
        if outcome == "expire":
            box.clock.advance(timedelta(minutes=5, seconds=1))
            assert self.confirm(holder, movement_id, code).status_code == 409
            return None
        return self.confirm(holder, movement_id, code)

    def apply(self, op: tuple[Any, ...]) -> None:
        box, model = self.box, self.box.model
        name = op[0]
        if name == "top_up":
            _, h, amount, outcome = op
            body = {
                "card_id": box.card_ids[h],
                "amount": format_yuan_plain(amount),
                "payment_password": PIN,
            }
            done = self.card_debit(h, "/api/v1/top-ups", body, outcome)
            if done is None:
                return
            if model.cards[h] >= amount:
                assert done.status_code == 200, done.text
                model.cards[h] -= amount
                model.wallets[h] += amount
                model.movements.append(
                    Movement(done.json()["id"], "top_up", "card", h, None, amount)
                )
            else:
                assert done.status_code == 409, done.text
        elif name == "pay":
            _, h, amount, by_card = op
            body = {
                "merchant": "商店",
                "amount": format_yuan_plain(amount),
                "payment_password": PIN,
            }
            if by_card:
                body["card_id"] = box.card_ids[h]
                done = self.card_debit(h, "/api/v1/payments", body, "confirm")
                if model.cards[h] >= amount:
                    assert done.status_code == 200, done.text
                    model.cards[h] -= amount
                    model.movements.append(
                        Movement(done.json()["id"], "payment", "card", h, None, amount)
                    )
                else:
                    assert done.status_code == 409
                return
            response = self.post("/api/v1/payments", body, box.holders[h])
            if model.wallets[h] >= amount:
                assert response.status_code == 201, response.text
                model.wallets[h] -= amount
                model.movements.append(
                    Movement(response.json()["id"], "payment", "balance", h, None, amount)
                )
            else:
                assert response.status_code == 409, response.text
        elif name == "transfer":
            _, h, to, amount = op
            body = {
                "to_phone": box.holders[to].phone,
                "amount": format_yuan_plain(amount),
                "payment_password": PIN,
            }
            response = self.post("/api/v1/transfers", body, box.holders[h])
            if h == to:
                assert response.status_code == 422
            elif model.wallets[h] >= amount:
                assert response.status_code == 201, response.text
                model.wallets[h] -= amount
                model.wallets[to] += amount
                model.movements.append(
                    Movement(response.json()["id"], "transfer", "balance", h, to, amount)
                )
            else:
                assert response.status_code == 409
        elif name == "withdraw":
            _, h, amount = op
            body = {
                "card_id": box.card_ids[h],
                "amount": format_yuan_plain(amount),
                "payment_password": PIN,
            }
            response = self.post("/api/v1/withdrawals", body, box.holders[h])
            if model.wallets[h] >= amount:
                assert response.status_code == 201, response.text
                model.wallets[h] -= amount
                model.cards[h] += amount
            else:
                assert response.status_code == 409
        elif name == "refund":
            _, index, share = op
            if not model.movements:
                return
            movement = model.movements[index % len(model.movements)]
            rest = movement.amount - movement.refunded
            amount = max(1, int(rest * share))
            debited = (
                model.wallets[movement.to]
                if movement.kind == "transfer" and movement.to is not None
                else model.wallets[movement.holder]
                if movement.kind == "top_up"
                else None
            )
            try:
                with unit_of_work(box.container.sessions) as db:
                    WalletService(db, box.container).refund(
                        uuid.UUID(movement.id), amount, operator="hypothesis", reason="property"
                    )
            except WalletguardError as exc:
                refused: WalletguardError | None = exc
            else:
                refused = None
            if refused is not None:
                # Only the refusals the model predicts: nothing left, or not enough to take back.
                assert rest == 0 or (debited is not None and debited < amount), refused.slug
                return
            assert rest >= amount and (debited is None or debited >= amount)
            movement.refunded += amount
            if movement.kind == "payment" and movement.source == "balance":
                model.wallets[movement.holder] += amount
            elif movement.kind == "payment":
                model.cards[movement.holder] += amount
            elif movement.kind == "transfer":
                assert movement.to is not None
                model.wallets[movement.to] -= amount
                model.wallets[movement.holder] += amount
            else:
                model.wallets[movement.holder] -= amount
                model.cards[movement.holder] += amount
        elif name in ("retry", "reuse") and self.last is not None:
            path, body, holder, key, first = self.last
            if name == "retry":
                again = money_post(box.client, path, body, holder, key=key)
                if first.is_success:
                    assert again.status_code == first.status_code
                    assert again.json() == first.json()
                    assert again.headers["idempotent-replayed"] == "true"
                return
            if first.is_success and "amount" in body:
                # The same key with another amount: refused, nothing moves.
                changed = {
                    **body,
                    "amount": format_yuan_plain(int(body["amount"].replace(".", "")) + 1),
                }
                reused = money_post(box.client, path, changed, holder, key=key)
                assert reused.status_code == 409, reused.text

    def check(self) -> None:
        box, model = self.box, self.box.model
        with unit_of_work(box.container.sessions) as db:
            report = reconcile(db)
            assert report.ok, report.mismatches
            total = db.scalar(select(func.sum(LedgerAccount.balance_fen))) or 0
            assert total == 0
            outside = (
                db.scalar(
                    select(func.sum(LedgerAccount.balance_fen)).where(
                        LedgerAccount.kind != "settlement"
                    )
                )
                or 0
            )
            lowest = db.scalar(
                select(func.min(LedgerAccount.balance_fen - LedgerAccount.pending_fen)).where(
                    LedgerAccount.kind == "holder"
                )
            )
            assert lowest is None or lowest >= 0
        cards = [bank_balance(box.container, n) or 0 for n in box.numbers]
        assert sum(cards) + outside == box.conserved
        assert cards == model.cards
        for holder, expected in zip(box.holders, model.wallets, strict=True):
            assert wallet(box.client, holder)["balance"] == format_yuan_plain(expected)


@hypothesis_settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(operation, min_size=1, max_size=16))
def test_any_sequence_keeps_the_ledger_whole(
    sandbox: Sandbox, operations: list[tuple[Any, ...]]
) -> None:
    # One database for all examples: the invariants are about the whole ledger, so they must
    # hold after every sequence, whatever came before.
    runner = Runner(sandbox)
    for op in operations:
        runner.apply(op)
    runner.check()
