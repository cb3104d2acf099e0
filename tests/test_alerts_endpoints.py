"""The alerts API: in-app alerts (list, mark read) and alert channel settings — on is instant,
off needs a step-up, waits for the delay and is itself alerted on every channel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.alerts_support import alerts_of, deliveries_of, raise_security_alerts
from tests.conftest import Holder, assert_problem, login, register, step_up
from tests.mfa_support import enrol_totp
from tests.wallet_support import PIN, funded_holder, money_post
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock

PHONE = "+8613812345678"
OTHER_PHONE = "+8613912345678"


def _channel(response: Any, name: str) -> dict[str, Any]:
    body = response.json() if hasattr(response, "json") else response
    found: dict[str, Any] = next(c for c in body["channels"] if c["channel"] == name)
    return found


def _pay(client: TestClient, holder: Holder, amount: str = "1.00") -> None:
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "便利店", "amount": amount, "payment_password": PIN},
        holder,
    )
    assert paid.status_code == 201, paid.text


# -- the table of callers ----------------------------------------------------------------------

Call = Callable[[TestClient, dict[str, str], str], Any]

ENDPOINTS: dict[str, Call] = {
    "list alerts": lambda c, h, _: c.get("/api/v1/alerts", headers=h),
    "mark read": lambda c, h, alert_id: c.post(f"/api/v1/alerts/{alert_id}/read", headers=h),
    "get channels": lambda c, h, _: c.get("/api/v1/me/alert-channels", headers=h),
    "switch channels": lambda c, h, _: c.put(
        "/api/v1/me/alert-channels", json={"sms": True}, headers=h
    ),
    "set email": lambda c, h, _: c.put(
        "/api/v1/me/alert-channels/email", json={"address": "me@example.com"}, headers=h
    ),
    "set webhook": lambda c, h, _: c.put(
        "/api/v1/me/alert-channels/webhook",
        json={"url": "https://hooks.example.com/walletguard"},
        headers=h,
    ),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_callers(client: TestClient, container: Container, endpoint: str) -> None:
    owner = register(client, container, PHONE)
    other = register(client, container, OTHER_PHONE, device_id="other-phone")
    raise_security_alerts(container, owner, 1)
    alert_id = str(alerts_of(container, owner)[0].id)
    call = ENDPOINTS[endpoint]
    # Anonymous.
    assert_problem(call(client, {}, alert_id), 401, "not-authenticated")
    # A new, unverified device of the owner.
    fresh = login(client, PHONE, owner.password, device_id="unverified").json()
    new_device = {"authorization": f"Bearer {fresh['session_token']}"}
    assert_problem(call(client, new_device, alert_id), 403, "device-not-verified")
    # Another holder: the owner's alert does not exist for them.
    as_other = call(client, other.auth, alert_id)
    if endpoint == "mark read":
        assert_problem(as_other, 404, "not-found")
    else:
        assert as_other.status_code == 200, as_other.text
        if endpoint == "list alerts":
            assert as_other.json()["items"] == []
    # The owner.
    as_owner = call(client, owner.auth, alert_id)
    assert as_owner.status_code == 200, as_owner.text


# -- in-app ------------------------------------------------------------------------------------


def test_list_page_and_mark_read(client: TestClient, container: Container) -> None:
    holder = register(client, container, PHONE)
    raise_security_alerts(container, holder, 3)
    page = client.get("/api/v1/alerts?limit=2", headers=holder.auth)
    assert page.status_code == 200
    body = page.json()
    assert body["pagination"] == {"total": 3, "page": 1, "limit": 2, "next_page": 2}
    assert body["unread"] == 3
    first = body["items"][0]
    assert first["title"] == "新设备登录"
    assert first["category"] == "security" and first["severity"] == "critical"
    assert {d["channel"]: d["status"] for d in first["deliveries"]} == {
        "in_app": "delivered",
        "sms": "pending",
    }
    english = client.get("/api/v1/alerts", headers={**holder.auth, "accept-language": "en"})
    assert english.json()["items"][0]["title"] == "New device signed in"
    read = client.post(f"/api/v1/alerts/{first['id']}/read", headers=holder.auth)
    assert read.status_code == 200
    assert read.json()["read_at"] is not None
    again = client.post(f"/api/v1/alerts/{first['id']}/read", headers=holder.auth)
    assert again.json()["read_at"] == read.json()["read_at"]
    unread = client.get("/api/v1/alerts?unread_only=true", headers=holder.auth).json()
    assert unread["unread"] == 2 and len(unread["items"]) == 2
    assert_problem(
        client.post(
            "/api/v1/alerts/00000000-0000-0000-0000-000000000000/read", headers=holder.auth
        ),
        404,
        "not-found",
    )


# -- channel settings --------------------------------------------------------------------------


def test_default_channels(client: TestClient, container: Container) -> None:
    holder = register(client, container, PHONE)
    response = client.get("/api/v1/me/alert-channels", headers=holder.auth)
    assert response.status_code == 200
    assert _channel(response, "in_app") | {"target": None} == {
        "channel": "in_app",
        "enabled": True,
        "delivering": True,
        "always_for_security_alerts": True,
        "can_switch_off": False,
        "target": None,
        "pending": None,
    }
    sms = _channel(response, "sms")
    assert sms["enabled"] and sms["always_for_security_alerts"] and sms["can_switch_off"]
    email = _channel(response, "email")
    assert not email["enabled"] and not email["delivering"] and email["target"] is None


def test_switching_off_without_step_up_is_refused_and_changes_nothing(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, PHONE)
    before = len(alerts_of(container, holder))
    refused = client.put("/api/v1/me/alert-channels", json={"sms": False}, headers=holder.auth)
    problem = assert_problem(refused, 403, "step-up-required")
    assert problem["action"] == "disable_alert_channel"
    assert problem["factors"] == ["sms"]
    assert (
        _channel(client.get("/api/v1/me/alert-channels", headers=holder.auth), "sms")["pending"]
        is None
    )
    assert len(alerts_of(container, holder)) == before


def test_switching_off_with_step_up_is_delayed_and_alerted_on_every_channel(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    assert (
        client.put(
            "/api/v1/me/alert-channels/email",
            json={"address": "me@example.com"},
            headers=holder.auth,
        ).status_code
        == 200
    )
    step_up(client, container, holder.auth, PHONE, "disable_alert_channel")
    switched = client.put(
        "/api/v1/me/alert-channels", json={"email": False, "sms": False}, headers=holder.auth
    )
    assert switched.status_code == 200, switched.text
    effective = clock.now() + timedelta(hours=24)
    changes = {c["channel"]: c for c in switched.json()["changes"]}
    assert changes["email"]["outcome"] == "off_pending"
    assert changes["sms"]["outcome"] == "off_pending"
    assert changes["email"]["effective_at"].startswith(effective.isoformat()[:19])
    assert "2026-03-13 17:00" in switched.json()["message"]
    email = _channel(switched, "email")
    assert email["enabled"] and email["delivering"]  # still on until the delay passes
    assert email["pending"]["enabled"] is False
    # The change is alerted, on the channels going off as well.
    offs = [a for a in alerts_of(container, holder) if a.kind == "alerts.channel_off_requested"]
    assert len(offs) == 2
    for alert in offs:
        assert alert.severity == "critical"
        assert set(deliveries_of(container, alert.id)) == {"in_app", "sms", "email"}
    assert any("邮件" in a.body_zh for a in offs) and any("短信" in a.body_zh for a in offs)
    # Until the delay passes, money alerts still go everywhere.
    _pay(client, holder)
    assert set(deliveries_of(container, alerts_of(container, holder)[-1].id)) == {
        "in_app",
        "sms",
        "email",
    }
    clock.advance(timedelta(hours=24))
    now = client.get("/api/v1/me/alert-channels", headers=holder.auth)
    assert not _channel(now, "email")["enabled"] and _channel(now, "email")["pending"] is None
    assert not _channel(now, "sms")["enabled"]
    _pay(client, holder)
    assert set(deliveries_of(container, alerts_of(container, holder)[-1].id)) == {"in_app"}
    # Security alerts cannot be muted: they still go by SMS.
    raise_security_alerts(container, holder, 1)
    assert set(deliveries_of(container, alerts_of(container, holder)[-1].id)) == {"in_app", "sms"}


def test_switching_back_on_is_instant_and_cancels_a_pending_off(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, PHONE)
    step_up(client, container, holder.auth, PHONE, "disable_alert_channel")
    off = client.put("/api/v1/me/alert-channels", json={"sms": False}, headers=holder.auth)
    assert _channel(off, "sms")["pending"]["enabled"] is False
    on = client.put("/api/v1/me/alert-channels", json={"sms": True}, headers=holder.auth)
    assert on.status_code == 200
    assert {c["channel"]: c["outcome"] for c in on.json()["changes"]} == {"sms": "on"}
    assert _channel(on, "sms")["pending"] is None and _channel(on, "sms")["enabled"]
    assert [a.kind for a in alerts_of(container, holder)][-2:] == [
        "alerts.channel_off_requested",
        "alerts.channel_on",
    ]


def test_channels_that_cannot_be_switched(client: TestClient, container: Container) -> None:
    holder = register(client, container, PHONE)
    in_app = client.put("/api/v1/me/alert-channels", json={"in_app": False}, headers=holder.auth)
    assert_problem(in_app, 409, "alert-channel-always-on")
    email = client.put("/api/v1/me/alert-channels", json={"email": True}, headers=holder.auth)
    assert_problem(email, 409, "alert-channel-no-target")
    unknown = client.put("/api/v1/me/alert-channels", json={"pager": True}, headers=holder.auth)
    assert_problem(unknown, 422, "invalid-input")
    bad_email = client.put(
        "/api/v1/me/alert-channels/email", json={"address": "not an address"}, headers=holder.auth
    )
    assert assert_problem(bad_email, 422, "invalid-input")["field"] == "address"
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.0.0.8/x"):
        private = client.put(
            "/api/v1/me/alert-channels/webhook", json={"url": url}, headers=holder.auth
        )
        assert assert_problem(private, 422, "invalid-input")["field"] == "url"
    ftp = client.put(
        "/api/v1/me/alert-channels/webhook",
        json={"url": "ftp://example.com/x"},
        headers=holder.auth,
    )
    assert_problem(ftp, 422, "invalid-input")


def test_a_new_address_for_an_active_channel_is_a_delayed_step_up(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container, PHONE)
    first = client.put(
        "/api/v1/me/alert-channels/email", json={"address": "me@example.com"}, headers=holder.auth
    )
    assert first.status_code == 200
    assert first.json()["changes"][0]["outcome"] == "on"
    moved = client.put(
        "/api/v1/me/alert-channels/email",
        json={"address": "attacker@example.net"},
        headers=holder.auth,
    )
    assert_problem(moved, 403, "step-up-required")
    step_up(client, container, holder.auth, PHONE, "disable_alert_channel")
    moved = client.put(
        "/api/v1/me/alert-channels/email",
        json={"address": "attacker@example.net"},
        headers=holder.auth,
    )
    assert moved.status_code == 200, moved.text
    email = _channel(moved, "email")
    assert email["target"] == "m***@example.com"
    assert email["pending"]["target"] == "a***@example.net"
    notice = alerts_of(container, holder)[-1]
    assert notice.kind == "alerts.channel_moved"
    assert "a***@example.net" in notice.body_zh
    assert set(deliveries_of(container, notice.id)) == {"in_app", "sms", "email"}
    clock.advance(timedelta(hours=24))
    after = client.get("/api/v1/me/alert-channels", headers=holder.auth)
    assert _channel(after, "email")["target"] == "a***@example.net"


def test_a_cooling_off_device_cannot_switch_alerts_off(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, PHONE)
    totp = enrol_totp(client, container, holder)
    tablet = login(client, PHONE, holder.password, device_id="tablet").json()
    auth = {"authorization": f"Bearer {tablet['session_token']}"}
    verified = client.post(
        "/api/v1/step-up",
        json={"action": "add_device", "factor": "totp", "code": totp.code()},
        headers=auth,
    )
    assert verified.status_code == 201, verified.text
    refused = client.put("/api/v1/me/alert-channels", json={"sms": False}, headers=auth)
    assert_problem(refused, 403, "device-cooling-off")
    # Switching on stays possible (it mutes nobody).
    on = client.put("/api/v1/me/alert-channels", json={"sms": True}, headers=auth)
    assert on.status_code == 200
