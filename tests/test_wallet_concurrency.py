"""Concurrency on the real database (STYLE rule 3): parallel spenders, parallel retries.

Runs on both databases: PostgreSQL decides with row locks taken in a fixed order and conditional
UPDATEs; SQLite serialises writers (``BEGIN IMMEDIATE``), and the same checks must hold.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import Holder, make_settings
from tests.wallet_support import (
    PIN,
    funded_holder,
    money_post,
    principal_of,
    top_up_now,
    wallet,
)
from walletguard.bootstrap import Container
from walletguard.identity.service import IdentityService, Principal
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import WalletguardError
from walletguard.kit.ratelimit import AttemptCounter
from walletguard.kit.settings import Settings
from walletguard.wallet.ledger import reconcile
from walletguard.wallet.models import LedgerAccount, LedgerTransaction
from walletguard.wallet.service import WalletService

PHONES = [f"+86138000{n:05d}" for n in range(1, 11)]


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # Many movements in one test day; the daily limit is not what is under test here.
    return make_settings(tmp_path, db_url, default_daily_limit_fen=10**12)


def _in_parallel(count: int, work: Callable[[int], str]) -> list[str]:
    barrier = threading.Barrier(count)

    def run(index: int) -> str:
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def _outcome(container: Container, action: Callable[[WalletService], object]) -> str:
    try:
        with unit_of_work(container.sessions) as db:
            action(WalletService(db, container))
    except WalletguardError as exc:
        return exc.slug
    return "ok"


def _check_ledger(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        report = reconcile(db)
        assert report.ok, report.mismatches
        assert (db.scalar(select(func.sum(LedgerAccount.balance_fen))) or 0) == 0
        lowest = db.scalar(
            select(func.min(LedgerAccount.balance_fen - LedgerAccount.pending_fen)).where(
                LedgerAccount.kind == "holder"
            )
        )
        assert lowest is None or lowest >= 0


def test_two_threads_spending_the_same_balance_exactly_one_wins(
    client: TestClient, container: Container
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONES[0], top_up="100.00")
    principal = principal_of(holder)
    for round_number in range(5):

        def spend(index: int) -> str:
            if index == 0:
                return _outcome(
                    container,
                    lambda s: s.pay(
                        principal, merchant="甲店", amount_fen=8_000, payment_password=PIN
                    ),
                )
            return _outcome(
                container,
                lambda s: s.withdraw(
                    principal,
                    card_id=uuid.UUID(card_id),
                    amount_fen=8_000,
                    payment_password=PIN,
                ),
            )

        outcomes = _in_parallel(2, spend)
        assert sorted(outcomes) == ["insufficient-balance", "ok"], (round_number, outcomes)
        assert wallet(client, holder)["balance"] == "20.00"
        # Put the 80.00 back for the next round: refund the payment, or top up again.
        with unit_of_work(container.sessions) as db:
            unrefunded = db.scalar(
                select(LedgerTransaction.id)
                .where(LedgerTransaction.kind == "payment", LedgerTransaction.refunded_fen == 0)
                .limit(1)
            )
        if unrefunded is None:
            top_up_now(client, container, holder, card_id, "80.00")
        else:
            with unit_of_work(container.sessions) as db:
                WalletService(db, container).refund(unrefunded, operator="test", reason="round")
    _check_ledger(container)


def test_parallel_payments_cannot_pass_the_daily_limit_together(
    client: TestClient, container: Container
) -> None:
    # Two payments of 60.00 at once under a daily limit of 100.00: one is refused. On
    # PostgreSQL the one that waited for the other's wallet lock must judge the limit on what
    # the other committed (a statement's snapshot is taken when it starts, before the wait:
    # the facts are read by a statement after the lock).
    for round_number in range(4):
        holder, _, _ = funded_holder(
            client, container, PHONES[round_number], top_up="200.00", serial=round_number + 1
        )
        principal = principal_of(holder)
        with unit_of_work(container.sessions) as db:
            WalletService(db, container).set_limit(
                principal, card_id=None, period="daily", amount_fen=10_000
            )

        def spend(index: int, payer: Principal = principal) -> str:
            return _outcome(
                container,
                lambda s: s.pay(
                    payer, merchant=f"店{index}", amount_fen=6_000, payment_password=PIN
                ),
            )

        outcomes = _in_parallel(2, spend)
        assert sorted(outcomes) == ["limit-exceeded", "ok"], (round_number, outcomes)
        assert wallet(client, holder)["balance"] == "140.00"
    _check_ledger(container)


def test_parallel_wrong_payment_passwords_get_five_tries_between_them(
    client: TestClient, container: Container
) -> None:
    """Twelve wrong payment passwords checked at once: five are refused as wrong, the other
    seven find payments locked; a payment with the right one afterwards is locked out too.
    Checked through identity's own verification, which no wallet lock serialises: each attempt
    waits for the one before it on the PIN counter's row (PostgreSQL) or the write lock
    (SQLite), so none is checked on a count read before another's failure was counted."""
    holder, _, _ = funded_holder(client, container, PHONES[0], top_up="100.00")
    principal = principal_of(holder)

    def guess(index: int) -> str:
        wrong = f"{(int(PIN) + 1 + index) % 1_000_000:06d}"
        try:
            with unit_of_work(container.sessions) as db:
                IdentityService(db, container).verify_payment_password(principal, wrong)
        except WalletguardError as exc:
            return exc.slug
        return "ok"

    outcomes = Counter(_in_parallel(12, guess))
    assert outcomes == Counter({"payment-password-wrong": 5, "payments-locked": 7}), outcomes
    right = _outcome(
        container,
        lambda s: s.pay(principal, merchant="甲店", amount_fen=100, payment_password=PIN),
    )
    assert right == "payments-locked"
    with container.sessions() as db:
        counter = db.get(AttemptCounter, f"pin:{holder.holder_id}")
        assert counter is not None
        assert (counter.failures, counter.lock_count) == (5, 1)
    assert wallet(client, holder)["balance"] == "100.00"


def test_opposite_transfers_do_not_deadlock(client: TestClient, container: Container) -> None:
    alice, _, _ = funded_holder(client, container, PHONES[0], top_up="100.00", serial=1)
    bob, _, _ = funded_holder(client, container, PHONES[1], name="李娜", top_up="100.00", serial=2)
    pairs = [(alice, bob), (bob, alice)]

    def send(index: int) -> str:
        sender, recipient = pairs[index % 2]
        return _outcome(
            container,
            lambda s: s.transfer(
                principal_of(sender),
                to_phone=recipient.phone,
                amount_fen=100,
                payment_password=PIN,
            ),
        )

    outcomes = _in_parallel(10, send)
    assert outcomes == ["ok"] * 10
    assert wallet(client, alice)["balance"] == "100.00"
    assert wallet(client, bob)["balance"] == "100.00"
    _check_ledger(container)


@pytest.mark.slow
def test_twenty_threads_of_random_transfers_keep_the_invariants(
    client: TestClient, container: Container
) -> None:
    holders: list[Holder] = []
    for index, phone in enumerate(PHONES):
        holder, _, _ = funded_holder(
            client, container, phone, name="张伟", top_up="500.00", serial=index + 1
        )
        holders.append(holder)
    principals = [principal_of(h) for h in holders]

    def worker(index: int) -> str:
        rng = random.Random(index)
        outcomes: Counter[str] = Counter()
        for _ in range(100):
            sender, recipient = rng.sample(range(len(holders)), 2)
            amount = rng.randint(1, 20_000)
            outcomes[
                _outcome(
                    container,
                    lambda s, sender=sender, recipient=recipient, amount=amount: s.transfer(
                        principals[sender],
                        to_phone=holders[recipient].phone,
                        amount_fen=amount,
                        payment_password=PIN,
                    ),
                )
            ] += 1
        return ",".join(f"{k}={v}" for k, v in sorted(outcomes.items()))

    results = _in_parallel(20, worker)
    totals: Counter[str] = Counter()
    for line in results:
        for part in line.split(","):
            name, count = part.split("=")
            totals[name] += int(count)
    assert set(totals) <= {"ok", "insufficient-balance"}, totals
    assert totals["ok"] > 100, totals
    _check_ledger(container)
    with container.sessions() as db:
        posted = db.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == "transfer", LedgerTransaction.status == "posted")
        )
        held = db.scalar(
            select(func.sum(LedgerAccount.balance_fen)).where(LedgerAccount.kind == "holder")
        )
    assert posted == totals["ok"]
    # Transfers move money between holders: the holders' total is what was topped up.
    assert held == 500_00 * len(holders)


def test_concurrent_retries_with_one_key_execute_once(
    client: TestClient, container: Container
) -> None:
    holder, _, _ = funded_holder(client, container, PHONES[0], top_up="100.00")
    key = str(uuid.uuid4())
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    responses: list[Any] = [None] * 6

    def retry(index: int) -> str:
        responses[index] = money_post(client, "/api/v1/payments", body, holder, key=key)
        return str(responses[index].status_code)

    statuses = _in_parallel(6, retry)
    assert set(statuses) == {"201"}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert wallet(client, holder)["balance"] == "90.00"
    _check_ledger(container)
