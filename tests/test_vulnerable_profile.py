"""The ``vulnerable`` profile is the original product: a password makes a device usable at once
and an SMS code alone resets the payment password — the hole the 88,130-yuan attack used.
Switching one control off at a time shows what each one holds back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    assert_problem,
    login,
    make_settings,
    register,
    step_up,
)
from walletguard.app import create_app
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import ManualClock
from walletguard.kit.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, profile="vulnerable")


def _pin(client: TestClient, auth: dict[str, str]) -> None:
    body = {"login_password": STRONG_PASSWORD, "payment_password": "480915"}
    assert client.put("/api/v1/me/payment-password", json=body, headers=auth).status_code == 204


def test_a_new_device_is_usable_at_once(client: TestClient, container: Container) -> None:
    register(client, container)
    attacker = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="attacker").json()
    assert attacker["device_trust"] == "trusted"
    auth = {"authorization": f"Bearer {attacker['session_token']}"}
    assert client.get("/api/v1/me", headers=auth).status_code == 200
    # No step-up either: the password alone changes the password.
    changed = client.post(
        "/api/v1/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": "Granite-Heron-7731"},
        headers=auth,
    )
    assert changed.status_code == 200, changed.text


def test_an_sms_code_alone_resets_the_payment_password(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    _pin(client, holder.auth)
    attacker = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="attacker").json()
    auth = {"authorization": f"Bearer {attacker['session_token']}"}
    # The attacker reads the code wherever the SMS reaches (cloud sync in the source case).
    step_up(client, container, auth, DEFAULT_PHONE, "reset_payment_password")
    reset = client.post(
        "/api/v1/me/payment-password/reset", json={"payment_password": "593017"}, headers=auth
    )
    assert reset.status_code == 204, reset.text
    # Even the vulnerable product asked for that SMS code.
    again = client.post(
        "/api/v1/me/payment-password/reset", json={"payment_password": "720468"}, headers=auth
    )
    assert_problem(again, 403, "step-up-required")


@pytest.fixture
def ablated(tmp_path: Path, db_url: str, clock: ManualClock) -> Iterator[TestClient]:
    """Protected, with only new-device step-up switched off."""
    built = build_container(
        make_settings(tmp_path, db_url, disabled_controls="new_device_step_up"), clock=clock
    )
    with TestClient(create_app(built)) as test_client:
        test_client.app.state.container = built
        yield test_client
    built.close()


def test_without_new_device_step_up_cooling_off_still_holds(ablated: TestClient) -> None:
    container: Container = ablated.app.state.container  # type: ignore[attr-defined]
    holder = register(ablated, container)
    _pin(ablated, holder.auth)
    attacker = login(ablated, DEFAULT_PHONE, STRONG_PASSWORD, device_id="attacker").json()
    assert attacker["device_trust"] == "cooling_off"
    auth = {"authorization": f"Bearer {attacker['session_token']}"}
    assert ablated.get("/api/v1/me", headers=auth).status_code == 200
    assert_problem(ablated.post("/api/v1/messages/sync", headers=auth), 403, "device-cooling-off")
    reset = ablated.post(
        "/api/v1/me/payment-password/reset", json={"payment_password": "593017"}, headers=auth
    )
    assert_problem(reset, 403, "device-cooling-off")
