"""Binding and unbinding bank cards (SPEC C4): Luhn, BIN, the bank's check, last 4 only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import assert_problem
from tests.wallet_support import (
    MONEY_TABLES,
    PIN,
    audit_events,
    bind_card,
    card_number,
    funded_holder,
    latest_sms_code,
    money_post,
    open_card,
    step_up_for,
    table_counts,
    wallet_holder,
)
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.i18n import text
from walletguard.models import Base

PHONE = "+8613812345678"
OTHER_PHONE = "+8613912345678"


def test_binding_a_card_end_to_end(client: TestClient, container: Container) -> None:
    holder = wallet_holder(client, container, PHONE)
    number = card_number(serial=42)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=100)
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    step_up_for(client, container, holder, "bind_card")
    started = client.post(
        "/api/v1/cards",
        json={"number": spaced, "reserved_phone": "138 1234 5678"},
        headers=holder.auth,
    )
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] == "pending_verification"
    assert body["last4"] == number[-4:]
    assert body["bank_code"] == "ICBC"
    assert number not in started.text
    listed = client.get("/api/v1/cards", headers=holder.auth).json()
    assert [c["status"] for c in listed] == ["pending"]
    verified = client.post(
        f"/api/v1/cards/{body['card_id']}/verify",
        json={"code": latest_sms_code(container, PHONE)},
        headers=holder.auth,
    )
    assert verified.status_code == 200, verified.text
    card = verified.json()
    assert card["status"] == "bound"
    assert card["masked_number"] == f"**** **** **** {number[-4:]}"
    assert card["bank_name"] == "中国工商银行"
    english = client.get(
        f"/api/v1/cards/{body['card_id']}", headers={**holder.auth, "accept-language": "en"}
    ).json()
    assert english["bank_name"] == "Industrial and Commercial Bank of China"
    assert [e.event for e in audit_events(container, "card.")] == [
        "card.binding_started",
        "card.bound",
    ]
    for entry in audit_events(container, "card."):
        assert number not in entry.data
    again = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=holder.auth
    )
    assert_problem(again, 409, "card-already-bound")


def _mistyped() -> str:
    good = card_number(serial=5)
    return good[:-1] + str((int(good[-1]) + 3) % 10)


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (_mistyped(), "card.luhn"),
        ("12345", "card.format"),
        ("6222-02xx-1234", "card.format"),
        ("4111111111111111", "card.unknown_issuer"),  # Visa: not in the BIN table
    ],
)
def test_bad_numbers_are_problems_and_write_nothing(
    client: TestClient, container: Container, number: str, reason: str
) -> None:
    holder = wallet_holder(client, container, PHONE)
    before = table_counts(container, *MONEY_TABLES)
    response = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=holder.auth
    )
    problem = assert_problem(response, 422, "invalid-input")
    assert problem["field"] == "number"
    assert problem["detail"] == text(reason)
    assert number not in response.text
    assert table_counts(container, *MONEY_TABLES) == before


def test_a_card_the_bank_does_not_confirm_is_not_bound(
    client: TestClient, container: Container
) -> None:
    holder = wallet_holder(client, container, PHONE)
    number = card_number(serial=43)
    # The bank issued it to somebody else, with another reserved phone.
    open_card(container, number=number, name="李娜", phone=OTHER_PHONE, balance_fen=100)
    before = table_counts(container, *MONEY_TABLES)
    for reserved in (PHONE, OTHER_PHONE):
        step_up_for(client, container, holder, "bind_card")
        response = client.post(
            "/api/v1/cards",
            json={"number": number, "reserved_phone": reserved},
            headers=holder.auth,
        )
        assert_problem(response, 422, "bank-verification-failed")
    assert table_counts(container, *MONEY_TABLES) == before
    step_up_for(client, container, holder, "bind_card")
    unknown = client.post(
        "/api/v1/cards",
        json={"number": card_number(serial=44), "reserved_phone": PHONE},
        headers=holder.auth,
    )
    assert_problem(unknown, 422, "bank-verification-failed")


def test_failed_bindings_are_limited(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = wallet_holder(client, container, PHONE)
    for serial in range(5):
        # A failed binding spends its step-up; SMS step-ups are limited to 5 an hour.
        clock.advance(timedelta(minutes=16))
        step_up_for(client, container, holder, "bind_card")
        response = client.post(
            "/api/v1/cards",
            json={"number": card_number(serial=100 + serial), "reserved_phone": PHONE},
            headers=holder.auth,
        )
        assert_problem(response, 422, "bank-verification-failed")
    number = card_number(serial=200)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=0)
    clock.advance(timedelta(minutes=16))
    step_up_for(client, container, holder, "bind_card")
    response = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=holder.auth
    )
    assert_problem(response, 429, "too-many-attempts")


def test_successful_bindings_do_not_use_up_the_allowance(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = wallet_holder(client, container, PHONE)
    for serial in range(7):
        clock.advance(timedelta(minutes=16))  # each binding's SMS step-up: 5 an hour
        number = card_number(serial=300 + serial)
        open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=0)
        bind_card(client, container, holder, number)
    assert len(client.get("/api/v1/cards", headers=holder.auth).json()) == 7


def test_another_holders_card_is_not_found_and_cannot_be_bound_twice(
    client: TestClient, container: Container
) -> None:
    owner, card_id, number = funded_holder(client, container, PHONE)
    other = wallet_holder(client, container, OTHER_PHONE, name="张伟")
    for method, path in (
        ("GET", f"/api/v1/cards/{card_id}"),
        ("DELETE", f"/api/v1/cards/{card_id}"),
        ("POST", f"/api/v1/cards/{card_id}/verify"),
    ):
        response = client.request(method, path, json={"code": "123456"}, headers=other.auth)
        assert_problem(response, 404, "not-found")
    for path, body in (
        ("/api/v1/top-ups", {"card_id": card_id, "amount": "1.00", "payment_password": PIN}),
        ("/api/v1/withdrawals", {"card_id": card_id, "amount": "1.00", "payment_password": PIN}),
        (
            "/api/v1/payments",
            {"merchant": "m", "amount": "1.00", "payment_password": PIN, "card_id": card_id},
        ),
    ):
        assert_problem(money_post(client, path, body, other), 404, "not-found")
    # Same name, same reserved phone even: a card bound to one wallet is refused to another,
    # without saying so.
    step_up_for(client, container, other, "bind_card")
    response = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=other.auth
    )
    assert_problem(response, 422, "bank-verification-failed")
    assert client.get(f"/api/v1/cards/{card_id}", headers=owner.auth).status_code == 200


def test_unbinding_is_instant_and_voids_pending_debits(
    client: TestClient, container: Container
) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE)
    pending = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "5.00", "payment_password": PIN, "card_id": card_id},
        holder,
    ).json()
    code = latest_sms_code(container, PHONE)
    assert client.delete(f"/api/v1/cards/{card_id}", headers=holder.auth).status_code == 204
    assert client.get("/api/v1/cards", headers=holder.auth).json() == []
    assert_problem(client.get(f"/api/v1/cards/{card_id}", headers=holder.auth), 404, "not-found")
    movement = client.get(f"/api/v1/movements/{pending['movement_id']}", headers=holder.auth)
    assert movement.json()["status"] == "voided"
    assert movement.json()["status_reason"] == "card_unbound"
    late = money_post(
        client,
        f"/api/v1/movements/{pending['movement_id']}/confirm",
        {"dynamic_password": code},
        holder,
    )
    assert_problem(late, 409, "movement-not-pending")
    top_up = money_post(
        client,
        "/api/v1/top-ups",
        {"card_id": card_id, "amount": "1.00", "payment_password": PIN},
        holder,
    )
    assert_problem(top_up, 404, "not-found")
    assert "card.unbound" in [e.event for e in audit_events(container, "card.")]


def test_the_database_holds_no_plaintext_card_number(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE, top_up="100.00")
    money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "5.00", "payment_password": PIN, "card_id": card_id},
        holder,
    )
    assert client.get(f"/api/v1/cards/{card_id}", headers=holder.auth).status_code == 200
    needles = [number, number[:6] + number[-4:], " ".join([number[:4], number[4:8]])]
    with container.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                dump = " ".join(str(value) for value in row)
                for needle in needles:
                    assert needle not in dump, f"card number in plain text in {table.name}"


def test_a_pending_binding_can_be_restarted(client: TestClient, container: Container) -> None:
    holder = wallet_holder(client, container, PHONE)
    number = card_number(serial=45)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=0)
    step_up_for(client, container, holder, "bind_card")
    first = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=holder.auth
    ).json()
    old_code = latest_sms_code(container, PHONE)
    step_up_for(client, container, holder, "bind_card")
    second = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=holder.auth
    ).json()
    assert first["card_id"] == second["card_id"]
    new_code = latest_sms_code(container, PHONE)
    if old_code != new_code:
        stale = client.post(
            f"/api/v1/cards/{first['card_id']}/verify", json={"code": old_code}, headers=holder.auth
        )
        assert stale.status_code in (403, 409)
    done = client.post(
        f"/api/v1/cards/{first['card_id']}/verify", json={"code": new_code}, headers=holder.auth
    )
    assert done.status_code == 200, done.text
