"""Money movements through the API: top-up, withdraw, pay, transfer, confirm, cancel (SPEC C4)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import assert_problem
from tests.wallet_support import (
    MONEY_TABLES,
    PIN,
    audit_events,
    bank_balance,
    confirm,
    funded_holder,
    latest_sms,
    latest_sms_code,
    money_post,
    table_counts,
    wallet,
    wallet_holder,
)
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.wallet.ledger import (
    HOLDER,
    MERCHANT,
    InsufficientBalance,
    Ledger,
    holder_code,
    merchant_code,
    reconcile,
)
from walletguard.wallet.models import LedgerAccount, LedgerTransaction, Posting

PHONE = "+8613812345678"
FRIEND = "+8613912345678"


def _ledger_ok(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        report = reconcile(db)
    assert report.ok, report.mismatches


def test_top_up_from_a_card_needs_the_banks_dynamic_password(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = money_post(
        client,
        "/api/v1/top-ups",
        {"card_id": card_id, "amount": "1,000.00", "payment_password": PIN},
        holder,
    )
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] == "awaiting_bank_confirmation"
    assert body["movement"]["status"] == "pending"
    assert body["movement"]["kind"] == "top_up"
    assert "walletguard 钱包充值" in latest_sms(container, PHONE).body
    # Pending money is not in the wallet yet, and not gone from the card.
    assert wallet(client, holder)["balance"] == "0.00"
    assert bank_balance(container, number) == 10_000_000
    done = confirm(client, holder, body["movement_id"], latest_sms_code(container, PHONE))
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "posted"
    assert done.json()["direction"] == "in"
    assert wallet(client, holder) == {
        "balance": "1000.00",
        "pending": "0.00",
        "available": "1000.00",
        "transactions_closed": False,
        "closed_at": None,
        "reopens_at": None,
    }
    assert bank_balance(container, number) == 10_000_000 - 100_000
    _ledger_ok(container)


def test_withdraw_pay_and_their_audit(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE, top_up="500.00")
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "  便利店  ", "amount": "120.50", "payment_password": PIN},
        holder,
    )
    assert paid.status_code == 201, paid.text
    payment = paid.json()
    assert payment["status"] == "posted"
    assert payment["counterparty"] == "便利店"
    assert payment["source"] == "balance"
    assert payment["card"] is None
    assert payment["risk_decision"] == "allow"
    assert payment["device_id"] == holder.device_id
    withdrawn = money_post(
        client,
        "/api/v1/withdrawals",
        {"card_id": card_id, "amount": "79.50", "payment_password": PIN},
        holder,
    )
    assert withdrawn.status_code == 201, withdrawn.text
    assert withdrawn.json()["card"]["last4"] == number[-4:]
    assert wallet(client, holder)["balance"] == "300.00"
    assert bank_balance(container, number) == 10_000_000 - 50_000 + 7_950
    events = audit_events(container, "movement.")
    assert [e.event for e in events].count("movement.posted") == 3
    payment_event = next(e for e in events if payment["id"] in e.data)
    data = json.loads(payment_event.data)
    assert data["amount_fen"] == 12_050
    assert data["payee"] == "便利店"
    assert payment_event.ip == "testclient"
    for entry in events:
        assert number not in entry.data
        assert "13812345678" not in entry.data
    _ledger_ok(container)


def test_more_than_the_balance_is_refused_and_moves_nothing(
    client: TestClient, container: Container
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE, top_up="10.00")
    before = table_counts(container, *MONEY_TABLES)
    for path, body in (
        ("/api/v1/payments", {"merchant": "m", "amount": "10.01", "payment_password": PIN}),
        ("/api/v1/withdrawals", {"card_id": card_id, "amount": "10.01", "payment_password": PIN}),
    ):
        assert_problem(money_post(client, path, body, holder), 409, "insufficient-balance")
    assert table_counts(container, *MONEY_TABLES) == before
    assert wallet(client, holder)["balance"] == "10.00"


@pytest.mark.parametrize(
    "amount",
    ["-1.00", "0", "0.00", "1.001", "1.000", "abc", "", 1.5, 100, None, "1e3"],
)
def test_bad_amounts_are_problems_and_write_nothing(
    client: TestClient, container: Container, amount: Any
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE, top_up="10.00")
    before = table_counts(container, *MONEY_TABLES)
    for path, body in (
        ("/api/v1/payments", {"merchant": "m", "amount": amount, "payment_password": PIN}),
        ("/api/v1/top-ups", {"card_id": card_id, "amount": amount, "payment_password": PIN}),
        ("/api/v1/transfers", {"to_phone": FRIEND, "amount": amount, "payment_password": PIN}),
        ("/api/v1/withdrawals", {"card_id": card_id, "amount": amount, "payment_password": PIN}),
    ):
        problem = assert_problem(money_post(client, path, body, holder), 422, "invalid-input")
        assert [e["field"] for e in problem["errors"]] == ["amount"]
    assert table_counts(container, *MONEY_TABLES) == before


def test_a_wrong_payment_password_moves_nothing(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="10.00")
    before = table_counts(container, *MONEY_TABLES)
    response = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "m", "amount": "1.00", "payment_password": "000001"},
        holder,
    )
    assert_problem(response, 403, "payment-password-wrong")
    assert table_counts(container, *MONEY_TABLES) == before
    assert [e.event for e in audit_events(container, "payment_password.failed")]


def test_payment_password_not_set(client: TestClient, container: Container) -> None:
    from tests.conftest import register

    holder = register(client, container, PHONE)
    response = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "m", "amount": "1.00", "payment_password": PIN},
        holder,
    )
    assert_problem(response, 409, "payment-password-not-set")


def test_paying_a_merchant_by_card(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "8813.00", "payment_password": PIN, "card_id": card_id},
        holder,
    )
    assert started.status_code == 202, started.text
    assert "8,813.00 元" in latest_sms(container, PHONE).body
    done = confirm(client, holder, started.json()["movement_id"], latest_sms_code(container, PHONE))
    assert done.status_code == 200, done.text
    assert done.json()["source"] == "card"
    assert done.json()["card"]["last4"] == number[-4:]
    assert wallet(client, holder)["balance"] == "0.00"
    assert bank_balance(container, number) == 10_000_000 - 881_300
    _ledger_ok(container)


def test_transfers_between_holders(client: TestClient, container: Container) -> None:
    sender, card_id, _ = funded_holder(client, container, PHONE, top_up="100.00")
    friend = wallet_holder(client, container, FRIEND, name="李娜")
    sent = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": "139 1234 5678", "amount": "30.00", "payment_password": PIN},
        sender,
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["counterparty"] == "+86 139****5678"
    assert wallet(client, sender)["balance"] == "70.00"
    assert wallet(client, friend)["balance"] == "30.00"
    seen = client.get("/api/v1/movements", headers=friend.auth).json()["items"]
    assert len(seen) == 1
    assert seen[0]["direction"] == "in"
    assert seen[0]["counterparty"] == "+86 138****5678"
    # The recipient sees neither the sender's card nor device nor IP.
    assert seen[0]["card"] is None and seen[0]["device_id"] is None and seen[0]["ip"] is None
    # The recipient cannot act on the sender's movement.
    cancel = money_post(client, f"/api/v1/movements/{sent.json()['id']}/cancel", {}, friend)
    assert_problem(cancel, 404, "not-found")

    by_card = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": FRIEND, "amount": "5.00", "payment_password": PIN, "card_id": card_id},
        sender,
    )
    assert by_card.status_code == 202, by_card.text
    sms = latest_sms(container, PHONE).body
    assert "转账给 +86 139****5678" in sms and "5.00 元" in sms
    done = confirm(client, sender, by_card.json()["movement_id"], latest_sms_code(container, PHONE))
    assert done.status_code == 200, done.text
    assert wallet(client, friend)["balance"] == "35.00"
    assert wallet(client, sender)["balance"] == "70.00"
    _ledger_ok(container)


def test_transfers_to_numbers_that_cannot_receive(client: TestClient, container: Container) -> None:
    sender, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    before = table_counts(container, *MONEY_TABLES)
    unknown = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": "+8613700000000", "amount": "1.00", "payment_password": PIN},
        sender,
    )
    problem = assert_problem(unknown, 422, "no-receiving-wallet")
    assert "13700000000" not in unknown.text
    assert problem["field"] == "to_phone"
    self_transfer = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": PHONE, "amount": "1.00", "payment_password": PIN},
        sender,
    )
    assert_problem(self_transfer, 422, "transfer-to-self")
    assert table_counts(container, *MONEY_TABLES) == before
    for _ in range(9):
        money_post(
            client,
            "/api/v1/transfers",
            {"to_phone": "+8613700000000", "amount": "1.00", "payment_password": PIN},
            sender,
        )
    probing = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": "+8613700000001", "amount": "1.00", "payment_password": PIN},
        sender,
    )
    assert_problem(probing, 429, "too-many-attempts")


def test_cancel_a_pending_movement(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = money_post(
        client,
        "/api/v1/top-ups",
        {"card_id": card_id, "amount": "10.00", "payment_password": PIN},
        holder,
    ).json()
    code = latest_sms_code(container, PHONE)
    cancelled = money_post(client, f"/api/v1/movements/{started['movement_id']}/cancel", {}, holder)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "voided"
    assert cancelled.json()["status_reason"] == "cancelled"
    assert_problem(
        confirm(client, holder, started["movement_id"], code), 409, "movement-not-pending"
    )
    again = money_post(client, f"/api/v1/movements/{started['movement_id']}/cancel", {}, holder)
    assert_problem(again, 409, "movement-not-pending")
    assert bank_balance(container, number) == 10_000_000
    assert "movement.voided" in [e.event for e in audit_events(container, "movement.")]


def test_expired_holds_are_voided_lazily(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE)
    started = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "10.00", "payment_password": PIN, "card_id": card_id},
        holder,
    ).json()
    clock.advance(timedelta(minutes=6))
    wallet(client, holder)
    movement = client.get(f"/api/v1/movements/{started['movement_id']}", headers=holder.auth)
    assert movement.json()["status"] == "voided"
    assert movement.json()["status_reason"] == "expired"
    _ledger_ok(container)


def test_history_filters_pages_and_csv(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE, top_up="1000.00")
    for index in range(3):
        money_post(
            client,
            "/api/v1/payments",
            {"merchant": f"店{index}", "amount": "1.00", "payment_password": PIN},
            holder,
        )
    clock.advance(timedelta(days=1))
    money_post(
        client,
        "/api/v1/payments",
        {"merchant": "=HYPERLINK(1)", "amount": "2.00", "payment_password": PIN},
        holder,
    )

    def listed(query: str) -> dict[str, Any]:
        response = client.get(f"/api/v1/movements?{query}", headers=holder.auth)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    assert listed("")["pagination"]["total"] == 5
    assert listed("kind=top_up")["pagination"]["total"] == 1
    assert listed(f"card_id={card_id}")["pagination"]["total"] == 1
    assert listed("status=posted&kind=payment")["pagination"]["total"] == 4
    assert listed("from=2026-03-12&to=2026-03-12")["pagination"]["total"] == 4
    assert listed("from=2026-03-13")["pagination"]["total"] == 1
    page = listed("limit=2&page=2")
    assert len(page["items"]) == 2 and page["pagination"]["next_page"] == 3
    assert_problem(
        client.get("/api/v1/movements?kind=theft", headers=holder.auth), 422, "invalid-input"
    )
    csv_response = client.get("/api/v1/movements.csv?kind=payment", headers=holder.auth)
    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    lines = csv_response.text.lstrip("\ufeff").strip().splitlines()
    assert lines[0].startswith("id,created_at,posted_at,kind")
    assert len(lines) == 5
    assert "'=HYPERLINK(1)" in csv_response.text
    top_up_csv = client.get("/api/v1/movements.csv?kind=top_up", headers=holder.auth).text
    assert number[-4:] in top_up_csv and number not in top_up_csv


def test_an_unknown_card_is_not_found_and_writes_nothing(
    client: TestClient, container: Container
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="10.00")
    before = table_counts(container, *MONEY_TABLES)
    unknown = "00000000-0000-4000-8000-000000000000"
    for path, body in (
        ("/api/v1/top-ups", {"card_id": unknown, "amount": "1.00", "payment_password": PIN}),
        ("/api/v1/withdrawals", {"card_id": unknown, "amount": "1.00", "payment_password": PIN}),
        (
            "/api/v1/payments",
            {"merchant": "m", "amount": "1.00", "payment_password": PIN, "card_id": unknown},
        ),
        (
            "/api/v1/transfers",
            {"to_phone": FRIEND, "amount": "1.00", "payment_password": PIN, "card_id": unknown},
        ),
        (f"/api/v1/movements/{unknown}/confirm", {"dynamic_password": "123456"}),
        (f"/api/v1/movements/{unknown}/cancel", {}),
    ):
        assert_problem(money_post(client, path, body, holder), 404, "not-found")
    assert table_counts(container, *MONEY_TABLES) == before


def test_a_refused_posting_changes_no_row_even_in_a_transaction_that_goes_on(
    client: TestClient, container: Container
) -> None:
    """The ledger's own check, below the service's: posting more than the balance changes
    neither account, and no movement or posting is left, before any rollback (both the
    PostgreSQL one-statement posting and the statements SQLite runs)."""
    holder, _, _ = funded_holder(client, container, PHONE, top_up="10.00")
    holder_id = uuid.UUID(holder.holder_id)
    payer, shop = holder_code(holder_id), merchant_code("便利店")
    with unit_of_work(container.sessions) as db:
        ledger = Ledger(db, container.clock)
        ids = ledger.locked_accounts({payer: (HOLDER, holder_id), shop: (MERCHANT, None)})
        balances = select(LedgerAccount.id, LedgerAccount.balance_fen, LedgerAccount.pending_fen)
        before = set(db.execute(balances).all())
        movements = db.scalar(select(func.count()).select_from(LedgerTransaction))
        postings = db.scalar(select(func.count()).select_from(Posting))
        now = container.clock.now()
        txn = LedgerTransaction(
            id=uuid.uuid4(),
            kind="payment",
            status="pending",
            holder_id=holder_id,
            amount_fen=1_001,
            refunded_fen=0,
            source="balance",
            payee="便利店",
            risk_decision="allow",
            from_account_id=ids[payer],
            to_account_id=ids[shop],
            created_at=now,
        )
        with pytest.raises(InsufficientBalance):
            ledger.post_new(txn, locked=True)
        db.expire_all()
        assert set(db.execute(balances).all()) == before
        assert db.scalar(select(func.count()).select_from(LedgerTransaction)) == movements
        assert db.scalar(select(func.count()).select_from(Posting)) == postings
        # The same ledger posts what is there, in the same transaction.
        txn.id, txn.amount_fen = uuid.uuid4(), 1_000
        ledger.post_new(txn, locked=True)
    assert wallet(client, holder)["balance"] == "0.00"
    _ledger_ok(container)
