"""Every endpoint of device trust, factors, step-up, resets and recovery, through a table of
callers: anonymous, another holder, the owner's new (unverified) device, the owner's trusted
phone. Another holder's resource is a 404; a new device may only look at itself and verify."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    Holder,
    assert_problem,
    latest_code,
    login,
    register,
    step_up,
)
from tests.mfa_support import SoftPasskey, audit_data, audit_events, not_me_token
from walletguard.bootstrap import Container

CALLERS = ["anonymous", "another-holder", "new-device", "owner"]
STRANGER_PHONE = "+8613900000000"


def _id_number(region: str, birthday: date, serial: str) -> str:
    body = f"{region}{birthday:%Y%m%d}{serial}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


ID_NUMBER = _id_number("110105", date(1985, 3, 12), "123")


@dataclass
class World:
    client: TestClient
    container: Container
    owner: Holder
    stranger: Holder
    new_device: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def new_auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.new_device['session_token']}"}

    def step_up(self, holder: Holder, action: str) -> None:
        step_up(self.client, self.container, holder.auth, holder.phone, action)


def _world(client: TestClient, container: Container) -> World:
    owner = register(client, container, id_number=ID_NUMBER)
    stranger = register(client, container, STRANGER_PHONE, name="李娜", device_id="x")
    new_device = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="unverified").json()
    return World(client, container, owner, stranger, new_device)


# -- resources of the owner that a path names ------------------------------------------------


def _pending_totp(w: World) -> str:
    w.step_up(w.owner, "enrol_factor")
    started = w.client.post("/api/v1/me/factors/totp", json={"label": "a"}, headers=w.owner.auth)
    w.extra["totp_secret"] = started.json()["secret"]
    return str(started.json()["factor_id"])


def _confirmed_totp(w: World) -> str:
    factor_id = _pending_totp(w)
    app = pyotp.TOTP(w.extra["totp_secret"])
    clock = w.container.clock
    w.client.post(
        f"/api/v1/me/factors/totp/{factor_id}/confirm",
        json={"code": app.at(clock.now())},
        headers=w.owner.auth,
    )
    clock.advance(timedelta(seconds=30))  # type: ignore[attr-defined]
    w.client.post(
        "/api/v1/step-up",
        json={"action": "remove_factor", "factor": "totp", "code": app.at(clock.now())},
        headers=w.owner.auth,
    )
    # Enrolling ended every other session (ASVS 7.4.3): sign the new device in again.
    w.new_device = login(
        w.client,
        DEFAULT_PHONE,
        STRONG_PASSWORD,
        device_token=w.new_device["device_token"],
    ).json() | {"device_token": w.new_device["device_token"]}
    return factor_id


def _passkey_challenge(w: World) -> str:
    w.step_up(w.owner, "enrol_factor")
    options = w.client.post("/api/v1/me/factors/passkeys/options", headers=w.owner.auth).json()
    w.extra["passkey_options"] = options["public_key"]
    return str(options["challenge_id"])


def _phone_change(w: World, *, confirm: bool = False) -> str:
    w.step_up(w.owner, "change_phone")
    change = w.client.post(
        "/api/v1/me/phone-change", json={"new_phone": "+8613700002222"}, headers=w.owner.auth
    ).json()
    if confirm:
        w.client.post(
            f"/api/v1/me/phone-change/{change['id']}/confirm",
            json={"code": latest_code(w.container, "+8613700002222")},
            headers=w.owner.auth,
        )
    return str(change["id"])


def _recovery(w: World) -> dict[str, Any]:
    started: dict[str, Any] = w.client.post(
        "/api/v1/recovery",
        json={
            "phone": DEFAULT_PHONE,
            "name": "张伟",
            "id_number": ID_NUMBER,
            "device": {"id": "r", "label": "r"},
        },
    ).json()
    return started


def _cancel_token(w: World) -> str:
    _recovery(w)
    announced = audit_events(w.container, "security.recovery_started")[-1]
    return str(audit_data(announced)["cancel_url"]).rsplit("/", 1)[-1]


def _password_reset(w: World) -> str:
    started = w.client.post("/api/v1/password-reset", json={"phone": DEFAULT_PHONE}).json()
    w.extra["reset_code"] = latest_code(w.container, DEFAULT_PHONE)
    return str(started["reset_id"])


# -- the table -------------------------------------------------------------------------------

Path = Callable[[World], str]
Body = Callable[[World, Holder], Any] | None
Prepare = Callable[[World, Holder], None] | None


@dataclass
class Endpoint:
    name: str
    method: str
    path: Path
    owner: int
    body: Body = None
    prepare: Prepare = None
    # What a new device gets: 403 device-not-verified unless said otherwise.
    new_device: int = 403
    # Another holder on a path naming the owner's resource: 404.
    another: int | None = None
    anonymous: int = 401
    # State the request needs, made before it whoever calls.
    setup: Callable[[World], None] | None = None


def _fixed(path: str) -> Path:
    return lambda _w: path


def _needs(action: str) -> Prepare:
    return lambda w, acting: w.step_up(acting, action)


ENDPOINTS = [
    Endpoint(
        "factors for an action",
        "GET",
        _fixed("/api/v1/step-up/factors?action=change_password"),
        200,
        new_device=200,
        another=200,
    ),
    Endpoint(
        "start a step-up",
        "POST",
        _fixed("/api/v1/step-up/challenges"),
        201,
        body=lambda _w, _h: {"action": "change_password", "factor": "sms"},
        another=201,
    ),
    Endpoint(
        "pass a step-up",
        "POST",
        _fixed("/api/v1/step-up"),
        201,
        body=lambda w, _h: {
            "action": "change_password",
            "factor": "sms",
            "challenge_id": w.extra["challenge_id"],
            "code": w.extra["challenge_code"],
        },
        setup=lambda w: w.extra.update(
            challenge_id=w.client.post(
                "/api/v1/step-up/challenges",
                json={"action": "change_password", "factor": "sms"},
                headers=w.owner.auth,
            ).json()["challenge_id"],
            challenge_code=latest_code(w.container, DEFAULT_PHONE),
        ),
        # Another holder cannot spend the owner's challenge: it is not theirs.
        another=403,
    ),
    Endpoint(
        "this device", "GET", _fixed("/api/v1/devices/current"), 200, new_device=200, another=200
    ),
    Endpoint(
        "ask for approval",
        "POST",
        _fixed("/api/v1/devices/current/approval-request"),
        409,  # the owner's phone is trusted already
        new_device=202,
        another=409,
    ),
    Endpoint(
        "approve a device",
        "POST",
        lambda w: f"/api/v1/devices/{w.new_device['device_id']}/approve",
        200,
        prepare=_needs("add_device"),
        another=404,
    ),
    Endpoint("my factors", "GET", _fixed("/api/v1/me/factors"), 200, another=200),
    Endpoint(
        "enrol an app",
        "POST",
        _fixed("/api/v1/me/factors/totp"),
        201,
        body=lambda _w, _h: {"label": "app"},
        prepare=_needs("enrol_factor"),
        another=201,
    ),
    Endpoint(
        "confirm an app",
        "POST",
        lambda w: f"/api/v1/me/factors/totp/{_pending_totp(w)}/confirm",
        200,
        body=lambda w, _h: {"code": pyotp.TOTP(w.extra["totp_secret"]).at(w.container.clock.now())},
        another=404,
    ),
    Endpoint(
        "passkey options",
        "POST",
        _fixed("/api/v1/me/factors/passkeys/options"),
        201,
        prepare=_needs("enrol_factor"),
        another=201,
    ),
    Endpoint(
        "register a passkey",
        "POST",
        _fixed("/api/v1/me/factors/passkeys"),
        201,
        setup=lambda w: w.extra.update(passkey_challenge=_passkey_challenge(w)),
        body=lambda w, _h: {
            "challenge_id": w.extra["passkey_challenge"],
            "credential": SoftPasskey().create_json(w.extra["passkey_options"]),
        },
        another=404,
    ),
    Endpoint(
        "new recovery codes",
        "POST",
        _fixed("/api/v1/me/factors/recovery-codes"),
        201,
        prepare=_needs("enrol_factor"),
        another=201,
    ),
    Endpoint(
        "remove a factor",
        "DELETE",
        lambda w: f"/api/v1/me/factors/{_confirmed_totp(w)}",
        200,
        another=404,
    ),
    Endpoint(
        "reset the payment password",
        "POST",
        _fixed("/api/v1/me/payment-password/reset"),
        204,
        body=lambda _w, _h: {"payment_password": "593017"},
        prepare=_needs("reset_payment_password"),
        another=204,
    ),
    Endpoint("pending phone change", "GET", _fixed("/api/v1/me/phone-change"), 200, another=200),
    Endpoint(
        "request a phone change",
        "POST",
        _fixed("/api/v1/me/phone-change"),
        202,
        body=lambda _w, _h: {"new_phone": "+8613700003333"},
        prepare=_needs("change_phone"),
        another=202,
    ),
    Endpoint(
        "confirm a phone change",
        "POST",
        lambda w: f"/api/v1/me/phone-change/{_phone_change(w)}/confirm",
        200,
        body=lambda w, _h: {"code": latest_code(w.container, "+8613700002222")},
        another=404,
    ),
    Endpoint(
        "complete a phone change",
        "POST",
        lambda w: f"/api/v1/me/phone-change/{_phone_change(w, confirm=True)}/complete",
        409,  # not before the delay
        another=404,
    ),
    Endpoint(
        "cancel a phone change",
        "POST",
        lambda w: f"/api/v1/me/phone-change/{_phone_change(w, confirm=True)}/cancel",
        204,
        another=404,
    ),
    Endpoint("recoveries under way", "GET", _fixed("/api/v1/recovery"), 200, another=200),
    Endpoint(
        "cancel a recovery",
        "POST",
        lambda w: f"/api/v1/recovery/{_recovery(w)['recovery_id']}/cancel",
        204,
        another=404,
    ),
]

# Endpoints that need no login: every caller gets the same answer.
ANONYMOUS_ENDPOINTS = [
    Endpoint(
        "start a password reset",
        "POST",
        _fixed("/api/v1/password-reset"),
        202,
        body=lambda _w, _h: {"phone": DEFAULT_PHONE},
    ),
    Endpoint(
        "verify a password reset",
        "POST",
        lambda w: f"/api/v1/password-reset/{_password_reset(w)}/verify",
        200,
        body=lambda w, _h: {"sms_code": w.extra["reset_code"]},
    ),
    Endpoint(
        "complete a password reset",
        "POST",
        lambda w: f"/api/v1/password-reset/{_password_reset(w)}/complete",
        200,
        body=lambda w, _h: {"sms_code": w.extra["reset_code"], "new_password": "Granite-Heron-77"},
    ),
    Endpoint(
        "start a recovery",
        "POST",
        _fixed("/api/v1/recovery"),
        202,
        body=lambda _w, _h: {
            "phone": DEFAULT_PHONE,
            "name": "张伟",
            "id_number": ID_NUMBER,
            "device": {"id": "r", "label": "r"},
        },
    ),
    Endpoint(
        "complete a recovery",
        "POST",
        lambda w: f"/api/v1/recovery/{w.extra['recovery']['recovery_id']}/complete",
        409,  # not before the delay
        setup=lambda w: w.extra.update(recovery=_recovery(w)),
        body=lambda w, _h: {
            "recovery_token": w.extra["recovery"]["recovery_token"],
            "new_password": "Granite-Heron-77",
            "device": {"id": "r", "label": "r"},
        },
    ),
    Endpoint(
        "cancel a recovery by link",
        "POST",
        lambda w: f"/api/v1/recovery/cancel/{w.extra['cancel_token']}",
        204,
        setup=lambda w: w.extra.update(cancel_token=_cancel_token(w)),
    ),
    Endpoint(
        "what a not-me link is about",
        "GET",
        lambda w: f"/api/v1/not-me/{not_me_token(w.container, 'security.device_added')}",
        200,
    ),
    Endpoint(
        "this was not me",
        "POST",
        lambda w: f"/api/v1/not-me/{not_me_token(w.container, 'security.device_added')}",
        200,
    ),
]


def _headers(w: World, caller: str) -> tuple[dict[str, str], Holder]:
    if caller == "another-holder":
        return w.stranger.auth, w.stranger
    if caller == "new-device":
        return w.new_auth, w.owner
    if caller == "owner":
        return w.owner.auth, w.owner
    return {}, w.owner


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
@pytest.mark.parametrize("caller", CALLERS)
def test_signed_in_endpoints_by_every_caller(
    client: TestClient, container: Container, endpoint: Endpoint, caller: str
) -> None:
    w = _world(client, container)
    if endpoint.setup:
        endpoint.setup(w)
    path = endpoint.path(w)
    headers, acting = _headers(w, caller)
    if endpoint.prepare and caller in {"owner", "another-holder"}:
        endpoint.prepare(w, acting)
    body = endpoint.body(w, acting) if endpoint.body else None
    response = client.request(endpoint.method, path, json=body, headers=headers)
    if caller == "anonymous":
        assert_problem(response, endpoint.anonymous, "not-authenticated")
    elif caller == "new-device":
        if endpoint.new_device == 403:
            assert_problem(response, 403, "device-not-verified")
        else:
            assert response.status_code == endpoint.new_device, response.text
    elif caller == "another-holder":
        expected = endpoint.another if endpoint.another is not None else 404
        assert response.status_code == expected, response.text
        if expected == 404:
            assert_problem(response, 404, "not-found")
    else:
        assert response.status_code == endpoint.owner, response.text


@pytest.mark.parametrize("endpoint", ANONYMOUS_ENDPOINTS, ids=[e.name for e in ANONYMOUS_ENDPOINTS])
@pytest.mark.parametrize("caller", CALLERS)
def test_login_free_endpoints_answer_every_caller_alike(
    client: TestClient, container: Container, endpoint: Endpoint, caller: str
) -> None:
    w = _world(client, container)
    if endpoint.setup:
        endpoint.setup(w)
    path = endpoint.path(w)
    headers, acting = _headers(w, caller)
    body = endpoint.body(w, acting) if endpoint.body else None
    response = client.request(endpoint.method, path, json=body, headers=headers)
    assert response.status_code == endpoint.owner, response.text
