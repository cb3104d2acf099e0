"""The wallet's sensitive actions and a cooling-off device (SPEC C2, C3, C4): binding a card,
raising a limit and reopening transactions need a device past its cooling-off, the risk engine's
yes and a fresh step-up; a device cooling off moves at most 200.00 out of the wallet a day."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from fastapi.testclient import TestClient

from tests.conftest import Holder, assert_problem, login, step_up
from tests.mfa_support import Totp, enrol_totp
from tests.wallet_support import (
    PIN,
    audit_events,
    card_number,
    funded_holder,
    money_post,
    open_card,
    table_counts,
)
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock

PHONE = "+8613812345678"
FRIEND = "+8613912345678"


def _cooling_off_tablet(client: TestClient, holder: Holder, totp: Totp) -> Holder:
    """The holder's tablet, verified by the authenticator app: usable, but cooling off."""
    issued = login(client, holder.phone, holder.password, device_id="tablet").json()
    tablet = dataclasses.replace(
        holder,
        token=issued["session_token"],
        device_token=issued["device_token"],
        session_id=issued["session_id"],
        device_id=issued["device_id"],
    )
    verified = client.post(
        "/api/v1/step-up",
        json={"action": "add_device", "factor": "totp", "code": totp.code()},
        headers=tablet.auth,
    )
    assert verified.status_code == 201, verified.text
    assert verified.json()["device_trust"] == "cooling_off"
    return tablet


def _pay(client: TestClient, who: Holder, amount: str) -> object:
    body = {"merchant": "全家便利店", "amount": amount, "payment_password": PIN}
    return money_post(client, "/api/v1/payments", body, who)


def test_a_cooling_off_device_cannot_bind_raise_or_reopen(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _card, _ = funded_holder(client, container, PHONE, top_up="1000.00")
    totp = enrol_totp(client, container, holder)
    clock.advance(timedelta(seconds=31))  # a fresh TOTP window for the tablet's own code
    tablet = _cooling_off_tablet(client, holder, totp)
    number = card_number(serial=77)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=100)
    before = table_counts(container, "cards", "wallet_limits")
    refused = [
        client.post(
            "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=tablet.auth
        ),
        client.put("/api/v1/limits", json={"per_transaction": "60000.00"}, headers=tablet.auth),
    ]
    assert client.post("/api/v1/wallet/close", headers=tablet.auth).status_code == 200
    refused.append(client.post("/api/v1/wallet/reopen", headers=tablet.auth))
    for response in refused:
        problem = assert_problem(response, 403, "device-cooling-off")
        assert problem["action"] in ("bind_card", "raise_limit", "reopen_payments")
    assert table_counts(container, "cards", "wallet_limits") == before
    # Lowering a limit is never refused: it only protects.
    lowered = client.put("/api/v1/limits", json={"daily": "500.00"}, headers=tablet.auth)
    assert lowered.status_code == 200, lowered.text


def test_a_cooling_off_device_moves_at_most_the_daily_cap(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _card, _ = funded_holder(client, container, PHONE, top_up="5000.00")
    funded_holder(client, container, FRIEND, name="李娜", serial=2)
    totp = enrol_totp(client, container, holder)
    clock.advance(timedelta(seconds=31))
    tablet = _cooling_off_tablet(client, holder, totp)
    paid = _pay(client, tablet, "150.00")
    assert paid.status_code == 201, paid.text  # type: ignore[attr-defined]
    before = table_counts(container, "ledger_transactions", "ledger_postings")
    over = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": FRIEND, "amount": "50.01", "payment_password": PIN},
        tablet,
    )
    problem = assert_problem(over, 403, "cooling-off-cap")
    assert (problem["cap_fen"], problem["spent_today_fen"]) == (20_000, 15_000)
    assert "50.00" in problem["detail"]
    assert table_counts(container, "ledger_transactions", "ledger_postings") == before
    exactly = _pay(client, tablet, "50.00")
    assert exactly.status_code == 201, exactly.text  # type: ignore[attr-defined]
    # The holder's trusted phone is not capped.
    phone_paid = _pay(client, holder, "3000.00")
    assert phone_paid.status_code == 201, phone_paid.text  # type: ignore[attr-defined]
    # The phone vouches for the tablet: its cooling-off, and the cap, end.
    clock.advance(timedelta(seconds=31))  # the tablet spent this window's code
    step_up(client, container, holder.auth, holder.phone, "add_device", "totp", code=totp.code())
    approved = client.post(f"/api/v1/devices/{tablet.device_id}/approve", headers=holder.auth)
    assert approved.status_code == 200, approved.text
    after = _pay(client, tablet, "500.00")
    assert after.status_code == 201, after.text  # type: ignore[attr-defined]


def test_binding_a_card_asks_the_risk_engine(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    """Right after a SIM swap, an SMS code proves little: binding a card is challenged and
    only a strong factor clears it (rule ``sim-swap-sms-untrusted``)."""
    holder, _card, _ = funded_holder(client, container, PHONE)
    totp = enrol_totp(client, container, holder)
    assert client.post(f"/api/v1/sandbox/phones/{PHONE}/sim-swap").status_code == 204
    number = card_number(serial=78)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=100)

    def bind() -> object:
        return client.post(
            "/api/v1/cards", json={"number": number, "reserved_phone": PHONE}, headers=holder.auth
        )

    problem = assert_problem(bind(), 403, "risk-challenge")  # type: ignore[arg-type]
    assert "sim-swap-sms-untrusted" in problem["rules"]
    assert problem["action"] == "risky_payment" and "totp" in problem["factors"]
    clock.advance(timedelta(seconds=31))
    step_up(client, container, holder.auth, PHONE, "risky_payment", "totp", code=totp.code())
    # The challenge is cleared; the binding still needs its own step-up.
    assert_problem(bind(), 403, "step-up-required")  # type: ignore[arg-type]
    clock.advance(timedelta(seconds=31))
    step_up(client, container, holder.auth, PHONE, "risky_payment", "totp", code=totp.code())
    clock.advance(timedelta(seconds=31))
    step_up(client, container, holder.auth, PHONE, "bind_card", "totp", code=totp.code())
    started = bind()
    assert started.status_code == 202, started.text  # type: ignore[attr-defined]
    assert audit_events(container, "risk.challenge_passed")
