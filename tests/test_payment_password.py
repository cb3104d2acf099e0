"""The 6-digit payment password: weak ones refused; 5 wrong tries lock payments, longer each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import STRONG_PASSWORD, Holder, assert_problem, register
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock

GOOD_PIN = "480915"


def _set(client: TestClient, holder: Holder, pin: str, password: str = STRONG_PASSWORD) -> object:
    return client.put(
        "/api/v1/me/payment-password",
        json={"login_password": password, "payment_password": pin},
        headers=holder.auth,
    )


def _verify(client: TestClient, holder: Holder, pin: str) -> object:
    return client.post(
        "/api/v1/me/payment-password/verify", json={"payment_password": pin}, headers=holder.auth
    )


@pytest.mark.parametrize(
    "pin",
    ["123456", "111111", "654321", "121212", "850312", "0312", "345678", "12345a", "1234567"],
)
def test_weak_or_malformed_pins_are_refused(
    client: TestClient, container: Container, pin: str
) -> None:
    holder = register(client, container)
    problem = assert_problem(_set(client, holder, pin), 422, "weak-secret")
    assert problem["violations"]
    assert pin not in str(problem["violations"])
    me = client.get("/api/v1/me", headers=holder.auth).json()
    assert me["payment_password_set"] is False


def test_pin_equal_to_the_phone_tail_is_refused(client: TestClient, container: Container) -> None:
    holder = register(client, container, "+8613812930475")
    assert_problem(_set(client, holder, "930475"), 422, "weak-secret")
    assert _set(client, holder, GOOD_PIN).status_code == 204


def test_setting_needs_the_login_password(client: TestClient, container: Container) -> None:
    holder = register(client, container)
    assert_problem(
        _set(client, holder, GOOD_PIN, password="not-my-password"), 401, "invalid-credentials"
    )
    assert _set(client, holder, GOOD_PIN).status_code == 204


def test_five_wrong_tries_lock_payments_for_a_growing_period(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container)
    assert _set(client, holder, GOOD_PIN).status_code == 204
    assert _verify(client, holder, GOOD_PIN).status_code == 204  # type: ignore[attr-defined]
    for remaining in [4, 3, 2, 1, 0]:
        problem = assert_problem(_verify(client, holder, "000001"), 403, "payment-password-wrong")
        assert str(remaining) in problem["detail"]
    first = assert_problem(_verify(client, holder, GOOD_PIN), 423, "payments-locked")
    assert 14 * 60 <= first["retry_after_s"] <= 15 * 60
    clock.advance(timedelta(minutes=15, seconds=1))
    # One more wrong try after the lock: locked again, for twice as long.
    assert_problem(_verify(client, holder, "000001"), 403, "payment-password-wrong")
    second = assert_problem(_verify(client, holder, GOOD_PIN), 423, "payments-locked")
    assert 29 * 60 <= second["retry_after_s"] <= 30 * 60
    clock.advance(timedelta(minutes=30, seconds=1))
    assert _verify(client, holder, GOOD_PIN).status_code == 204  # type: ignore[attr-defined]


def test_verify_without_a_payment_password_says_so(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    assert_problem(_verify(client, holder, GOOD_PIN), 409, "payment-password-not-set")
