"""Step-up: every sensitive action needs a fresh factor; grants are single-use, bound, short-lived;
TOTP is replay-protected; recovery codes work once; SMS is a restricted factor."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    Holder,
    assert_problem,
    latest_code,
    login,
    login_trusted,
    register,
    step_up,
)
from tests.mfa_support import Totp, audit_data, audit_events, enrol_totp
from walletguard.bootstrap import Container
from walletguard.identity.guards import SensitiveAction, StepUpRequired, require_step_up
from walletguard.identity.service import Principal
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.messages.service import PhoneInbox

NEW_PASSWORD = "Granite-Heron-7731"
PIN = "480915"


def principal_of(holder: Holder) -> Principal:
    return Principal(
        holder_id=uuid.UUID(holder.holder_id),
        session_id=uuid.UUID(holder.session_id),
        device_id=uuid.UUID(holder.device_id),
        device_trust="trusted",
        ip=None,
    )


def _through_guard(action: SensitiveAction) -> Callable[[TestClient, Container, Holder], Any]:
    """Actions whose capability calls the guard (wallet, alerts): asked of the guard itself."""

    def attempt(client: TestClient, container: Container, holder: Holder) -> Any:
        try:
            with unit_of_work(container.sessions) as db:
                require_step_up(db, container, principal_of(holder), action)
        except StepUpRequired as exc:
            return exc
        return None

    return attempt


def _set_pin_then_change(client: TestClient, container: Container, holder: Holder) -> Any:
    body = {"login_password": holder.password, "payment_password": PIN}
    assert (
        client.put("/api/v1/me/payment-password", json=body, headers=holder.auth).status_code == 204
    )
    body["payment_password"] = "593017"
    return client.put("/api/v1/me/payment-password", json=body, headers=holder.auth)


def _remove_totp(client: TestClient, container: Container, holder: Holder) -> Any:
    totp = enrol_totp(client, container, holder)
    return client.delete(f"/api/v1/me/factors/{totp.factor_id}", headers=holder.auth)


def _approve_a_device(client: TestClient, container: Container, holder: Holder) -> Any:
    tablet = login(client, holder.phone, holder.password, device_id="tablet").json()
    return client.post(f"/api/v1/devices/{tablet['device_id']}/approve", headers=holder.auth)


ACTIONS: dict[SensitiveAction, Callable[[TestClient, Container, Holder], Any]] = {
    SensitiveAction.ADD_DEVICE: _approve_a_device,
    SensitiveAction.ENABLE_SYNC: lambda c, _, h: c.post("/api/v1/messages/sync", headers=h.auth),
    SensitiveAction.BIND_CARD: _through_guard(SensitiveAction.BIND_CARD),
    SensitiveAction.RAISE_LIMIT: _through_guard(SensitiveAction.RAISE_LIMIT),
    SensitiveAction.REOPEN_PAYMENTS: _through_guard(SensitiveAction.REOPEN_PAYMENTS),
    SensitiveAction.CHANGE_PASSWORD: lambda c, _, h: c.post(
        "/api/v1/me/password",
        json={"current_password": h.password, "new_password": NEW_PASSWORD},
        headers=h.auth,
    ),
    SensitiveAction.CHANGE_PAYMENT_PASSWORD: _set_pin_then_change,
    SensitiveAction.RESET_PAYMENT_PASSWORD: lambda c, _, h: c.post(
        "/api/v1/me/payment-password/reset", json={"payment_password": PIN}, headers=h.auth
    ),
    SensitiveAction.CHANGE_PHONE: lambda c, _, h: c.post(
        "/api/v1/me/phone-change", json={"new_phone": "+8613900001111"}, headers=h.auth
    ),
    SensitiveAction.DISABLE_ALERT_CHANNEL: _through_guard(SensitiveAction.DISABLE_ALERT_CHANNEL),
    SensitiveAction.ENROL_FACTOR: lambda c, _, h: c.post(
        "/api/v1/me/factors/totp", json={"label": "app"}, headers=h.auth
    ),
    SensitiveAction.REMOVE_FACTOR: _remove_totp,
    # Asked by the risk engine when it challenges a movement (walletguard.risk).
    SensitiveAction.RISKY_PAYMENT: _through_guard(SensitiveAction.RISKY_PAYMENT),
}


def test_the_table_covers_every_sensitive_action() -> None:
    assert set(ACTIONS) == set(SensitiveAction)


@pytest.mark.parametrize("action", list(SensitiveAction))
def test_every_sensitive_action_without_step_up_is_refused_naming_the_factors(
    client: TestClient, container: Container, action: SensitiveAction
) -> None:
    holder = register(client, container)
    outcome = ACTIONS[action](client, container, holder)
    if isinstance(outcome, StepUpRequired):
        problem = outcome.to_problem("en")
        assert outcome.problem_type.endswith(":step-up-required")
    else:
        problem = assert_problem(outcome, 403, "step-up-required")
    assert problem["action"] == action.value
    # What is missing, by name: here the holder has only the phone, so SMS (or, after enrolling
    # an app for the removal case, the app — SMS is no longer good enough then).
    expected = ["totp"] if action == SensitiveAction.REMOVE_FACTOR else ["sms"]
    if action == SensitiveAction.RISKY_PAYMENT:
        # Never SMS: with only a phone the risk engine holds the movement for a trusted device.
        expected = []
    assert problem["factors"] == expected


def test_sms_is_not_offered_once_a_stronger_factor_is_enrolled(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    enrol_totp(client, container, holder)
    refused = client.post(
        "/api/v1/step-up/challenges",
        json={"action": "change_password", "factor": "sms"},
        headers=holder.auth,
    )
    problem = assert_problem(refused, 403, "factor-not-allowed")
    assert problem["factors"] == ["totp"]
    options = client.get(
        "/api/v1/step-up/factors", params={"action": "change_password"}, headers=holder.auth
    ).json()
    assert options["factors"] == ["totp"]


def test_the_sms_code_names_the_action_and_works_only_for_it(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    started = client.post(
        "/api/v1/step-up/challenges",
        json={"action": "enable_sync", "factor": "sms"},
        headers=holder.auth,
    )
    assert started.status_code == 201, started.text
    with container.sessions() as db:
        sms = PhoneInbox(db, container.cipher, container.clock).messages(DEFAULT_PHONE)[0]
    assert "用于【开启短信云同步】" in sms.body
    code = latest_code(container, DEFAULT_PHONE)
    # The same code offered for another action is a wrong code.
    wrong_action = client.post(
        "/api/v1/step-up",
        json={
            "action": "change_password",
            "factor": "sms",
            "challenge_id": started.json()["challenge_id"],
            "code": code,
        },
        headers=holder.auth,
    )
    assert_problem(wrong_action, 403, "step-up-failed")
    right = client.post(
        "/api/v1/step-up",
        json={
            "action": "enable_sync",
            "factor": "sms",
            "challenge_id": started.json()["challenge_id"],
            "code": code,
        },
        headers=holder.auth,
    )
    assert right.status_code == 201, right.text
    # An SMS code is single-use too.
    again = client.post(
        "/api/v1/step-up",
        json={
            "action": "enable_sync",
            "factor": "sms",
            "challenge_id": started.json()["challenge_id"],
            "code": code,
        },
        headers=holder.auth,
    )
    assert_problem(again, 403, "step-up-failed")


def _change_password(client: TestClient, auth: dict[str, str], current: str, new: str) -> Any:
    return client.post(
        "/api/v1/me/password",
        json={"current_password": current, "new_password": new},
        headers=auth,
    )


def test_a_grant_is_single_use_bound_to_action_and_session_and_short_lived(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    other = login_trusted(client, container, holder)
    granted = step_up(client, container, holder.auth, DEFAULT_PHONE, "change_password")
    assert granted["grant_id"] and granted["action"] == "change_password"
    # Bound to the action: it does not enrol a factor.
    assert_problem(
        client.post("/api/v1/me/factors/totp", json={"label": "x"}, headers=holder.auth),
        403,
        "step-up-required",
    )
    # Bound to the session: the other device cannot spend it.
    assert_problem(
        _change_password(client, other["auth"], STRONG_PASSWORD, NEW_PASSWORD),
        403,
        "step-up-required",
    )
    # Fresh: five minutes, then gone.
    clock.advance(timedelta(minutes=5, seconds=1))
    assert_problem(
        _change_password(client, holder.auth, STRONG_PASSWORD, NEW_PASSWORD),
        403,
        "step-up-required",
    )
    step_up(client, container, holder.auth, DEFAULT_PHONE, "change_password")
    assert _change_password(client, holder.auth, STRONG_PASSWORD, NEW_PASSWORD).status_code == 200
    # Single use.
    assert_problem(
        _change_password(client, holder.auth, NEW_PASSWORD, STRONG_PASSWORD + "!"),
        403,
        "step-up-required",
    )


def test_a_refused_action_keeps_its_grant(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "change_password")
    weak = _change_password(client, holder.auth, STRONG_PASSWORD, "password1")
    assert_problem(weak, 422, "weak-secret")
    assert _change_password(client, holder.auth, STRONG_PASSWORD, NEW_PASSWORD).status_code == 200


# -- TOTP ------------------------------------------------------------------------------------


def _totp_step_up(client: TestClient, holder: Holder, code: str) -> Any:
    return client.post(
        "/api/v1/step-up",
        json={"action": "change_password", "factor": "totp", "code": code},
        headers=holder.auth,
    )


def test_totp_replay_is_refused(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    code = totp.code()
    assert _totp_step_up(client, holder, code).status_code == 201
    replay = assert_problem(_totp_step_up(client, holder, code), 403, "step-up-failed")
    assert replay["factor"] == "totp"
    assert [audit_data(e)["reason"] for e in audit_events(container, "step_up.failed")] == [
        "replayed_code"
    ]


def test_totp_accepts_one_step_either_side_and_never_goes_back(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    step = timedelta(seconds=30)
    # Two steps past the one spent on confirming the app: at - step is unused.
    at = clock.advance(step)
    assert _totp_step_up(client, holder, totp.app.at(at - 2 * step)).status_code == 403
    assert _totp_step_up(client, holder, totp.app.at(at - step)).status_code == 201
    assert _totp_step_up(client, holder, totp.app.at(at + step)).status_code == 201
    # Once a later step was used, an earlier (still in-window) code is refused.
    assert _totp_step_up(client, holder, totp.app.at(at)).status_code == 403
    assert _totp_step_up(client, holder, totp.app.at(at + 2 * step)).status_code == 403


def test_totp_secret_is_encrypted_at_rest(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    totp: Totp = enrol_totp(client, container, holder)
    with container.engine.connect() as conn:
        dump = " ".join(str(r) for r in conn.execute(text("SELECT * FROM totp_factors")))
    assert totp.app.secret not in dump
    assert "v1." in dump


def test_enrolling_twice_is_a_conflict_and_confirming_needs_the_right_code(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "enrol_factor")
    started = client.post("/api/v1/me/factors/totp", json={"label": "app"}, headers=holder.auth)
    factor_id = started.json()["factor_id"]
    confirm_url = f"/api/v1/me/factors/totp/{factor_id}/confirm"
    wrong = client.post(confirm_url, json={"code": "000000"}, headers=holder.auth)
    assert_problem(wrong, 403, "step-up-failed")
    # A pending app is not a factor yet.
    assert client.get("/api/v1/me/factors", headers=holder.auth).json() == []
    totp = pyotp.TOTP(started.json()["secret"])
    assert (
        client.post(
            confirm_url, json={"code": totp.at(clock.now())}, headers=holder.auth
        ).status_code
        == 200
    )
    clock.advance(timedelta(seconds=30))
    step_up(
        client,
        container,
        holder.auth,
        DEFAULT_PHONE,
        "enrol_factor",
        "totp",
        code=totp.at(clock.now()),
    )
    again = client.post("/api/v1/me/factors/totp", json={"label": "app"}, headers=holder.auth)
    assert_problem(again, 409, "conflict")
    assert [f["kind"] for f in client.get("/api/v1/me/factors", headers=holder.auth).json()] == [
        "totp"
    ]


# -- recovery codes --------------------------------------------------------------------------


def test_ten_recovery_codes_each_work_once_and_are_stored_hashed(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "enrol_factor")
    issued = client.post("/api/v1/me/factors/recovery-codes", headers=holder.auth)
    assert issued.status_code == 201, issued.text
    codes = issued.json()["codes"]
    assert len(codes) == len(set(codes)) == 10
    with container.engine.connect() as conn:
        dump = " ".join(str(r) for r in conn.execute(text("SELECT * FROM recovery_codes")))
    for code in codes:
        assert code not in dump and code.replace("-", "") not in dump

    def use(code: str) -> Any:
        return client.post(
            "/api/v1/step-up",
            json={"action": "change_password", "factor": "recovery_code", "code": code},
            headers=holder.auth,
        )

    # Typed loosely (lower case, no dash) it still works, once.
    assert use(codes[0].lower().replace("-", "")).status_code == 201
    assert_problem(use(codes[0]), 403, "step-up-failed")
    listed = client.get("/api/v1/me/factors", headers=holder.auth).json()
    assert listed == [
        {
            "id": None,
            "kind": "recovery_code",
            "label": "",
            "created_at": listed[0]["created_at"],
            "last_used_at": None,
            "remaining": 9,
        }
    ]
    # New codes void the old ones (a step-up with a recovery code itself).
    use_new = client.post(
        "/api/v1/step-up",
        json={"action": "enrol_factor", "factor": "recovery_code", "code": codes[1]},
        headers=holder.auth,
    )
    assert use_new.status_code == 201
    fresh = client.post("/api/v1/me/factors/recovery-codes", headers=holder.auth).json()["codes"]
    assert_problem(use(codes[2]), 403, "step-up-failed")
    assert use(fresh[0]).status_code == 201


# -- factor changes end the other sessions and are announced -------------------------------


def test_factor_enrolment_and_removal_end_other_sessions_and_are_announced(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    other = login_trusted(client, container, holder)
    totp = enrol_totp(client, container, holder)
    assert client.get("/api/v1/me", headers=other["auth"]).status_code == 401
    tablet = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="tablet").json()
    removal = client.post(
        "/api/v1/step-up",
        json={"action": "remove_factor", "factor": "totp", "code": totp.code()},
        headers=holder.auth,
    )
    assert removal.status_code == 201, removal.text
    removed = client.delete(f"/api/v1/me/factors/{totp.factor_id}", headers=holder.auth)
    assert removed.status_code == 200, removed.text
    assert removed.json()["sessions_ended"] == 1
    tablet_auth = {"authorization": f"Bearer {tablet['session_token']}"}
    assert client.get("/api/v1/devices/current", headers=tablet_auth).status_code == 401
    events = [e.event for e in audit_events(container, "security.")]
    assert events.count("security.factor_enrolled") == 1
    assert events.count("security.factor_removed") == 1
    for entry in audit_events(container, "security.factor_"):
        data = audit_data(entry)
        assert data["not_me_url"].startswith("http://127.0.0.1:8000/not-me/")
        assert DEFAULT_PHONE[3:] not in entry.data
