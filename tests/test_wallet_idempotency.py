"""Idempotency end to end: a retry returns the first response and moves nothing twice."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.conftest import assert_problem
from tests.wallet_support import (
    MONEY_TABLES,
    PIN,
    bank_balance,
    confirm,
    funded_holder,
    latest_sms_code,
    money_post,
    table_counts,
    wallet,
)
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work
from walletguard.wallet.models import IdempotencyRecord

PHONE = "+8613812345678"
FRIEND = "+8613912345678"


def test_a_retry_returns_the_first_response_and_moves_nothing(
    client: TestClient, container: Container
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    key = str(uuid.uuid4())
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    first = money_post(client, "/api/v1/payments", body, holder, key=key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # Written differently, the same request: same amount, same merchant.
    retry = money_post(
        client, "/api/v1/payments", {**body, "amount": "10", "merchant": " 便利店"}, holder, key=key
    )
    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert wallet(client, holder)["balance"] == "90.00"
    assert (
        client.get("/api/v1/movements?kind=payment", headers=holder.auth).json()["pagination"][
            "total"
        ]
        == 1
    )


def test_the_same_key_for_another_request_is_a_conflict(
    client: TestClient, container: Container
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE, top_up="100.00")
    key = "order-2026-0001"
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    assert money_post(client, "/api/v1/payments", body, holder, key=key).status_code == 201
    before = table_counts(container, *MONEY_TABLES)
    other_amount = money_post(
        client, "/api/v1/payments", {**body, "amount": "11.00"}, holder, key=key
    )
    assert_problem(other_amount, 409, "idempotency-key-reused")
    other_kind = money_post(
        client,
        "/api/v1/withdrawals",
        {"card_id": card_id, "amount": "10.00", "payment_password": PIN},
        holder,
        key=key,
    )
    assert_problem(other_kind, 409, "idempotency-key-reused")
    assert table_counts(container, *MONEY_TABLES) == before
    assert wallet(client, holder)["balance"] == "90.00"


def test_keys_belong_to_one_holder(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    friend, _, _ = funded_holder(client, container, FRIEND, name="李娜", top_up="100.00", serial=2)
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    assert money_post(client, "/api/v1/payments", body, holder, key="k-1").status_code == 201
    assert money_post(client, "/api/v1/payments", body, friend, key="k-1").status_code == 201
    assert wallet(client, friend)["balance"] == "90.00"


def test_a_missing_or_malformed_key_is_a_problem(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    before = table_counts(container, *MONEY_TABLES)
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    missing = client.post("/api/v1/payments", json=body, headers=holder.auth)
    assert_problem(missing, 422, "idempotency-key-required")
    for bad in ("x" * 129, "two words"):
        headers = {**holder.auth, "Idempotency-Key": bad}
        response = client.post("/api/v1/payments", json=body, headers=headers)
        assert response.status_code == 422
    assert table_counts(container, *MONEY_TABLES) == before


def test_card_flow_retries(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    start_key = str(uuid.uuid4())
    body = {"card_id": card_id, "amount": "20.00", "payment_password": PIN}
    started = money_post(client, "/api/v1/top-ups", body, holder, key=start_key)
    assert started.status_code == 202
    code = latest_sms_code(container, PHONE)
    again = money_post(client, "/api/v1/top-ups", body, holder, key=start_key)
    assert again.status_code == 202
    assert again.json() == started.json()
    # No second dynamic password was sent for the retry.
    assert latest_sms_code(container, PHONE) == code
    movement_id = started.json()["movement_id"]
    confirm_key = str(uuid.uuid4())
    wrong = "000000" if code != "000000" else "111111"
    assert_problem(
        confirm(client, holder, movement_id, wrong, key=confirm_key), 403, "dynamic-password-wrong"
    )
    # The refused try did not use up the key: the same key now carries the right code.
    done = confirm(client, holder, movement_id, code, key=confirm_key)
    assert done.status_code == 200, done.text
    replay = confirm(client, holder, movement_id, code, key=confirm_key)
    assert replay.status_code == 200 and replay.json() == done.json()
    assert wallet(client, holder)["balance"] == "20.00"
    assert bank_balance(container, number) == 10_000_000 - 2_000
    # A new key for the same confirmation finds nothing to confirm.
    assert_problem(confirm(client, holder, movement_id, code), 409, "movement-not-pending")


def test_refusals_are_not_stored(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="5.00")
    key = str(uuid.uuid4())
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    assert_problem(
        money_post(client, "/api/v1/payments", body, holder, key=key), 409, "insufficient-balance"
    )
    with container.sessions() as db:
        assert db.query(IdempotencyRecord).filter_by(key=key).count() == 0
    # The refusal moved nothing, so the same key may try again once there is money.
    holder_card = client.get("/api/v1/cards", headers=holder.auth).json()[0]["id"]
    started = money_post(
        client,
        "/api/v1/top-ups",
        {"card_id": holder_card, "amount": "10.00", "payment_password": PIN},
        holder,
    )
    confirm(client, holder, started.json()["movement_id"], latest_sms_code(container, PHONE))
    assert money_post(client, "/api/v1/payments", body, holder, key=key).status_code == 201


def test_no_pin_in_the_stored_request_hash(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    key = str(uuid.uuid4())
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    assert money_post(client, "/api/v1/payments", body, holder, key=key).status_code == 201
    with unit_of_work(container.sessions) as db:
        record = db.query(IdempotencyRecord).filter_by(key=key).one()
        assert PIN not in (record.response_body or "")
        assert len(record.request_hash) == 64


def test_a_refused_session_claims_no_key(client: TestClient, container: Container) -> None:
    """On PostgreSQL a money request claims its key in the statement that reads its session
    (wallet.repository.authenticate_and_claim): a session refused there must leave the key
    unclaimed, and a refusal of the session still comes before a refusal of the key."""
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    body = {"merchant": "便利店", "amount": "10.00", "payment_password": PIN}
    key = str(uuid.uuid4())
    before = table_counts(container, *MONEY_TABLES)
    stranger = {"authorization": "Bearer not-a-session", "Idempotency-Key": key}
    assert_problem(
        client.post("/api/v1/payments", json=body, headers=stranger), 401, "not-authenticated"
    )
    malformed = {"authorization": "Bearer not-a-session", "Idempotency-Key": "two words"}
    assert_problem(
        client.post("/api/v1/payments", json=body, headers=malformed), 401, "not-authenticated"
    )
    assert client.delete("/api/v1/sessions/current", headers=holder.auth).status_code == 204
    assert_problem(
        money_post(client, "/api/v1/payments", body, holder, key=key), 401, "not-authenticated"
    )
    assert table_counts(container, *MONEY_TABLES) == before
    with container.sessions() as db:
        assert db.query(IdempotencyRecord).filter_by(key=key).count() == 0
