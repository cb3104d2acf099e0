"""Login, throttling that cannot be turned against the owner, sessions and devices."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    Holder,
    assert_problem,
    login,
    login_trusted,
    register,
    step_up,
)
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock


def test_login_from_a_new_device_then_the_known_device(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    first = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="tablet")
    assert first.status_code == 201, first.text
    issued = first.json()
    assert issued["new_device"] is True
    assert issued["device_trust"] == "new"
    assert issued["device_token"]
    again = login(
        client, DEFAULT_PHONE, STRONG_PASSWORD, device_token=issued["device_token"]
    ).json()
    assert again["new_device"] is False
    assert again["device_id"] == issued["device_id"]
    assert again["device_token"] is None
    devices = client.get("/api/v1/devices", headers=holder.auth).json()
    assert len(devices) == 2


def test_wrong_password_and_unknown_number_look_the_same(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    wrong = login(client, DEFAULT_PHONE, "Wrong-Password-99")
    unknown = login(client, "+8613999999999", "Wrong-Password-99")
    a = assert_problem(wrong, 401, "invalid-credentials")
    b = assert_problem(unknown, 401, "invalid-credentials")
    a.pop("instance", None)
    b.pop("instance", None)
    assert a == b


def test_failures_from_unknown_devices_slow_down_then_lock(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    register(client, container)
    for _ in range(5):
        assert_problem(login(client, DEFAULT_PHONE, "guess-guess-1"), 401, "invalid-credentials")
    # Five free failures; the fifth arms a delay that even the right password must wait out.
    throttled = login(client, DEFAULT_PHONE, STRONG_PASSWORD)
    problem = assert_problem(throttled, 429, "too-many-attempts")
    assert int(throttled.headers["retry-after"]) == problem["retry_after_s"] > 0
    clock.advance(timedelta(seconds=problem["retry_after_s"]))
    assert login(client, DEFAULT_PHONE, STRONG_PASSWORD).status_code == 201


def test_a_flood_of_guesses_never_locks_the_holder_out_of_their_own_phone(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    for _ in range(8):
        clock.advance(timedelta(hours=1))
        login(client, DEFAULT_PHONE, "attacker-guess-1")
    assert_problem(login(client, DEFAULT_PHONE, STRONG_PASSWORD), 429, "too-many-attempts")
    own = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_token=holder.device_token)
    assert own.status_code == 201, own.text


def test_unknown_devices_stop_after_100_consecutive_failures(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    register(client, container)
    statuses = []
    for _ in range(100):
        clock.advance(timedelta(hours=1, seconds=1))
        statuses.append(login(client, DEFAULT_PHONE, "guess-guess-3").status_code)
    assert statuses.count(401) == 100
    # After the hundredth, a day-long lock, even for the right password.
    clock.advance(timedelta(hours=2))
    assert_problem(login(client, DEFAULT_PHONE, STRONG_PASSWORD), 429, "too-many-attempts")
    clock.advance(timedelta(hours=21))
    assert login(client, DEFAULT_PHONE, STRONG_PASSWORD).status_code == 429
    clock.advance(timedelta(hours=1, seconds=1))
    assert login(client, DEFAULT_PHONE, STRONG_PASSWORD).status_code == 201


def test_one_ip_guessing_many_accounts_is_throttled(
    client: TestClient, container: Container, client_at: Callable[[str], TestClient]
) -> None:
    register(client, container)
    attacker = client_at("198.51.100.7")
    for i in range(50):
        response = login(attacker, f"+86139{i:08d}", "guess-guess-4")
        assert response.status_code == 401, response.text
    assert_problem(login(attacker, DEFAULT_PHONE, STRONG_PASSWORD), 429, "too-many-attempts")
    # Someone else's address is unaffected.
    assert login(client_at("203.0.113.5"), DEFAULT_PHONE, STRONG_PASSWORD).status_code == 201


def test_rehash_on_login_when_argon2_parameters_change(
    client: TestClient, container: Container
) -> None:
    from sqlalchemy import select

    from walletguard.bootstrap import make_password_hasher
    from walletguard.identity.models import Holder as HolderRow

    register(client, container)
    container.settings.argon2_time_cost = 3
    container.hasher = make_password_hasher(container.settings)
    assert login(client, DEFAULT_PHONE, STRONG_PASSWORD).status_code == 201
    with container.sessions() as db:
        stored = db.scalars(select(HolderRow.password_hash)).one()
    assert ",t=3," in stored
    assert login(client, DEFAULT_PHONE, STRONG_PASSWORD).status_code == 201


def test_revoked_session_fails_on_the_next_request(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    other = login_trusted(client, container, holder)
    other_auth = other["auth"]
    assert client.get("/api/v1/me", headers=other_auth).status_code == 200
    listed = client.get("/api/v1/sessions", headers=holder.auth).json()
    assert listed["pagination"]["total"] == 2
    assert (
        client.delete(f"/api/v1/sessions/{other['session_id']}", headers=holder.auth).status_code
        == 204
    )
    assert_problem(client.get("/api/v1/me", headers=other_auth), 401, "not-authenticated")


def test_revoke_others_keeps_only_the_current_session(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    others = [login(client, DEFAULT_PHONE, STRONG_PASSWORD).json() for _ in range(3)]
    response = client.post("/api/v1/sessions/revoke-others", headers=holder.auth)
    assert response.json() == {"revoked": 3}
    for issued in others:
        auth = {"authorization": f"Bearer {issued['session_token']}"}
        assert client.get("/api/v1/me", headers=auth).status_code == 401
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 200


def test_revoking_a_device_ends_its_sessions_and_its_token(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    tablet = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="tablet").json()
    assert (
        client.delete(f"/api/v1/devices/{tablet['device_id']}", headers=holder.auth).status_code
        == 204
    )
    auth = {"authorization": f"Bearer {tablet['session_token']}"}
    assert client.get("/api/v1/me", headers=auth).status_code == 401
    relogin = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_token=tablet["device_token"])
    assert relogin.json()["new_device"] is True
    assert [d["id"] for d in client.get("/api/v1/devices", headers=holder.auth).json()].count(
        tablet["device_id"]
    ) == 0


def test_logout(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    assert client.delete("/api/v1/sessions/current", headers=holder.auth).status_code == 204
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 401


def test_sessions_expire_when_idle(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    clock.advance(timedelta(days=6))
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 200
    clock.advance(timedelta(days=7, seconds=1))
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 401


def test_a_session_in_use_stays_alive_and_its_device_is_seen_at_most_once_a_minute(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)

    def seen_at() -> datetime:
        devices = client.get("/api/v1/devices", headers=holder.auth).json()
        mine = next(d for d in devices if d["id"] == holder.device_id)
        return datetime.fromisoformat(mine["last_seen_at"])

    clock.advance(timedelta(days=6))
    touched = clock.now()
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 200
    assert seen_at() == touched
    clock.advance(timedelta(seconds=30))
    assert seen_at() == touched  # within the minute: not written again
    clock.advance(timedelta(days=6))
    # Idle 6 days since the last use, not 12 since sign-in: the session lives on.
    assert seen_at() == clock.now()
    clock.advance(timedelta(days=7, seconds=1))
    assert client.get("/api/v1/me", headers=holder.auth).status_code == 401


def test_password_change_ends_every_other_session(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    other = login(client, DEFAULT_PHONE, STRONG_PASSWORD).json()
    step_up(client, container, holder.auth, DEFAULT_PHONE, "change_password")
    response = client.post(
        "/api/v1/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": "Granite-Heron-7731"},
        headers=holder.auth,
    )
    assert response.json() == {"revoked": 1}
    auth = {"authorization": f"Bearer {other['session_token']}"}
    assert client.get("/api/v1/me", headers=auth).status_code == 401
    assert login(client, DEFAULT_PHONE, "Granite-Heron-7731").status_code == 201
    assert_problem(login(client, DEFAULT_PHONE, STRONG_PASSWORD), 401, "invalid-credentials")


# -- every endpoint through a table of callers ------------------------------------------------

Caller = str
# (method, path, body, step-up action the acting holder passes first, owner status)
ENDPOINTS: list[tuple[str, str, Callable[[Holder], Any] | None, str | None, int]] = [
    ("GET", "/api/v1/me", None, None, 200),
    ("GET", "/api/v1/sessions", None, None, 200),
    ("GET", "/api/v1/devices", None, None, 200),
    ("GET", "/api/v1/me/security-events", None, None, 200),
    ("POST", "/api/v1/sessions/revoke-others", None, None, 200),
    (
        "POST",
        "/api/v1/me/password",
        lambda h: {"current_password": h.password, "new_password": "Granite-Heron-7731"},
        "change_password",
        200,
    ),
    (
        "PUT",
        "/api/v1/me/payment-password",
        lambda h: {"login_password": h.password, "payment_password": "480915"},
        None,
        204,
    ),
    ("DELETE", "/api/v1/sessions/{session_id}", None, None, 204),
    ("DELETE", "/api/v1/devices/{device_id}", None, None, 204),
    ("DELETE", "/api/v1/sessions/current", None, None, 204),
]


@pytest.mark.parametrize(("method", "path", "body", "action", "owner_status"), ENDPOINTS)
@pytest.mark.parametrize(
    "caller", ["anonymous", "bad-token", "another-holder", "new-device", "owner"]
)
def test_every_endpoint_by_every_caller(
    client: TestClient,
    container: Container,
    method: str,
    path: str,
    body: Callable[[Holder], Any] | None,
    action: str | None,
    owner_status: int,
    caller: Caller,
) -> None:
    owner = register(client, container)
    stranger = register(client, container, "+8613900000000", name="李娜", device_id="x")
    # Paths name the owner's second session and device, so the owner can act on them.
    second = login_trusted(client, container, owner)
    url = path.format(session_id=second["session_id"], device_id=second["device_id"])
    headers: dict[str, str] = {}
    acting = owner
    if caller == "bad-token":
        headers = {"authorization": "Bearer not-a-real-token"}
    elif caller == "another-holder":
        headers = stranger.auth
        acting = stranger
    elif caller == "new-device":
        fresh = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="unknown-phone").json()
        headers = {"authorization": f"Bearer {fresh['session_token']}"}
    elif caller == "owner":
        headers = owner.auth
    if action and caller in {"owner", "another-holder"}:
        step_up(client, container, acting.auth, acting.phone, action)
    response = client.request(method, url, json=body(acting) if body else None, headers=headers)
    if caller in {"anonymous", "bad-token"}:
        assert_problem(response, 401, "not-authenticated")
    elif caller == "new-device" and path != "/api/v1/sessions/current":
        # Knowing the password is not enough: a new device sees only its own status.
        assert_problem(response, 403, "device-not-verified")
    elif caller == "another-holder" and "{" in path:
        # Another holder's session or device does not exist for them: 404, not 403.
        assert_problem(response, 404, "not-found")
        assert client.get("/api/v1/me", headers=second["auth"]).status_code == 200
    else:
        assert response.status_code == owner_status, response.text
