"""The one-click "this was not me": freezes payments, revokes the device it names, single use,
expires in 7 days, refuses a forged link — and needs no login."""

from __future__ import annotations

import sys
import types
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import DEFAULT_PHONE, STRONG_PASSWORD, assert_problem, login, register
from tests.mfa_support import audit_data, audit_events, not_me_token
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock


class FakeWallet:
    """Stands in for walletguard.wallet.service (built in parallel) and records the freeze."""

    calls: list[dict[str, Any]]

    def __init__(self, db: Any, env: Any) -> None:
        self.db = db

    def close_all_transactions(
        self, holder_id: uuid.UUID, *, reason: str, device_id: uuid.UUID | None, ip: str | None
    ) -> None:
        FakeWallet.calls.append({"holder_id": holder_id, "reason": reason, "device_id": device_id})


@pytest.fixture
def wallet(monkeypatch: pytest.MonkeyPatch) -> type[FakeWallet]:
    module = types.ModuleType("walletguard.wallet.service")
    module.WalletService = FakeWallet  # type: ignore[attr-defined]
    FakeWallet.calls = []
    monkeypatch.setitem(sys.modules, "walletguard.wallet.service", module)
    return FakeWallet


def _attacker_logs_in(client: TestClient) -> dict[str, Any]:
    issued: dict[str, Any] = login(
        client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="attacker"
    ).json()
    issued["auth"] = {"authorization": f"Bearer {issued['session_token']}"}
    return issued


def test_not_me_freezes_payments_and_revokes_the_device_once(
    client: TestClient, container: Container, wallet: type[FakeWallet]
) -> None:
    holder = register(client, container)
    attacker = _attacker_logs_in(client)
    token = not_me_token(container, "security.device_added")
    about = client.get(f"/api/v1/not-me/{token}")
    assert about.status_code == 200
    assert about.json()["event"] == "security.device_added"
    assert client.get("/api/v1/devices/current", headers=attacker["auth"]).status_code == 200
    reported = client.post(f"/api/v1/not-me/{token}")
    assert reported.status_code == 200, reported.text
    assert reported.json() | {"message": ""} == {
        "device_revoked": True,
        "sessions_revoked": 1,
        "payments_frozen": True,
        "message": "",
    }
    assert wallet.calls == [
        {"holder_id": uuid.UUID(holder.holder_id), "reason": "not_me", "device_id": None}
    ]
    assert client.get("/api/v1/devices/current", headers=attacker["auth"]).status_code == 401
    relogin = login(
        client, DEFAULT_PHONE, STRONG_PASSWORD, device_token=attacker["device_token"]
    ).json()
    assert relogin["new_device"] is True
    # The holder's own phone is untouched.
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 200
    # Single use.
    assert_problem(client.post(f"/api/v1/not-me/{token}"), 409, "link-used")
    assert len(wallet.calls) == 1
    report = audit_events(container, "security.not_me_reported")
    assert len(report) == 1
    assert audit_data(report[0])["reported_event"] == "security.device_added"


def test_without_a_wallet_the_report_still_revokes(
    client: TestClient, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "walletguard.wallet.service", None)
    register(client, container)
    _attacker_logs_in(client)
    reported = client.post(f"/api/v1/not-me/{not_me_token(container, 'security.device_added')}")
    assert reported.json()["payments_frozen"] is False
    assert reported.json()["device_revoked"] is True


def test_not_me_links_expire_after_seven_days(
    client: TestClient, container: Container, clock: ManualClock, wallet: type[FakeWallet]
) -> None:
    register(client, container)
    _attacker_logs_in(client)
    token = not_me_token(container, "security.device_added")
    clock.advance(timedelta(days=7, seconds=1))
    assert_problem(client.post(f"/api/v1/not-me/{token}"), 410, "link-expired")
    assert wallet.calls == []


@pytest.mark.parametrize("tamper", ["signature", "claims", "garbage"])
def test_a_forged_link_is_refused(
    client: TestClient, container: Container, wallet: type[FakeWallet], tamper: str
) -> None:
    register(client, container)
    _attacker_logs_in(client)
    token = not_me_token(container, "security.device_added")
    body, signature = token.split(".")
    forged = {
        "signature": f"{body}.{signature[:-4]}AAAA",
        "claims": f"{body[:-4]}AAAA.{signature}",
        "garbage": "not-a-token",
    }[tamper]
    assert_problem(client.post(f"/api/v1/not-me/{forged}"), 404, "link-invalid")
    assert wallet.calls == []


def test_not_me_on_a_recovery_cancels_it(
    client: TestClient, container: Container, wallet: type[FakeWallet]
) -> None:
    from tests.test_recovery import ID_NUMBER, _start

    holder = register(client, container, id_number=ID_NUMBER)
    assert _start(client).status_code == 202
    token = not_me_token(container, "security.recovery_started")
    assert client.post(f"/api/v1/not-me/{token}").status_code == 200
    assert client.get("/api/v1/recovery", headers=holder.auth).json() == []
    assert wallet.calls[0]["reason"] == "not_me"
