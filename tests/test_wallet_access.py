"""Every wallet endpoint through a table of callers: anonymous, another holder, a device that has
not been verified yet, and the owner. Another holder's card or movement is a 404, never a 403."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Holder, assert_problem, login
from tests.wallet_support import PIN, funded_holder, latest_sms_code, money_post, wallet_holder
from walletguard.bootstrap import Container

PHONE = "+8613812345678"
OTHER = "+8613912345678"


@dataclass
class World:
    owner: Holder
    other: Holder
    new_device_auth: dict[str, str]
    card_id: str
    posted_id: str
    pending_id: str
    code: str


@pytest.fixture
def world(client: TestClient, container: Container) -> World:
    owner, card_id, _ = funded_holder(client, container, PHONE, top_up="100.00")
    other = wallet_holder(client, container, OTHER, name="李娜")
    posted = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "便利店", "amount": "1.00", "payment_password": PIN},
        owner,
    ).json()
    pending = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "1.00", "payment_password": PIN, "card_id": card_id},
        owner,
    ).json()
    code = latest_sms_code(container, PHONE)
    fresh = login(client, owner.phone, owner.password, device_id="thief-phone")
    assert fresh.status_code == 201, fresh.text
    return World(
        owner=owner,
        other=other,
        new_device_auth={"authorization": f"Bearer {fresh.json()['session_token']}"},
        card_id=card_id,
        posted_id=posted["id"],
        pending_id=pending["movement_id"],
        code=code,
    )


@dataclass(frozen=True)
class Call:
    method: str
    path: Callable[[World], str]
    body: Callable[[World], dict[str, Any] | None]
    owner_status: int
    # What another holder gets: 404 for the owner's resources; for collection endpoints, their
    # own (empty or refused for their own reasons) view, given as a status.
    other_status: int
    money: bool = False


CALLS = {
    "get wallet": Call("GET", lambda w: "/api/v1/wallet", lambda w: None, 200, 200),
    "list cards": Call("GET", lambda w: "/api/v1/cards", lambda w: None, 200, 200),
    "get card": Call("GET", lambda w: f"/api/v1/cards/{w.card_id}", lambda w: None, 200, 404),
    "verify card": Call(
        "POST",
        lambda w: f"/api/v1/cards/{w.card_id}/verify",
        lambda w: {"code": "123456"},
        409,  # already bound
        404,
    ),
    "bind card": Call(
        "POST",
        lambda w: "/api/v1/cards",
        lambda w: {"number": "6222020000000000001", "reserved_phone": PHONE},
        422,  # Luhn: the owner gets past authentication to the input check
        422,
    ),
    "get limits": Call("GET", lambda w: "/api/v1/limits", lambda w: None, 200, 200),
    "card limit": Call(
        "PUT",
        lambda w: "/api/v1/limits",
        lambda w: {"card_id": w.card_id, "daily": "10.00"},
        200,
        404,
    ),
    "movements": Call("GET", lambda w: "/api/v1/movements", lambda w: None, 200, 200),
    "csv": Call("GET", lambda w: "/api/v1/movements.csv", lambda w: None, 200, 200),
    "movement": Call("GET", lambda w: f"/api/v1/movements/{w.posted_id}", lambda w: None, 200, 404),
    "confirm": Call(
        "POST",
        lambda w: f"/api/v1/movements/{w.pending_id}/confirm",
        lambda w: {"dynamic_password": w.code},
        200,
        404,
        money=True,
    ),
    "cancel": Call(
        "POST", lambda w: f"/api/v1/movements/{w.pending_id}/cancel", lambda w: {}, 200, 404, True
    ),
    "top-up": Call(
        "POST",
        lambda w: "/api/v1/top-ups",
        lambda w: {"card_id": w.card_id, "amount": "1.00", "payment_password": PIN},
        202,
        404,
        money=True,
    ),
    "withdrawal": Call(
        "POST",
        lambda w: "/api/v1/withdrawals",
        lambda w: {"card_id": w.card_id, "amount": "1.00", "payment_password": PIN},
        201,
        404,
        money=True,
    ),
    "card payment": Call(
        "POST",
        lambda w: "/api/v1/payments",
        lambda w: {
            "merchant": "m",
            "amount": "1.00",
            "payment_password": PIN,
            "card_id": w.card_id,
        },
        202,
        404,
        money=True,
    ),
    "transfer": Call(
        "POST",
        lambda w: "/api/v1/transfers",
        lambda w: {"to_phone": OTHER, "amount": "1.00", "payment_password": PIN},
        201,
        422,  # to themselves
        money=True,
    ),
    "unbind": Call("DELETE", lambda w: f"/api/v1/cards/{w.card_id}", lambda w: None, 204, 404),
    "close": Call("POST", lambda w: "/api/v1/wallet/close", lambda w: None, 200, 200),
    "reopen": Call("POST", lambda w: "/api/v1/wallet/reopen", lambda w: None, 202, 202),
}


def _call(client: TestClient, call: Call, world: World, auth: dict[str, str]) -> Any:
    headers = dict(auth)
    if call.money:
        headers["Idempotency-Key"] = f"key-{id(headers)}"
    return client.request(call.method, call.path(world), json=call.body(world), headers=headers)


@pytest.mark.parametrize("name", list(CALLS))
def test_callers(client: TestClient, world: World, name: str) -> None:
    call = CALLS[name]
    assert_problem(_call(client, call, world, {}), 401, "not-authenticated")
    # A token that is no session: refused by the money endpoints too, which check it on the
    # thread that runs their unit of work rather than in a dependency of its own.
    not_a_session = {"authorization": "Bearer not-a-session"}
    assert_problem(_call(client, call, world, not_a_session), 401, "not-authenticated")
    assert_problem(_call(client, call, world, world.new_device_auth), 403, "device-not-verified")
    other = _call(client, call, world, world.other.auth)
    assert other.status_code == call.other_status, other.text
    if call.other_status == 404:
        assert_problem(other, 404, "not-found")
    else:
        # Whatever another holder sees is their own: never the owner's card, money or history.
        assert world.card_id not in other.text
        assert world.posted_id not in other.text
        assert "100.00" not in other.text and "98.00" not in other.text
    owner = _call(client, call, world, world.owner.auth)
    assert owner.status_code == call.owner_status, owner.text
