"""The kill switch and the limits (SPEC C4): closing and lowering are instant; reopening and
raising wait 24 hours while the ``limit_delay`` control is on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Holder, assert_problem, make_settings
from tests.wallet_support import (
    MONEY_TABLES,
    PIN,
    audit_events,
    funded_holder,
    latest_sms_code,
    money_post,
    principal_of,
    step_up_for,
    table_counts,
    wallet,
)
from walletguard.app import create_app
from walletguard.bank.gateway import CardBlockedAtBank
from walletguard.bank.service import bank_gateway
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.wallet.service import WalletService

PHONE = "+8613812345678"


def _pay(client: TestClient, holder: Holder, amount: str, **extra: str) -> Any:
    return money_post(
        client,
        "/api/v1/payments",
        {"merchant": "便利店", "amount": amount, "payment_password": PIN, **extra},
        holder,
    )


@pytest.fixture
def relaxed(tmp_path: Path, db_url: str, clock: ManualClock) -> Iterator[TestClient]:
    """A client on an instance with the limit_delay control switched off."""
    settings = make_settings(tmp_path, db_url, disabled_controls="limit_delay")
    container = build_container(settings, clock=clock)
    with TestClient(create_app(container)) as client:
        yield client
    container.close()


# -- the kill switch -------------------------------------------------------------------------


def test_closing_refuses_every_movement_at_once(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE, top_up="100.00")
    pending = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "10.00", "payment_password": PIN, "card_id": card_id},
        holder,
    ).json()
    code = latest_sms_code(container, PHONE)
    closed = client.post("/api/v1/wallet/close", headers=holder.auth)
    assert closed.status_code == 200, closed.text
    assert closed.json()["transactions_closed"] is True
    # The pending card debit was voided with it; its code approves nothing now.
    movement = client.get(f"/api/v1/movements/{pending['movement_id']}", headers=holder.auth)
    assert movement.json()["status_reason"] == "transactions_closed"
    before = table_counts(container, *MONEY_TABLES)
    for path, body in (
        ("/api/v1/payments", {"merchant": "m", "amount": "1.00", "payment_password": PIN}),
        ("/api/v1/top-ups", {"card_id": card_id, "amount": "1.00", "payment_password": PIN}),
        ("/api/v1/withdrawals", {"card_id": card_id, "amount": "1.00", "payment_password": PIN}),
        (
            "/api/v1/transfers",
            {"to_phone": "+8613912345678", "amount": "1.00", "payment_password": PIN},
        ),
        (f"/api/v1/movements/{pending['movement_id']}/confirm", {"dynamic_password": code}),
    ):
        assert_problem(money_post(client, path, body, holder), 423, "transactions-closed")
    # A closed wallet does not even test the payment password: nobody can guess it meanwhile.
    assert_problem(
        _pay(client, holder, "1.00", payment_password="000001"), 423, "transactions-closed"
    )
    assert table_counts(container, *MONEY_TABLES) == before
    assert not audit_events(container, "payment_password.failed")

    # Reopening is a sensitive action: without a fresh step-up it is refused.
    assert_problem(
        client.post("/api/v1/wallet/reopen", headers=holder.auth), 403, "step-up-required"
    )
    step_up_for(client, container, holder, "reopen_payments")
    reopening = client.post("/api/v1/wallet/reopen", headers=holder.auth)
    assert reopening.status_code == 202
    reopens_at = reopening.json()["reopens_at"]
    assert reopening.json()["transactions_closed"] is True
    clock.advance(timedelta(hours=23, minutes=59))
    assert_problem(_pay(client, holder, "1.00"), 423, "transactions-closed")
    # Asking again does not bring the date forward or push it back.
    assert client.post("/api/v1/wallet/reopen", headers=holder.auth).json()["reopens_at"] == (
        reopens_at
    )
    clock.advance(timedelta(minutes=2))
    assert wallet(client, holder)["transactions_closed"] is False
    assert _pay(client, holder, "1.00").status_code == 201
    events = [e.event for e in audit_events(container, "wallet.")]
    assert events == ["wallet.transactions_closed", "wallet.reopen_requested"]


def test_closing_again_cancels_a_reopening_and_is_idempotent(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    client.post("/api/v1/wallet/close", headers=holder.auth)
    client.post("/api/v1/wallet/close", headers=holder.auth)
    assert [e.event for e in audit_events(container, "wallet.")] == ["wallet.transactions_closed"]
    step_up_for(client, container, holder, "reopen_payments")
    assert client.post("/api/v1/wallet/reopen", headers=holder.auth).status_code == 202
    # The holder's other phone sees the reopening request and slams the door again.
    closed = client.post("/api/v1/wallet/close", headers=holder.auth).json()
    assert closed["reopens_at"] is None
    clock.advance(timedelta(hours=25))
    assert_problem(_pay(client, holder, "1.00"), 423, "transactions-closed")


def test_reopening_without_the_delay_control_is_immediate(relaxed: TestClient) -> None:
    container: Container = relaxed.app.state.container  # type: ignore[attr-defined]
    holder, _, _ = funded_holder(relaxed, container, PHONE, top_up="100.00")
    relaxed.post("/api/v1/wallet/close", headers=holder.auth)
    step_up_for(relaxed, container, holder, "reopen_payments")
    assert (
        relaxed.post("/api/v1/wallet/reopen", headers=holder.auth).json()["transactions_closed"]
        is False
    )
    assert _pay(relaxed, holder, "1.00").status_code == 201


def test_services_close_and_block_for_other_capabilities(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE, top_up="100.00")
    principal = principal_of(holder)
    with unit_of_work(container.sessions) as db:
        service = WalletService(db, container)
        service.close_all_transactions(
            principal.holder_id, reason="incident", device_id=None, ip=None
        )
        service.close_all_transactions(
            principal.holder_id, reason="incident", device_id=None, ip=None
        )
        assert service.block_all_cards(principal.holder_id, reason="incident") == 1
        assert service.block_all_cards(principal.holder_id, reason="incident") == 0
    card = client.get(f"/api/v1/cards/{card_id}", headers=holder.auth).json()
    assert card["status"] == "blocked"
    with unit_of_work(container.sessions) as db, pytest.raises(CardBlockedAtBank):
        bank_gateway(db, container).start_debit(number=number, amount_fen=1, payee="x")
    assert wallet(client, holder)["transactions_closed"] is True
    events = [e.event for e in audit_events(container, "card.blocked")]
    assert events == ["card.blocked"]


# -- limits ----------------------------------------------------------------------------------


def _limits(client: TestClient, holder: Holder) -> dict[str, Any]:
    response = client.get("/api/v1/limits", headers=holder.auth)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_default_limits(client: TestClient, container: Container) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE)
    limits = _limits(client, holder)
    assert limits["holder"]["per_transaction"]["amount"] == "50000.00"
    assert limits["holder"]["daily"]["amount"] == "100000.00"
    assert limits["cards"][0]["card_id"] == card_id


def test_lowering_is_instant_and_raising_waits(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="1000.00")
    lowered = client.put(
        "/api/v1/limits", json={"per_transaction": "100.00", "daily": "150.00"}, headers=holder.auth
    )
    assert lowered.status_code == 200, lowered.text
    assert lowered.json()["holder"]["per_transaction"]["amount"] == "100.00"
    problem = assert_problem(_pay(client, holder, "100.01"), 409, "limit-exceeded")
    assert problem["scope"] == "holder" and problem["period"] == "transaction"
    assert _pay(client, holder, "100.00").status_code == 201
    problem = assert_problem(_pay(client, holder, "50.01"), 409, "limit-exceeded")
    assert problem["period"] == "daily" and problem["remaining"] == "50.00"

    refused = client.put("/api/v1/limits", json={"per_transaction": "500.00"}, headers=holder.auth)
    assert_problem(refused, 403, "step-up-required")  # raising is a sensitive action
    step_up_for(client, container, holder, "raise_limit")
    raised = client.put("/api/v1/limits", json={"per_transaction": "500.00"}, headers=holder.auth)
    per_txn = raised.json()["holder"]["per_transaction"]
    assert per_txn["amount"] == "100.00"
    assert per_txn["pending_amount"] == "500.00"
    assert per_txn["pending_effective_at"].startswith("2026-03-13T09:00")
    clock.advance(timedelta(hours=23))
    assert_problem(_pay(client, holder, "200.00"), 409, "limit-exceeded")
    clock.advance(timedelta(hours=1))
    # A new day in China too: the daily 150 is fresh.
    assert _limits(client, holder)["holder"]["per_transaction"]["amount"] == "500.00"
    assert _pay(client, holder, "140.00").status_code == 201
    assert [e.event for e in audit_events(container, "limits.")].count("limits.changed") == 3


def test_a_lowering_cancels_a_waiting_raise(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE)
    client.put("/api/v1/limits", json={"daily": "100000.00"}, headers=holder.auth)
    step_up_for(client, container, holder, "raise_limit")
    raised = client.put("/api/v1/limits", json={"daily": "200000.00"}, headers=holder.auth)
    assert raised.json()["holder"]["daily"]["pending_amount"] == "200000.00"
    client.put("/api/v1/limits", json={"daily": "1000.00"}, headers=holder.auth)
    daily = _limits(client, holder)["holder"]["daily"]
    assert daily == {"amount": "1000.00", "pending_amount": None, "pending_effective_at": None}
    clock.advance(timedelta(hours=30))
    assert _limits(client, holder)["holder"]["daily"]["amount"] == "1000.00"


def test_raising_without_the_delay_control_is_immediate(relaxed: TestClient) -> None:
    container: Container = relaxed.app.state.container  # type: ignore[attr-defined]
    holder, _, _ = funded_holder(relaxed, container, PHONE)
    step_up_for(relaxed, container, holder, "raise_limit")
    raised = relaxed.put(
        "/api/v1/limits", json={"per_transaction": "80000.00"}, headers=holder.auth
    )
    assert raised.json()["holder"]["per_transaction"]["amount"] == "80000.00"


def test_card_limits_count_that_cards_debits(client: TestClient, container: Container) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE, top_up="100.00")
    response = client.put(
        "/api/v1/limits", json={"card_id": card_id, "daily": "150.00"}, headers=holder.auth
    )
    assert response.status_code == 200, response.text
    card_scope = response.json()["cards"][0]
    assert card_scope["daily"]["amount"] == "150.00"
    assert card_scope["used_today"] == "100.00"  # the top-up
    problem = assert_problem(_pay(client, holder, "50.01", card_id=card_id), 409, "limit-exceeded")
    assert problem["scope"] == "card"
    # Paying from the balance is not a debit of the card.
    assert _pay(client, holder, "60.00").status_code == 201
    assert _pay(client, holder, "50.00", card_id=card_id).status_code == 202
    other_holder_card = str(uuid.uuid4())
    missing = client.put(
        "/api/v1/limits", json={"card_id": other_holder_card, "daily": "1.00"}, headers=holder.auth
    )
    assert_problem(missing, 404, "not-found")


def test_bad_limit_input(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE)
    for body in ({}, {"daily": "-1"}, {"daily": "0"}, {"per_transaction": "1.001"}, {"daily": 5}):
        response = client.put("/api/v1/limits", json=body, headers=holder.auth)
        assert_problem(response, 422, "invalid-input")
