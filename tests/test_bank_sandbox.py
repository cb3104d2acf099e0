"""The sandbox bank: quick-pay dynamic passwords bound to amount, payee and card (SPEC C5)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Holder, assert_problem
from tests.wallet_support import (
    PIN,
    bank_balance,
    card_number,
    code_in,
    confirm,
    funded_holder,
    latest_sms,
    latest_sms_code,
    money_post,
    open_card,
    wallet,
)
from walletguard.bank.gateway import (
    BankChallengeClosed,
    BankVerificationFailed,
    CardBlockedAtBank,
    DynamicPasswordWrong,
)
from walletguard.bank.sandbox import SandboxBankError
from walletguard.bank.service import bank_gateway, sandbox_bank
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work

PHONE = "+8613812345678"


def _pay_by_card(
    client: TestClient, holder: Holder, card_id: str, merchant: str, amount: str
) -> Any:
    return money_post(
        client,
        "/api/v1/payments",
        {"merchant": merchant, "amount": amount, "payment_password": PIN, "card_id": card_id},
        holder,
    )


def test_the_sms_says_what_the_code_approves(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = _pay_by_card(client, holder, card_id, "金店", "1000.00")
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] == "awaiting_bank_confirmation"
    assert body["card_last4"] == number[-4:]
    sms = latest_sms(container, PHONE)
    assert sms.sender == "工商银行"
    assert sms.purpose == "bank_dynamic_password"
    assert sms.body.startswith("【工商银行】")
    assert f"尾号{number[-4:]}" in sms.body
    assert "金店" in sms.body
    assert "1,000.00 元" in sms.body
    assert "5分钟内有效" in sms.body
    assert number not in sms.body


def test_a_code_for_one_payment_never_confirms_another(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    first = _pay_by_card(client, holder, card_id, "金店", "1000.00").json()
    code_a = latest_sms_code(container, PHONE)
    second = _pay_by_card(client, holder, card_id, "电器城", "20.00").json()
    code_b = latest_sms_code(container, PHONE)
    if code_a == code_b:
        pytest.skip("the two random codes collided (one in a million)")
    wrong = confirm(client, holder, second["movement_id"], code_a)
    assert_problem(wrong, 403, "dynamic-password-wrong")
    before = bank_balance(container, number)
    assert confirm(client, holder, first["movement_id"], code_a).status_code == 200
    assert bank_balance(container, number) == (before or 0) - 100_000
    assert confirm(client, holder, second["movement_id"], code_b).status_code == 200


def test_three_wrong_tries_kill_the_challenge(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = _pay_by_card(client, holder, card_id, "金店", "10.00").json()
    code = latest_sms_code(container, PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for remaining in (2, 1, 0):
        problem = assert_problem(
            confirm(client, holder, started["movement_id"], wrong), 403, "dynamic-password-wrong"
        )
        assert problem["remaining_tries"] == remaining
    # The right code is useless now, and the movement was voided with nothing taken.
    problem = assert_problem(
        confirm(client, holder, started["movement_id"], code), 409, "movement-not-pending"
    )
    assert problem["movement_status"] == "voided"
    movement = client.get(f"/api/v1/movements/{started['movement_id']}", headers=holder.auth)
    assert movement.json()["status"] == "voided"
    assert movement.json()["status_reason"] == "tries_exhausted"
    assert bank_balance(container, number) == 10_000_000


def test_the_code_expires_after_five_minutes(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = _pay_by_card(client, holder, card_id, "金店", "10.00").json()
    code = latest_sms_code(container, PHONE)
    clock.advance(timedelta(minutes=5, seconds=1))
    problem = assert_problem(
        confirm(client, holder, started["movement_id"], code), 409, "dynamic-password-unusable"
    )
    assert problem["reason"] == "expired"
    movement = client.get(f"/api/v1/movements/{started['movement_id']}", headers=holder.auth)
    assert movement.json()["status"] == "voided"
    assert movement.json()["status_reason"] == "expired"
    assert bank_balance(container, number) == 10_000_000


def test_a_code_inside_five_minutes_works(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = _pay_by_card(client, holder, card_id, "金店", "10.00").json()
    clock.advance(timedelta(minutes=4, seconds=59))
    done = confirm(client, holder, started["movement_id"], latest_sms_code(container, PHONE))
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "posted"
    assert bank_balance(container, number) == 10_000_000 - 1_000


def test_a_blocked_card_refuses_debits(client: TestClient, container: Container) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = _pay_by_card(client, holder, card_id, "金店", "10.00").json()
    code = latest_sms_code(container, PHONE)
    with unit_of_work(container.sessions) as db:
        bank_gateway(db, container).block_card(number=number)
    problem = assert_problem(
        confirm(client, holder, started["movement_id"], code), 409, "card-debit-failed"
    )
    assert problem["reason"] == "card-blocked"
    assert problem["movement_status"] == "failed"
    assert bank_balance(container, number) == 10_000_000
    with unit_of_work(container.sessions) as db, pytest.raises(CardBlockedAtBank):
        bank_gateway(db, container).start_debit(number=number, amount_fen=100, payee="x")


def test_not_enough_money_on_the_card_fails_the_movement(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE, card_balance_fen=5_000)
    started = _pay_by_card(client, holder, card_id, "金店", "50.01").json()
    problem = assert_problem(
        confirm(client, holder, started["movement_id"], latest_sms_code(container, PHONE)),
        409,
        "card-debit-failed",
    )
    assert problem["reason"] == "card-funds-insufficient"
    assert bank_balance(container, number) == 5_000
    assert wallet(client, holder)["balance"] == "0.00"


def test_binding_checks_the_name_and_the_reserved_phone(container: Container) -> None:
    number = card_number(serial=7)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=0)
    with unit_of_work(container.sessions) as db:
        bank = bank_gateway(db, container)
        for name, phone, candidate in (
            ("李娜", PHONE, number),
            ("张伟", "+8613900000000", number),
            ("张伟", PHONE, card_number(serial=8)),
        ):
            with pytest.raises(BankVerificationFailed):
                bank.start_binding(number=candidate, holder_name=name, reserved_phone_e164=phone)
        challenge = bank.start_binding(
            number=number, holder_name=" 张 伟", reserved_phone_e164=PHONE
        )
        assert challenge.last4 == number[-4:]
    sms = latest_sms(container, PHONE)
    assert sms.purpose == "bank_binding_code"
    with unit_of_work(container.sessions) as db:
        bank = bank_gateway(db, container)
        with pytest.raises(BankChallengeClosed):
            # A binding code does not approve a debit.
            bank.confirm_debit(challenge.challenge_id, code_in(sms.body))
        bank.confirm_binding(challenge.challenge_id, code_in(sms.body))
        with pytest.raises(BankChallengeClosed):
            bank.confirm_binding(challenge.challenge_id, code_in(sms.body))


def test_three_wrong_binding_codes_kill_it(container: Container) -> None:
    number = card_number(serial=9)
    open_card(container, number=number, name="张伟", phone=PHONE, balance_fen=0)
    with unit_of_work(container.sessions) as db:
        challenge = bank_gateway(db, container).start_binding(
            number=number, holder_name="张伟", reserved_phone_e164=PHONE
        )
    code = latest_sms_code(container, PHONE)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(3):
        # Each refusal keeps its writes (the try is counted) as the unit of work commits it.
        with pytest.raises(DynamicPasswordWrong), unit_of_work(container.sessions) as db:
            bank_gateway(db, container).confirm_binding(challenge.challenge_id, wrong)
    with pytest.raises(BankChallengeClosed), unit_of_work(container.sessions) as db:
        bank_gateway(db, container).confirm_binding(challenge.challenge_id, code)


def test_opening_card_accounts_is_validated(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        bank = sandbox_bank(db, container)
        good = card_number(serial=11)
        with pytest.raises(SandboxBankError, match="not valid"):
            bank.open_card_account(
                number=good[:-1] + str((int(good[-1]) + 1) % 10),
                holder_name="张伟",
                reserved_phone_e164=PHONE,
                balance_fen=0,
            )
        with pytest.raises(SandboxBankError, match="issued by ICBC"):
            bank.open_card_account(
                number=good,
                holder_name="张伟",
                reserved_phone_e164=PHONE,
                balance_fen=0,
                bank_code="CMB",
            )
        bank.open_card_account(
            number=good, holder_name="张伟", reserved_phone_e164=PHONE, balance_fen=1
        )
        with pytest.raises(SandboxBankError, match="already has"):
            bank.open_card_account(
                number=good, holder_name="张伟", reserved_phone_e164=PHONE, balance_fen=1
            )
        assert bank.balance_of(good) == 1
