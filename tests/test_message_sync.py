"""Phone messages: the SIM device, cloud sync to other devices, and the OTP guard on the copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    Holder,
    assert_problem,
    latest_code,
    login,
    login_trusted,
    make_settings,
    register,
    step_up,
)
from walletguard.app import create_app
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import ManualClock

BANK_CODE_SMS = (
    "【工商银行】您尾号8821的卡正向 金店 支付 1,000.00 元，动态密码 382914，5分钟内有效，请勿泄露。"
)
BALANCE_SMS = "【工商银行】您尾号8821的卡于11月20日支出1,000.00元，余额3,456.78元。"


def _claim_sim(client: TestClient, container: Container, holder: Holder) -> None:
    assert client.post("/api/v1/messages/sim-claim", headers=holder.auth).status_code == 202
    code = latest_code(container, holder.phone)
    confirmed = client.post(
        "/api/v1/messages/sim-claim/confirm", json={"code": code}, headers=holder.auth
    )
    assert confirmed.status_code == 204, confirmed.text


def _deliver(client: TestClient, body: str, sender: str = "95588") -> None:
    response = client.post(
        f"/api/v1/sandbox/phones/{DEFAULT_PHONE}/messages", json={"sender": sender, "body": body}
    )
    assert response.status_code == 201, response.text


def test_the_sim_device_sees_every_message_in_full(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    _claim_sim(client, container, holder)
    _deliver(client, BANK_CODE_SMS)
    state = client.get("/api/v1/messages/sync", headers=holder.auth).json()
    assert state == {"sync_enabled": False, "holds_sim": True}
    newest = client.get("/api/v1/messages", headers=holder.auth).json()[0]
    assert newest["body"] == BANK_CODE_SMS
    assert newest["on_sim_device"] is True
    assert newest["hidden_code"] is False


def test_synced_copies_hide_one_time_codes_but_not_other_messages(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    _claim_sim(client, container, holder)
    tablet = login_trusted(client, container, holder)
    assert_problem(client.get("/api/v1/messages", headers=tablet["auth"]), 409, "sync-not-enabled")
    assert_problem(
        client.post("/api/v1/messages/sync", headers=tablet["auth"]), 403, "step-up-required"
    )
    step_up(client, container, tablet["auth"], holder.phone, "enable_sync", "sms")
    enabled = client.post("/api/v1/messages/sync", headers=tablet["auth"])
    assert enabled.status_code == 200, enabled.text
    _deliver(client, BALANCE_SMS)
    _deliver(client, BANK_CODE_SMS)
    synced = client.get("/api/v1/messages", headers=tablet["auth"]).json()
    assert synced[0]["hidden_code"] is True
    assert "382914" not in synced[0]["body"]
    assert "SIM" in synced[0]["body"]
    assert synced[1]["body"] == BALANCE_SMS
    english = client.get(
        "/api/v1/messages", headers={**tablet["auth"], "accept-language": "en"}
    ).json()
    assert "hidden" in english[0]["body"].lower()
    # The phone that holds the SIM still reads the code.
    assert client.get("/api/v1/messages", headers=holder.auth).json()[0]["body"] == BANK_CODE_SMS


def test_no_code_ever_reaches_a_synced_device(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    tablet = login_trusted(client, container, holder)
    step_up(client, container, tablet["auth"], holder.phone, "enable_sync", "sms")
    assert client.post("/api/v1/messages/sync", headers=tablet["auth"]).status_code == 200
    synced = client.get("/api/v1/messages", headers=tablet["auth"]).json()
    # Registration, approval and step-up codes all went to this number: none is readable here.
    codes = [latest_code(container, holder.phone)]
    dump = " ".join(m["body"] for m in synced)
    assert all(code not in dump for code in codes)
    assert any(m["hidden_code"] for m in synced)


def test_an_unverified_new_device_cannot_turn_sync_on(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    stranger = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="somewhere").json()
    auth = {"authorization": f"Bearer {stranger['session_token']}"}
    assert_problem(client.post("/api/v1/messages/sync", headers=auth), 403, "device-not-verified")


def test_vulnerable_profile_syncs_everything_to_any_device(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, db_url, profile="vulnerable")
    container = build_container(settings, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            register(client, container)
            thief = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="thief").json()
            auth = {"authorization": f"Bearer {thief['session_token']}"}
            assert client.post("/api/v1/messages/sync", headers=auth).status_code == 200
            _deliver(client, BANK_CODE_SMS)
            newest = client.get("/api/v1/messages", headers=auth).json()[0]
            assert newest["body"] == BANK_CODE_SMS
    finally:
        container.close()


def test_a_sim_swap_moves_the_sim_away_from_the_old_phone(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    _claim_sim(client, container, holder)
    assert client.post(f"/api/v1/sandbox/phones/{DEFAULT_PHONE}/sim-swap").status_code == 204
    state = client.get("/api/v1/messages/sync", headers=holder.auth).json()
    assert state["holds_sim"] is False
    assert_problem(client.get("/api/v1/messages", headers=holder.auth), 409, "sync-not-enabled")


def test_wrong_sim_claim_codes_are_limited(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    client.post("/api/v1/messages/sim-claim", headers=holder.auth)
    good = latest_code(container, holder.phone)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for _ in range(5):
        response = client.post(
            "/api/v1/messages/sim-claim/confirm", json={"code": wrong}, headers=holder.auth
        )
        assert_problem(response, 400, "sim-claim-refused")
    last = client.post(
        "/api/v1/messages/sim-claim/confirm", json={"code": good}, headers=holder.auth
    )
    assert_problem(last, 429, "too-many-attempts")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/messages"),
        ("GET", "/api/v1/messages/sync"),
        ("POST", "/api/v1/messages/sync"),
        ("DELETE", "/api/v1/messages/sync"),
        ("POST", "/api/v1/messages/sim-claim"),
    ],
)
def test_message_endpoints_need_a_session(client: TestClient, method: str, path: str) -> None:
    assert_problem(client.request(method, path), 401, "not-authenticated")


def test_disable_sync(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    tablet = login_trusted(client, container, holder)
    step_up(client, container, tablet["auth"], holder.phone, "enable_sync", "sms")
    assert client.post("/api/v1/messages/sync", headers=tablet["auth"]).status_code == 200
    assert client.delete("/api/v1/messages/sync", headers=tablet["auth"]).status_code == 204
    assert_problem(client.get("/api/v1/messages", headers=tablet["auth"]), 409, "sync-not-enabled")
