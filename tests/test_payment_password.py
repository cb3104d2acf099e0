"""The 6-digit payment password: weak ones refused; 5 wrong tries lock payments, longer each."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, update

from tests.conftest import STRONG_PASSWORD, Holder, assert_problem, make_settings, register
from walletguard.bootstrap import Container, build_container
from walletguard.identity.models import Holder as HolderRow
from walletguard.kit.clock import ManualClock
from walletguard.kit.crypto import PIN_HASH_PREFIX, PinHasher, derive_pin_key
from walletguard.kit.db import unit_of_work

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


def _stored_pin_hash(container: Container, holder: Holder) -> str:
    with container.sessions() as db:
        stored = db.scalar(
            select(HolderRow.payment_pin_hash).where(HolderRow.id == uuid.UUID(holder.holder_id))
        )
    assert stored is not None
    return stored


def test_the_pin_is_stored_as_a_keyed_hash_with_its_own_salt(
    client: TestClient, container: Container
) -> None:
    first = register(client, container)
    second = register(client, container, "+8613912345670", device_id="phone-b")
    assert _set(client, first, GOOD_PIN).status_code == 204
    assert _set(client, second, GOOD_PIN).status_code == 204
    stored = _stored_pin_hash(container, first)
    assert stored.startswith(PIN_HASH_PREFIX)
    assert GOOD_PIN not in stored
    # Same PIN, another holder: another salt, another hash.
    assert _stored_pin_hash(container, second) != stored
    assert container.pin_hasher.verify(stored, GOOD_PIN)
    assert not container.pin_hasher.verify(stored, "480916")
    # A dump of the database is not enough to test a guess: without the server key (the
    # pepper, which is never stored there) the hash matches nothing.
    assert not PinHasher(secrets.token_bytes(32)).verify(stored, GOOD_PIN)


def test_the_pin_key_is_configurable_and_otherwise_derived_from_the_index_key(
    tmp_path: Path, db_url: str
) -> None:
    derived = build_container(make_settings(tmp_path, db_url))
    assert derived.pin_hasher.key == derive_pin_key(derived.cipher.index_key)
    assert derived.pin_hasher.key != derived.cipher.index_key
    derived.close()
    key = secrets.token_bytes(32)
    configured = build_container(
        make_settings(tmp_path, db_url, pin_key=SecretStr(base64.urlsafe_b64encode(key).decode()))
    )
    assert configured.pin_hasher.key == key
    assert "pin_key=SecretStr('**********')" in repr(configured.settings)
    configured.close()


def test_an_argon2id_pin_still_works_and_is_upgraded_on_the_next_right_one(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    assert _set(client, holder, GOOD_PIN).status_code == 204
    # A payment password stored before PINs became keyed hashes.
    legacy = container.hasher.hash(GOOD_PIN)
    with unit_of_work(container.sessions) as db:
        db.execute(
            update(HolderRow)
            .where(HolderRow.id == uuid.UUID(holder.holder_id))
            .values(payment_pin_hash=legacy)
        )
    assert_problem(_verify(client, holder, "000001"), 403, "payment-password-wrong")
    assert _stored_pin_hash(container, holder) == legacy  # a wrong PIN upgrades nothing
    assert _verify(client, holder, GOOD_PIN).status_code == 204  # type: ignore[attr-defined]
    upgraded = _stored_pin_hash(container, holder)
    assert upgraded.startswith(PIN_HASH_PREFIX)
    assert container.pin_hasher.verify(upgraded, GOOD_PIN)
    assert _verify(client, holder, GOOD_PIN).status_code == 204  # type: ignore[attr-defined]
    assert_problem(_verify(client, holder, "000001"), 403, "payment-password-wrong")


def test_a_pin_equal_to_the_login_password_is_refused(
    client: TestClient, container: Container
) -> None:
    """The policy allows no 6-digit login password today, but an older account may have one;
    the check runs against the login password's own (Argon2id) hash."""
    holder = register(client, container)
    with unit_of_work(container.sessions) as db:
        db.execute(
            update(HolderRow)
            .where(HolderRow.id == uuid.UUID(holder.holder_id))
            .values(password_hash=container.hasher.hash(GOOD_PIN))
        )
    problem = assert_problem(_set(client, holder, GOOD_PIN, password=GOOD_PIN), 422, "weak-secret")
    assert {"code": "pin.same_as_login_password", "params": {}} in problem["violations"]
