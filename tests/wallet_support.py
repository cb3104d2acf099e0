"""Test helpers for the wallet and the sandbox bank: cards, payment passwords, movements."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from stdnum import luhn

from tests.conftest import Holder, register, step_up
from walletguard.audit.models import AuditEntry
from walletguard.bank.service import sandbox_bank
from walletguard.bootstrap import Container
from walletguard.identity.service import Principal
from walletguard.kit.db import unit_of_work
from walletguard.messages.service import PhoneInbox

PIN = "480915"
_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


def card_number(prefix: str = "622202", length: int = 19, serial: int = 1) -> str:
    """A Luhn-valid card number with this BIN prefix."""
    body = prefix + str(serial).rjust(length - len(prefix) - 1, "0")
    return body + luhn.calc_check_digit(body)


def set_pin(client: TestClient, holder: Holder, pin: str = PIN) -> None:
    response = client.put(
        "/api/v1/me/payment-password",
        json={"login_password": holder.password, "payment_password": pin},
        headers=holder.auth,
    )
    assert response.status_code == 204, response.text


def wallet_holder(
    client: TestClient, container: Container, phone: str, *, name: str = "张伟"
) -> Holder:
    holder = register(client, container, phone, name=name)
    set_pin(client, holder)
    return holder


def open_card(
    container: Container,
    *,
    number: str,
    name: str,
    phone: str,
    balance_fen: int,
    bank_code: str | None = None,
) -> None:
    with unit_of_work(container.sessions) as db:
        sandbox_bank(db, container).open_card_account(
            number=number,
            holder_name=name,
            reserved_phone_e164=phone,
            balance_fen=balance_fen,
            bank_code=bank_code,
        )


def bank_balance(container: Container, number: str) -> int | None:
    with unit_of_work(container.sessions) as db:
        return sandbox_bank(db, container).balance_of(number)


def latest_sms(container: Container, phone: str) -> Any:
    with container.sessions() as db:
        return PhoneInbox(db, container.cipher, container.clock).messages(phone, limit=1)[0]


def code_in(body: str) -> str:
    match = _CODE.search(body)
    assert match, body
    return match.group(1)


def latest_sms_code(container: Container, phone: str) -> str:
    return code_in(latest_sms(container, phone).body)


def step_up_for(client: TestClient, container: Container, holder: Holder, action: str) -> None:
    """A fresh step-up of the holder's session for one sensitive action (an SMS code: these
    holders have no stronger factor enrolled)."""
    step_up(client, container, holder.auth, holder.phone, action)


def bind_card(
    client: TestClient,
    container: Container,
    holder: Holder,
    number: str,
    *,
    phone: str | None = None,
) -> str:
    phone = phone or holder.phone
    step_up_for(client, container, holder, "bind_card")
    started = client.post(
        "/api/v1/cards", json={"number": number, "reserved_phone": phone}, headers=holder.auth
    )
    assert started.status_code == 202, started.text
    card_id: str = started.json()["card_id"]
    verified = client.post(
        f"/api/v1/cards/{card_id}/verify",
        json={"code": latest_sms_code(container, phone)},
        headers=holder.auth,
    )
    assert verified.status_code == 200, verified.text
    return card_id


def funded_holder(
    client: TestClient,
    container: Container,
    phone: str,
    *,
    name: str = "张伟",
    card_balance_fen: int = 10_000_000,
    top_up: str | None = None,
    serial: int = 1,
) -> tuple[Holder, str, str]:
    """A holder with a payment password and a bound ICBC card; optionally a topped-up balance.
    Returns the holder, the card id and the card number."""
    holder = wallet_holder(client, container, phone, name=name)
    number = card_number(serial=serial)
    open_card(container, number=number, name=name, phone=phone, balance_fen=card_balance_fen)
    card_id = bind_card(client, container, holder, number)
    if top_up is not None:
        top_up_now(client, container, holder, card_id, top_up)
    return holder, card_id, number


def money_post(
    client: TestClient,
    path: str,
    body: dict[str, Any],
    holder: Holder,
    *,
    key: str | None = None,
) -> Any:
    headers = dict(holder.auth)
    headers["Idempotency-Key"] = key or str(uuid.uuid4())
    return client.post(path, json=body, headers=headers)


def confirm(
    client: TestClient, holder: Holder, movement_id: str, code: str, *, key: str | None = None
) -> Any:
    return money_post(
        client,
        f"/api/v1/movements/{movement_id}/confirm",
        {"dynamic_password": code},
        holder,
        key=key,
    )


def top_up_now(
    client: TestClient, container: Container, holder: Holder, card_id: str, amount: str
) -> dict[str, Any]:
    started = money_post(
        client,
        "/api/v1/top-ups",
        {"card_id": card_id, "amount": amount, "payment_password": PIN},
        holder,
    )
    assert started.status_code == 202, started.text
    done = confirm(
        client, holder, started.json()["movement_id"], latest_sms_code(container, holder.phone)
    )
    assert done.status_code == 200, done.text
    result: dict[str, Any] = done.json()
    return result


def wallet(client: TestClient, holder: Holder) -> dict[str, Any]:
    response = client.get("/api/v1/wallet", headers=holder.auth)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def principal_of(holder: Holder, ip: str = "198.51.100.7") -> Principal:
    return Principal(
        holder_id=uuid.UUID(holder.holder_id),
        session_id=uuid.UUID(holder.session_id),
        device_id=uuid.UUID(holder.device_id),
        device_trust="trusted",
        ip=ip,
    )


def audit_events(container: Container, prefix: str = "") -> list[AuditEntry]:
    with container.sessions() as db:
        rows = db.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
    return [row for row in rows if row.event.startswith(prefix)]


def table_counts(container: Container, *tables: str) -> dict[str, int]:
    from sqlalchemy import text

    with container.engine.connect() as conn:
        return {
            t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()) for t in tables
        }


MONEY_TABLES = (
    "ledger_transactions",
    "ledger_postings",
    "idempotency_keys",
    "cards",
    "bank_challenges",
)
