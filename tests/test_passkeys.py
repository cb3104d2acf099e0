"""Passkeys (WebAuthn) end to end with a software authenticator: registration, assertion, a wrong
origin, a replayed signature counter, a missing user verification, a replayed assertion."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import DEFAULT_PHONE, STRONG_PASSWORD, assert_problem, login, register, step_up
from tests.mfa_support import (
    SoftPasskey,
    audit_data,
    audit_events,
    enrol_passkey,
    passkey_step_up,
)
from walletguard.bootstrap import Container


def test_register_then_step_up_with_the_passkey(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    authenticator = enrol_passkey(client, container, holder)
    factors = client.get("/api/v1/me/factors", headers=holder.auth).json()
    assert [f["kind"] for f in factors] == ["passkey"]
    granted = passkey_step_up(client, holder.auth, authenticator, "change_password")
    assert granted.status_code == 201, granted.text
    assert granted.json()["factor"] == "passkey"
    # Once a passkey is enrolled SMS is no longer good enough.
    options = client.get(
        "/api/v1/step-up/factors", params={"action": "enable_sync"}, headers=holder.auth
    ).json()
    assert options["factors"] == ["passkey"]
    changed = client.post(
        "/api/v1/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": "Granite-Heron-7731"},
        headers=holder.auth,
    )
    assert changed.status_code == 200, changed.text


def test_registration_from_a_wrong_origin_is_refused(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "enrol_factor")
    options = client.post("/api/v1/me/factors/passkeys/options", headers=holder.auth).json()
    credential = SoftPasskey().create_json(options["public_key"], "https://wallet-guard.example")
    refused = client.post(
        "/api/v1/me/factors/passkeys",
        json={"challenge_id": options["challenge_id"], "credential": credential},
        headers=holder.auth,
    )
    assert_problem(refused, 422, "invalid-input")
    assert client.get("/api/v1/me/factors", headers=holder.auth).json() == []


def test_an_assertion_from_a_wrong_origin_is_refused(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    authenticator = enrol_passkey(client, container, holder)
    phished = passkey_step_up(
        client, holder.auth, authenticator, "change_password", origin="https://wallet-guard.example"
    )
    assert_problem(phished, 403, "step-up-failed")
    assert audit_data(audit_events(container, "step_up.failed")[-1])["reason"] == "bad_assertion"


def test_a_replayed_signature_counter_is_refused_and_announced(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    authenticator = enrol_passkey(client, container, holder)
    assert passkey_step_up(client, holder.auth, authenticator, "enable_sync").status_code == 201
    assert passkey_step_up(client, holder.auth, authenticator, "enable_sync").status_code == 201
    # A cloned key signs with a counter the server has already seen.
    cloned = passkey_step_up(client, holder.auth, authenticator, "enable_sync", counter=2)
    assert_problem(cloned, 403, "step-up-failed")
    assert audit_data(audit_events(container, "step_up.failed")[-1])["reason"] == (
        "counter_not_increased"
    )
    suspected = audit_events(container, "security.passkey_clone_suspected")
    assert len(suspected) == 1 and "not_me_url" in audit_data(suspected[0])
    # The genuine authenticator goes on.
    assert passkey_step_up(client, holder.auth, authenticator, "enable_sync").status_code == 201


def test_the_fingerprint_or_face_must_have_been_checked(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    authenticator = enrol_passkey(client, container, holder)
    unverified = passkey_step_up(
        client, holder.auth, authenticator, "change_password", user_verified=False
    )
    assert_problem(unverified, 403, "step-up-failed")


def test_an_assertion_is_bound_to_its_challenge(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    authenticator = enrol_passkey(client, container, holder)
    first = client.post(
        "/api/v1/step-up/challenges",
        json={"action": "change_password", "factor": "passkey"},
        headers=holder.auth,
    ).json()
    second = client.post(
        "/api/v1/step-up/challenges",
        json={"action": "change_password", "factor": "passkey"},
        headers=holder.auth,
    ).json()
    assertion = authenticator.get_json(first["public_key"])
    replayed = client.post(
        "/api/v1/step-up",
        json={
            "action": "change_password",
            "factor": "passkey",
            "challenge_id": second["challenge_id"],
            "assertion": assertion,
        },
        headers=holder.auth,
    )
    assert_problem(replayed, 403, "step-up-failed")


def test_a_passkey_verifies_a_new_device(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    authenticator = enrol_passkey(client, container, holder)
    tablet = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="tablet").json()
    assert tablet["device_trust"] == "new"
    auth = {"authorization": f"Bearer {tablet['session_token']}"}
    verified = passkey_step_up(client, auth, authenticator, "add_device")
    assert verified.status_code == 201, verified.text
    assert verified.json()["grant_id"] is None
    assert verified.json()["device_trust"] == "cooling_off"
    assert client.get("/api/v1/me", headers=auth).status_code == 200
