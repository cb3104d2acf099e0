"""Refunds are reversing movements, and the ledger reconciles (CLI ``ledger refund``/``check``,
``bank open-card``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.wallet_support import (
    PIN,
    bank_balance,
    bind_card,
    card_number,
    confirm,
    funded_holder,
    latest_sms_code,
    money_post,
    top_up_now,
    wallet,
    wallet_holder,
)
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import NotFound
from walletguard.wallet.ledger import InsufficientBalance, RefundExceedsOriginal, reconcile
from walletguard.wallet.service import NotRefundable, WalletService

PHONE = "+8613812345678"
FRIEND = "+8613912345678"


def _refund(container: Container, movement_id: str, amount_fen: int | None = None) -> str:
    with unit_of_work(container.sessions) as db:
        refund = WalletService(db, container).refund(
            uuid.UUID(movement_id), amount_fen, operator="tester", reason="test"
        )
        return str(refund.id)


def _check(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        report = reconcile(db)
    assert report.ok, report.mismatches


def test_partial_refunds_up_to_the_original(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "便利店", "amount": "30.00", "payment_password": PIN},
        holder,
    ).json()
    _refund(container, paid["id"], 1_000)
    assert wallet(client, holder)["balance"] == "80.00"
    with pytest.raises(RefundExceedsOriginal):
        _refund(container, paid["id"], 2_001)
    _refund(container, paid["id"])  # the rest
    assert wallet(client, holder)["balance"] == "100.00"
    with pytest.raises(NotRefundable):
        _refund(container, paid["id"])
    original = client.get(f"/api/v1/movements/{paid['id']}", headers=holder.auth).json()
    assert original["refunded"] == "30.00"
    assert original["status"] == "posted"  # never edited into something else
    refunds = client.get("/api/v1/movements?kind=refund", headers=holder.auth).json()["items"]
    assert {r["amount"] for r in refunds} == {"10.00", "20.00"}
    assert all(r["direction"] == "in" and r["reverses_id"] == paid["id"] for r in refunds)
    _check(container)


def test_a_card_payment_refund_goes_back_to_the_card(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE)
    started = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "500.00", "payment_password": PIN, "card_id": card_id},
        holder,
    ).json()
    confirm(client, holder, started["movement_id"], latest_sms_code(container, PHONE))
    assert bank_balance(container, number) == 10_000_000 - 50_000
    _refund(container, started["movement_id"])
    assert bank_balance(container, number) == 10_000_000
    assert wallet(client, holder)["balance"] == "0.00"
    _check(container)


def test_a_transfer_refund_takes_the_money_back_from_the_recipient(
    client: TestClient, container: Container
) -> None:
    sender, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    friend = wallet_holder(client, container, FRIEND, name="李娜")
    sent = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": FRIEND, "amount": "40.00", "payment_password": PIN},
        sender,
    ).json()
    money_post(
        client,
        "/api/v1/payments",
        {"merchant": "店", "amount": "35.00", "payment_password": PIN},
        friend,
    )
    # The recipient spent most of it: a full refund would overdraw them, so it is refused.
    with pytest.raises(InsufficientBalance):
        _refund(container, sent["id"])
    _refund(container, sent["id"], 500)
    assert wallet(client, sender)["balance"] == "65.00"
    assert wallet(client, friend)["balance"] == "0.00"
    seen = client.get("/api/v1/movements?kind=refund", headers=friend.auth).json()["items"]
    assert seen[0]["direction"] == "out"
    _check(container)


def test_what_cannot_be_refunded(client: TestClient, container: Container) -> None:
    holder, card_id, _ = funded_holder(client, container, PHONE, top_up="100.00")
    withdrawn = money_post(
        client,
        "/api/v1/withdrawals",
        {"card_id": card_id, "amount": "1.00", "payment_password": PIN},
        holder,
    ).json()
    with pytest.raises(NotRefundable):
        _refund(container, withdrawn["id"])
    with pytest.raises(NotFound):
        _refund(container, str(uuid.uuid4()))
    pending = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "金店", "amount": "1.00", "payment_password": PIN, "card_id": card_id},
        holder,
    ).json()
    with pytest.raises(NotRefundable):
        _refund(container, pending["movement_id"])


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli_env(container: Container, tmp_path: Path) -> dict[str, str]:
    settings = container.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLETGUARD_")}
    env.update(
        WALLETGUARD_DATA_DIR=str(tmp_path / "cli-data"),
        WALLETGUARD_DATABASE_URL=settings.effective_database_url,
        WALLETGUARD_FIELD_KEYS=settings.field_keys.get_secret_value(),  # type: ignore[union-attr]
        WALLETGUARD_FIELD_ACTIVE_KEY=settings.field_active_key or "",
        WALLETGUARD_INDEX_KEY=settings.index_key.get_secret_value(),  # type: ignore[union-attr]
    )
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walletguard.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_open_card_refund_and_check(
    client: TestClient, container: Container, cli_env: dict[str, str]
) -> None:
    holder = wallet_holder(client, container, PHONE)
    number = card_number(prefix="621483", serial=77)  # China Merchants Bank
    opened = run(
        cli_env,
        "bank",
        "open-card",
        "--bank",
        "CMB",
        "--number",
        number,
        "--balance",
        "50000.00",
        "--phone",
        "13812345678",
        "--name",
        "张伟",
    )
    assert opened.returncode == 0, opened.stderr
    assert number[-4:] in opened.stdout and number not in opened.stdout
    twice = run(
        cli_env,
        "bank",
        "open-card",
        "--bank",
        "CMB",
        "--number",
        number,
        "--phone",
        "13812345678",
        "--name",
        "张伟",
    )
    assert twice.returncode == 1 and "already has" in twice.stderr
    assert bank_balance(container, number) == 5_000_000

    card_id = bind_card(client, container, holder, number)
    top_up_now(client, container, holder, card_id, "100.00")
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "便利店", "amount": "30.00", "payment_password": PIN},
        holder,
    ).json()
    refunded = run(cli_env, "ledger", "refund", paid["id"], "--amount", "12.50")
    assert refunded.returncode == 0, refunded.stderr
    assert "12.50" in refunded.stdout
    too_much = run(cli_env, "ledger", "refund", paid["id"], "--amount", "20.00")
    assert too_much.returncode == 1 and "17.50" in too_much.stderr
    bad_amount = run(cli_env, "ledger", "refund", paid["id"], "--amount", "1.001")
    assert bad_amount.returncode == 1
    assert wallet(client, holder)["balance"] == "82.50"

    checked = run(cli_env, "ledger", "check")
    assert checked.returncode == 0, checked.stderr
    assert "ledger OK" in checked.stdout

    # Tamper with a cached balance: the check names the account.
    with container.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE ledger_accounts SET balance_fen = balance_fen + 1 "
                "WHERE code LIKE 'holder:%'"
            )
        )
    broken = run(cli_env, "ledger", "check")
    assert broken.returncode == 1
    assert f"account holder:{holder.holder_id}: cached balance" in broken.stderr


def test_problem_documents_for_refund_errors() -> None:
    # The operator-facing errors carry problem types like every other refusal.
    error = RefundExceedsOriginal(1750)
    body = error.to_problem("en")
    assert body["type"] == "urn:walletguard:problem:refund-exceeds-original"
    assert body["refundable"] == "17.50"
