"""Getting back in: account recovery with a loud delay, forgotten passwords that never bypass the
second factor, the payment-password reset, and changing the bound phone number."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    assert_problem,
    latest_code,
    login,
    login_trusted,
    register,
    step_up,
)
from tests.mfa_support import audit_data, audit_events, enrol_totp
from walletguard.bootstrap import Container
from walletguard.identity.guards import cooling_off_daily_cap_fen
from walletguard.identity.service import Principal
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.messages.service import PhoneInbox

NEW_PASSWORD = "Granite-Heron-7731"
PIN = "480915"


def _id_number(region: str, birthday: date, serial: str) -> str:
    body = f"{region}{birthday:%Y%m%d}{serial}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


ID_NUMBER = _id_number("110105", date(1985, 3, 12), "123")
NEW_DEVICE = {"id": "new-phone", "label": "新手机"}


def _start(client: TestClient, **change: Any) -> Any:
    body = {"phone": DEFAULT_PHONE, "name": "张伟", "id_number": ID_NUMBER, "device": NEW_DEVICE}
    body.update(change)
    return client.post("/api/v1/recovery", json=body)


def _complete(client: TestClient, started: dict[str, Any], password: str = NEW_PASSWORD) -> Any:
    return client.post(
        f"/api/v1/recovery/{started['recovery_id']}/complete",
        json={
            "recovery_token": started["recovery_token"],
            "new_password": password,
            "device": NEW_DEVICE,
        },
    )


# -- account recovery ------------------------------------------------------------------------


def test_recovery_is_announced_and_cancelled_from_an_old_device(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container, id_number=ID_NUMBER)
    started = _start(client)
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["completes_at"].startswith((clock.now() + timedelta(hours=72)).isoformat()[:19])
    announced = audit_events(container, "security.recovery_started")
    assert len(announced) == 1
    data = audit_data(announced[0])
    assert data["cancel_url"].startswith("http://127.0.0.1:8000/recovery/cancel/")
    assert "张伟" not in announced[0].data and ID_NUMBER not in announced[0].data
    # The old phone sees it and cancels it.
    pending = client.get("/api/v1/recovery", headers=holder.auth).json()
    assert [r["id"] for r in pending] == [body["recovery_id"]]
    cancelled = client.post(f"/api/v1/recovery/{body['recovery_id']}/cancel", headers=holder.auth)
    assert cancelled.status_code == 204, cancelled.text
    assert audit_events(container, "security.recovery_cancelled")
    clock.advance(timedelta(hours=73))
    assert_problem(_complete(client, body), 404, "not-found")
    assert login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_token=holder.device_token)


def test_recovery_cancelled_by_the_signed_link(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    register(client, container, id_number=ID_NUMBER)
    body = _start(client).json()
    url = audit_data(audit_events(container, "security.recovery_started")[0])["cancel_url"]
    token = url.rsplit("/", 1)[-1]
    assert client.post(f"/api/v1/recovery/cancel/{token}").status_code == 204
    assert_problem(client.post(f"/api/v1/recovery/cancel/{token}"), 404, "not-found")
    assert_problem(client.post(f"/api/v1/recovery/cancel/{token[:-2]}xx"), 404, "link-invalid")
    clock.advance(timedelta(hours=73))
    assert_problem(_complete(client, body), 404, "not-found")


def test_a_completed_recovery_starts_from_zero_trust(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container, id_number=ID_NUMBER)
    enrol_totp(client, container, holder)
    body = _start(client).json()
    clock.advance(timedelta(hours=71))
    assert_problem(_complete(client, body), 409, "recovery-not-ready")
    clock.advance(timedelta(hours=1))
    weak = _complete(client, body, password="zhangwei1985")
    assert_problem(weak, 422, "weak-secret")
    done = _complete(client, body)
    assert done.status_code == 201, done.text
    issued = done.json()
    assert issued["device_trust"] == "cooling_off"
    # Every old session ended, every old device untrusted, the lost factors void.
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 401
    auth = {"authorization": f"Bearer {issued['session_token']}"}
    devices = {d["id"]: d["trust"] for d in client.get("/api/v1/devices", headers=auth).json()}
    assert devices[holder.device_id] == "new"
    assert client.get("/api/v1/me/factors", headers=auth).json() == []
    old_phone = login(client, DEFAULT_PHONE, NEW_PASSWORD, device_token=holder.device_token)
    assert old_phone.json()["device_trust"] == "new"
    # Payments closed for a day, then the usual cooling-off cap.
    principal = Principal(
        holder_id=uuid.UUID(issued["holder_id"]),
        session_id=uuid.UUID(issued["session_id"]),
        device_id=uuid.UUID(issued["device_id"]),
        device_trust="cooling_off",
        ip=None,
    )
    with unit_of_work(container.sessions) as db:
        assert cooling_off_daily_cap_fen(db, container, principal) == 0
    clock.advance(timedelta(hours=24))
    with unit_of_work(container.sessions) as db:
        assert cooling_off_daily_cap_fen(db, container, principal) is None
    assert audit_events(container, "security.recovery_completed")


@pytest.mark.parametrize(
    "change",
    [{"name": "李娜"}, {"id_number": _id_number("110105", date(1985, 3, 12), "124")}],
)
def test_a_failed_identity_check_looks_the_same_and_never_completes(
    client: TestClient, container: Container, clock: ManualClock, change: dict[str, str]
) -> None:
    register(client, container, id_number=ID_NUMBER)
    refused = _start(client, **change)
    assert refused.status_code == 202
    assert set(refused.json()) == {"recovery_id", "recovery_token", "completes_at", "message"}
    assert not audit_events(container, "security.recovery_started")
    clock.advance(timedelta(hours=73))
    assert_problem(_complete(client, refused.json()), 404, "not-found")


def test_recovery_requests_are_rate_limited(client: TestClient, container: Container) -> None:
    register(client, container, id_number=ID_NUMBER)
    for _ in range(3):
        assert _start(client, name="王五").status_code == 202
    assert_problem(_start(client), 429, "too-many-attempts")


# -- forgotten login password ----------------------------------------------------------------


def _reset(client: TestClient, container: Container) -> tuple[str, str]:
    started = client.post("/api/v1/password-reset", json={"phone": DEFAULT_PHONE})
    assert started.status_code == 202, started.text
    return started.json()["reset_id"], latest_code(container, DEFAULT_PHONE)


def test_password_reset_never_bypasses_the_second_factor(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    reset_id, sms = _reset(client, container)
    needs = client.post(f"/api/v1/password-reset/{reset_id}/verify", json={"sms_code": sms})
    assert needs.json()["factors"] == ["totp"]
    url = f"/api/v1/password-reset/{reset_id}/complete"
    sms_only = client.post(url, json={"sms_code": sms, "new_password": NEW_PASSWORD})
    assert_problem(sms_only, 403, "step-up-required")
    wrong = client.post(
        url,
        json={"sms_code": sms, "new_password": NEW_PASSWORD, "factor": "totp", "code": "000000"},
    )
    assert_problem(wrong, 403, "step-up-failed")
    done = client.post(
        url,
        json={
            "sms_code": sms,
            "new_password": NEW_PASSWORD,
            "factor": "totp",
            "code": totp.code(),
        },
    )
    assert done.status_code == 200, done.text
    assert done.json()["sessions_ended"] == 1
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 401
    assert login(client, DEFAULT_PHONE, NEW_PASSWORD, device_token=holder.device_token).status_code
    assert audit_data(audit_events(container, "security.credential_changed")[-1])["via"] == "reset"


def test_password_reset_with_sms_alone_when_nothing_else_is_enrolled(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    reset_id, sms = _reset(client, container)
    url = f"/api/v1/password-reset/{reset_id}/complete"
    wrong = client.post(url, json={"sms_code": "000000", "new_password": NEW_PASSWORD})
    assert_problem(wrong, 400, "reset-refused")
    done = client.post(url, json={"sms_code": sms, "new_password": NEW_PASSWORD})
    assert done.status_code == 200, done.text
    # Spent.
    again = client.post(url, json={"sms_code": sms, "new_password": "Another-Heron-8842"})
    assert_problem(again, 400, "reset-refused")


def test_password_reset_answers_alike_for_unknown_numbers(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    known = client.post("/api/v1/password-reset", json={"phone": DEFAULT_PHONE})
    unknown = client.post("/api/v1/password-reset", json={"phone": "+8613999999999"})
    assert known.status_code == unknown.status_code == 202
    assert set(known.json()) == set(unknown.json())
    assert known.json()["message"] == unknown.json()["message"]
    verify = client.post(
        f"/api/v1/password-reset/{unknown.json()['reset_id']}/verify", json={"sms_code": "123456"}
    )
    assert_problem(verify, 400, "reset-refused")


# -- forgotten payment password --------------------------------------------------------------


def _set_pin(client: TestClient, auth: dict[str, str]) -> None:
    body = {"login_password": STRONG_PASSWORD, "payment_password": PIN}
    assert client.put("/api/v1/me/payment-password", json=body, headers=auth).status_code == 204


def _reset_pin(client: TestClient, auth: dict[str, str], pin: str = "593017") -> Any:
    return client.post(
        "/api/v1/me/payment-password/reset", json={"payment_password": pin}, headers=auth
    )


def test_payment_password_reset_from_the_trusted_phone_with_an_sms_code(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    _set_pin(client, holder.auth)
    assert_problem(_reset_pin(client, holder.auth), 403, "step-up-required")
    step_up(client, container, holder.auth, DEFAULT_PHONE, "reset_payment_password")
    assert _reset_pin(client, holder.auth).status_code == 204
    verified = client.post(
        "/api/v1/me/payment-password/verify",
        json={"payment_password": "593017"},
        headers=holder.auth,
    )
    assert verified.status_code == 204
    changed = audit_events(container, "security.credential_changed")
    assert audit_data(changed[-1]) | {"not_me_url": ""} == {
        "credential": "payment_password",
        "via": "reset",
        "not_me_url": "",
    }


def test_with_a_strong_factor_enrolled_the_trusted_phone_and_sms_are_not_enough(
    client: TestClient, container: Container
) -> None:
    """A phone stolen unlocked is a trusted device that also receives the SMS code."""
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    _set_pin(client, holder.auth)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "reset_payment_password")
    refused = _reset_pin(client, holder.auth)
    assert_problem(refused, 403, "step-up-required")
    assert "totp" in refused.json()["factors"]
    strong = client.post(
        "/api/v1/step-up",
        json={"action": "reset_payment_password", "factor": "totp", "code": totp.code()},
        headers=holder.auth,
    )
    assert strong.status_code == 201, strong.text
    assert _reset_pin(client, holder.auth).status_code == 204


def test_payment_password_reset_is_refused_while_cooling_off(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    _set_pin(client, holder.auth)
    tablet = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="tablet").json()
    auth = {"authorization": f"Bearer {tablet['session_token']}"}
    client.post(
        "/api/v1/step-up",
        json={"action": "add_device", "factor": "totp", "code": totp.code()},
        headers=auth,
    )
    assert_problem(_reset_pin(client, auth), 403, "device-cooling-off")


# -- the bound phone number ------------------------------------------------------------------

NEW_NUMBER = "+8613900001111"


def test_changing_the_phone_number_is_delayed_announced_on_the_old_number_and_completes(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    other = login_trusted(client, container, holder)
    request = client.post(
        "/api/v1/me/phone-change", json={"new_phone": NEW_NUMBER}, headers=holder.auth
    )
    assert_problem(request, 403, "step-up-required")
    step_up(client, container, holder.auth, DEFAULT_PHONE, "change_phone")
    request = client.post(
        "/api/v1/me/phone-change", json={"new_phone": NEW_NUMBER}, headers=holder.auth
    )
    assert request.status_code == 202, request.text
    change_id = request.json()["id"]
    assert request.json()["new_phone_masked"] == "+86 139****1111"
    confirm_url = f"/api/v1/me/phone-change/{change_id}/confirm"
    wrong = client.post(confirm_url, json={"code": "000000"}, headers=holder.auth)
    assert_problem(wrong, 403, "step-up-failed")
    confirmed = client.post(
        confirm_url, json={"code": latest_code(container, NEW_NUMBER)}, headers=holder.auth
    )
    assert confirmed.status_code == 200, confirmed.text
    with container.sessions() as db:
        notice = PhoneInbox(db, container.cipher, container.clock).messages(DEFAULT_PHONE)[0]
    assert notice.purpose == "phone_change_notice" and "139****1111" in notice.body
    assert audit_events(container, "security.phone_change_requested")
    complete_url = f"/api/v1/me/phone-change/{change_id}/complete"
    clock.advance(timedelta(hours=23, minutes=59))
    assert_problem(client.post(complete_url, headers=holder.auth), 409, "phone-change-not-ready")
    clock.advance(timedelta(minutes=1))
    done = client.post(complete_url, headers=holder.auth)
    assert done.status_code == 200, done.text
    assert done.json()["sessions_ended"] == 1
    assert client.get("/api/v1/me", headers=other["auth"]).status_code == 401
    me = client.get("/api/v1/me", headers=holder.auth).json()
    assert me["phone_masked"] == "+86 139****1111"
    assert login(client, NEW_NUMBER, STRONG_PASSWORD).status_code == 201


def test_a_phone_change_can_be_cancelled_from_another_device(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    other = login_trusted(client, container, holder)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "change_phone")
    change = client.post(
        "/api/v1/me/phone-change", json={"new_phone": NEW_NUMBER}, headers=holder.auth
    ).json()
    client.post(
        f"/api/v1/me/phone-change/{change['id']}/confirm",
        json={"code": latest_code(container, NEW_NUMBER)},
        headers=holder.auth,
    )
    pending = client.get("/api/v1/me/phone-change", headers=other["auth"]).json()
    assert [p["id"] for p in pending] == [change["id"]]
    cancel = client.post(f"/api/v1/me/phone-change/{change['id']}/cancel", headers=other["auth"])
    assert cancel.status_code == 204
    clock.advance(timedelta(hours=25))
    assert_problem(
        client.post(f"/api/v1/me/phone-change/{change['id']}/complete", headers=holder.auth),
        404,
        "not-found",
    )
