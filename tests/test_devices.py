"""New devices: what they may do before verifying, which factors verify them, cooling-off and its
boundaries, approval from a trusted device, and the announcement of every new-device login."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    assert_problem,
    login,
    login_trusted,
    register,
    step_up,
)
from tests.mfa_support import audit_data, audit_events, enrol_totp
from walletguard.bootstrap import Container
from walletguard.identity.guards import (
    DeviceCoolingOff,
    SensitiveAction,
    cooling_off_daily_cap_fen,
    require_past_cooling_off,
)
from walletguard.identity.service import Principal
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work


def _new_device(
    client: TestClient, device_id: str = "tablet"
) -> tuple[dict[str, Any], dict[str, str]]:
    issued = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id=device_id).json()
    return issued, {"authorization": f"Bearer {issued['session_token']}"}


def _principal(issued: dict[str, Any]) -> Principal:
    return Principal(
        holder_id=uuid.UUID(issued["holder_id"]),
        session_id=uuid.UUID(issued["session_id"]),
        device_id=uuid.UUID(issued["device_id"]),
        device_trust=issued["device_trust"],
        ip=None,
    )


def _verify_with_totp(client: TestClient, auth: dict[str, str], code: str) -> Any:
    return client.post(
        "/api/v1/step-up",
        json={"action": "add_device", "factor": "totp", "code": code},
        headers=auth,
    )


def test_a_new_device_sees_only_its_status_until_it_verifies(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    issued, auth = _new_device(client)
    assert issued["device_trust"] == "new"
    status = client.get("/api/v1/devices/current", headers=auth).json()
    assert status["trust"] == "new"
    # Nothing enrolled and no SMS for add_device: only a trusted device can vouch for it.
    assert status["factors_to_verify"] == []
    for method, path in [
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/me/factors"),
        ("GET", "/api/v1/messages"),
        ("POST", "/api/v1/messages/sync"),
        ("POST", "/api/v1/sessions/revoke-others"),
    ]:
        assert_problem(client.request(method, path, headers=auth), 403, "device-not-verified")
    # It may ask for approval, and the holder's other devices are told.
    asked = client.post("/api/v1/devices/current/approval-request", headers=auth)
    assert asked.status_code == 202, asked.text
    assert audit_events(container, "security.device_approval_requested")


def test_sms_never_verifies_a_new_device(client: TestClient, container: Container) -> None:
    register(client, container)
    _, auth = _new_device(client)
    refused = client.post(
        "/api/v1/step-up/challenges", json={"action": "add_device", "factor": "sms"}, headers=auth
    )
    problem = assert_problem(refused, 403, "factor-not-allowed")
    assert problem["factors"] == []
    # Nor may a new device step up for anything else.
    other = client.post(
        "/api/v1/step-up/challenges",
        json={"action": "change_password", "factor": "sms"},
        headers=auth,
    )
    assert_problem(other, 403, "device-not-verified")


def test_every_new_device_login_is_announced_with_a_not_me_link(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    issued, _ = _new_device(client)
    added = audit_events(container, "security.device_added")
    assert len(added) == 1
    data = audit_data(added[0])
    assert data["device_id"] == issued["device_id"]
    assert data["not_me_url"].startswith("http://127.0.0.1:8000/not-me/")
    # A second login from the now-known device is not a new device.
    login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_token=issued["device_token"])
    assert len(audit_events(container, "security.device_added")) == 1


def test_totp_verifies_then_cooling_off_holds_for_24_hours_from_first_seen(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    issued, auth = _new_device(client)
    first_seen = clock.now()
    clock.advance(timedelta(hours=1))
    verified = _verify_with_totp(client, auth, totp.code())
    assert verified.status_code == 201, verified.text
    assert verified.json()["device_trust"] == "cooling_off"
    assert audit_data(audit_events(container, "security.device_verified")[0])["factor"] == "totp"
    status = client.get("/api/v1/devices/current", headers=auth).json()
    assert status["verified_by"] == "totp"
    assert status["cooling_off_until"].startswith(
        (first_seen + timedelta(hours=24)).isoformat()[:19]
    )
    # Usable now, but nothing dangerous.
    assert client.get("/api/v1/me", headers=auth).status_code == 200
    refused = client.post(
        "/api/v1/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": "Granite-Heron-7731"},
        headers=auth,
    )
    problem = assert_problem(refused, 403, "device-cooling-off")
    assert problem["until"].startswith((first_seen + timedelta(hours=24)).isoformat()[:19])
    assert_problem(client.post("/api/v1/messages/sync", headers=auth), 403, "device-cooling-off")
    principal = _principal(issued)
    with unit_of_work(container.sessions) as db:
        assert cooling_off_daily_cap_fen(db, container, principal) == 20_000
    # One second before the end: still cooling off; at the end: not.
    clock.advance(first_seen + timedelta(hours=24) - clock.now() - timedelta(seconds=1))
    with unit_of_work(container.sessions) as db, pytest.raises(DeviceCoolingOff):
        require_past_cooling_off(db, container, principal, SensitiveAction.BIND_CARD)
    clock.advance(timedelta(seconds=1))
    with unit_of_work(container.sessions) as db:
        require_past_cooling_off(db, container, principal, SensitiveAction.BIND_CARD)
        assert cooling_off_daily_cap_fen(db, container, principal) is None
    assert client.get("/api/v1/devices/current", headers=auth).json()["trust"] == "trusted"


def test_a_recovery_code_verifies_a_new_device(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "enrol_factor")
    codes = client.post("/api/v1/me/factors/recovery-codes", headers=holder.auth).json()["codes"]
    _, auth = _new_device(client)
    assert client.get("/api/v1/devices/current", headers=auth).json()["factors_to_verify"] == [
        "recovery_code"
    ]
    verified = client.post(
        "/api/v1/step-up",
        json={"action": "add_device", "factor": "recovery_code", "code": codes[0]},
        headers=auth,
    )
    assert verified.status_code == 201, verified.text
    assert verified.json()["device_trust"] == "cooling_off"


def test_a_trusted_device_approves_a_new_one_and_ends_its_cooling_off(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    issued, auth = _new_device(client)
    url = f"/api/v1/devices/{issued['device_id']}/approve"
    # The approving device steps up first (SMS is fine here: it confirms the holder is at the
    # trusted phone, not the new device).
    assert_problem(client.post(url, headers=holder.auth), 403, "step-up-required")
    step_up(client, container, holder.auth, DEFAULT_PHONE, "add_device")
    approved = client.post(url, headers=holder.auth)
    assert approved.status_code == 200, approved.text
    assert client.get("/api/v1/devices/current", headers=auth).json()["trust"] == "trusted"
    # No cooling-off left: the approved device may change a credential (with its own step-up).
    step_up(client, container, auth, DEFAULT_PHONE, "change_password")
    changed = client.post(
        "/api/v1/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": "Granite-Heron-7731"},
        headers=auth,
    )
    assert changed.status_code == 200, changed.text
    event = audit_events(container, "security.device_approved")[0]
    assert audit_data(event)["device_id"] == issued["device_id"]


def test_a_device_still_cooling_off_cannot_vouch_for_another(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    _, first_auth = _new_device(client, "attacker-1")
    assert _verify_with_totp(client, first_auth, totp.code()).status_code == 201
    second, _ = _new_device(client, "attacker-2")
    refused = client.post(f"/api/v1/devices/{second['device_id']}/approve", headers=first_auth)
    assert_problem(refused, 403, "device-cooling-off")
    # Nor sign the holder's trusted phone out.
    assert_problem(
        client.delete(f"/api/v1/devices/{holder.device_id}", headers=first_auth),
        403,
        "device-cooling-off",
    )
    assert_problem(
        client.post("/api/v1/sessions/revoke-others", headers=first_auth), 403, "device-cooling-off"
    )
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 200


def test_approving_needs_a_device_of_ones_own(client: TestClient, container: Container) -> None:
    owner = register(client, container)
    stranger = register(client, container, "+8613900000000", name="李娜", device_id="x")
    issued, _ = _new_device(client)
    step_up(client, container, stranger.auth, stranger.phone, "add_device")
    refused = client.post(f"/api/v1/devices/{issued['device_id']}/approve", headers=stranger.auth)
    assert_problem(refused, 404, "not-found")
    assert_problem(
        client.post(f"/api/v1/devices/{owner.device_id}/approve", headers=owner.auth),
        404,
        "not-found",
    )


def test_device_list_shows_each_state(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    login_trusted(client, container, holder, device_id="tablet")
    _new_device(client, "laptop")
    devices = client.get("/api/v1/devices", headers=holder.auth).json()
    assert sorted(d["trust"] for d in devices) == ["new", "trusted", "trusted"]
