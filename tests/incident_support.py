"""Test helpers for the incident desk: the 88,130-yuan drain played through the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Holder, login, register, step_up
from tests.wallet_support import (
    PIN,
    bind_card,
    card_number,
    confirm,
    latest_sms_code,
    money_post,
    open_card,
    set_pin,
)
from walletguard.bootstrap import Container

VICTIM_PHONE = "+8613912340001"
VICTIM_NAME = "陈静"
# A valid resident ID number (GB 11643 checksum) born 1985-03-12, the conftest birthday.
ID_NUMBER = "110105198503121232"
ATTACKER_PIN = "580326"
# ICBC 50,000.00, CCB 30,000.00, CMB 8,130.00: the three cards of the source case.
CARDS = (("622202", 5_000_000, 19), ("621700", 3_000_000, 19), ("622588", 813_000, 16))


def _valid_id() -> str:
    body = ID_NUMBER[:17]
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    return body + check


VALID_ID = _valid_id()


@dataclass
class Drained:
    victim: Holder
    card_ids: list[str]
    numbers: list[str]
    attacker: dict[str, Any]
    movements: list[str]


def victim_with_cards(
    client: TestClient, container: Container, phone: str = VICTIM_PHONE
) -> tuple[Holder, list[str], list[str]]:
    victim = register(client, container, phone, name=VICTIM_NAME, id_number=VALID_ID)
    set_pin(client, victim)
    card_ids, numbers = [], []
    for prefix, balance, length in CARDS:
        number = card_number(prefix=prefix, length=length, serial=int(phone[-4:]))
        open_card(container, number=number, name=VICTIM_NAME, phone=phone, balance_fen=balance)
        card_ids.append(bind_card(client, container, victim, number))
        numbers.append(number)
    return victim, card_ids, numbers


def attacker_session(client: TestClient, victim: Holder) -> dict[str, Any]:
    """The vulnerable profile: the leaked password alone makes the thief's phone trusted."""
    response = login(client, victim.phone, victim.password, device_id="attacker-redmi")
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    issued["auth"] = {"authorization": f"Bearer {issued['session_token']}"}
    return issued


def as_holder(victim: Holder, issued: dict[str, Any]) -> Holder:
    return Holder(
        phone=victim.phone,
        password=victim.password,
        token=issued["session_token"],
        device_token=issued["device_token"],
        holder_id=victim.holder_id,
        session_id=issued["session_id"],
        device_id=issued["device_id"],
    )


def drain(client: TestClient, container: Container) -> Drained:
    """The source case in the vulnerable profile: takeover, sync on, payment password reset
    with a synced code, three cards paid out to a gold shop with synced dynamic passwords."""
    victim, card_ids, numbers = victim_with_cards(client, container)
    issued = attacker_session(client, victim)
    attacker = as_holder(victim, issued)
    assert client.post("/api/v1/messages/sync", headers=attacker.auth).status_code == 200
    step_up(client, container, attacker.auth, victim.phone, "reset_payment_password")
    reset = client.post(
        "/api/v1/me/payment-password/reset",
        json={"payment_password": ATTACKER_PIN},
        headers=attacker.auth,
    )
    assert reset.status_code == 204, reset.text
    movements = []
    for card_id, (_, balance, _) in zip(card_ids, CARDS, strict=True):
        amount = f"{balance // 100}.00"
        started = money_post(
            client,
            "/api/v1/payments",
            {
                "merchant": "金店",
                "amount": amount,
                "payment_password": ATTACKER_PIN,
                "card_id": card_id,
            },
            attacker,
        )
        assert started.status_code == 202, started.text
        # The dynamic password, read where the attacker reads it: the synced inbox.
        synced = client.get("/api/v1/messages", headers=attacker.auth)
        assert synced.status_code == 200, synced.text
        assert latest_sms_code(container, victim.phone) in synced.json()[0]["body"]
        movement_id = started.json()["movement_id"]
        done = confirm(client, attacker, movement_id, latest_sms_code(container, victim.phone))
        assert done.status_code == 200, done.text
        movements.append(movement_id)
    return Drained(victim, card_ids, numbers, issued, movements)


def report(client: TestClient, holder: Holder, **body: Any) -> Any:
    return client.post("/api/v1/incidents", json=body or None, headers=holder.auth)


__all__ = ["PIN", "Drained", "attacker_session", "drain", "report", "victim_with_cards"]
