"""Guessing second factors in parallel: the atomic counters never let more guesses through than
the limit, however the requests interleave (the Zitadel GHSA-7h8m-vrxx-vr4m bug: a counter read
before the check and written after it lets a burst of parallel guesses through). Run on both
databases; on PostgreSQL the threads really race."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.conftest import DEFAULT_PHONE, Holder, latest_code, register, step_up
from tests.mfa_support import Totp, enrol_totp, not_me_token
from walletguard.bootstrap import Container
from walletguard.identity.guards import SensitiveAction
from walletguard.identity.mfa import MfaService
from walletguard.identity.recovery import RecoveryService
from walletguard.identity.service import Principal
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import WalletguardError

GUESSERS = 16
LIMIT = 5  # step_up_max_failures


def _principal(holder: Holder) -> Principal:
    return Principal(
        holder_id=uuid.UUID(holder.holder_id),
        session_id=uuid.UUID(holder.session_id),
        device_id=uuid.UUID(holder.device_id),
        device_trust="trusted",
        ip="198.51.100.7",
    )


def _race(container: Container, attempts: list[Callable[[Session], object]]) -> Counter[str]:
    barrier = threading.Barrier(len(attempts))
    outcomes: list[str] = []
    guard = threading.Lock()

    def run(attempt: Callable[[Session], object]) -> None:
        barrier.wait()
        try:
            with unit_of_work(container.sessions) as db:
                attempt(db)
            outcome = "ok"
        except WalletguardError as exc:
            outcome = exc.slug
        except Exception as exc:  # a database error would be a bug: show it
            outcome = f"{type(exc).__name__}: {exc}"
        with guard:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=(a,)) for a in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Counter(outcomes)


def _wrong_totp(totp: Totp) -> str:
    now = totp.clock.now().timestamp()
    valid = {totp.app.at(now + offset) for offset in (-30, 0, 30)}
    return next(f"{n:06d}" for n in range(1, 100) if f"{n:06d}" not in valid)


def _step_up(
    container: Container, holder: Holder, factor: str, **kwargs: object
) -> Callable[[Session], object]:
    def attempt(db: Session) -> object:
        return MfaService(db, container).step_up(
            _principal(holder),
            SensitiveAction.CHANGE_PASSWORD,
            factor,
            **kwargs,  # type: ignore[arg-type]
        )

    return attempt


def test_parallel_totp_guesses_cannot_exceed_the_limit(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    wrong = _step_up(container, holder, "totp", code=_wrong_totp(totp))
    outcomes = _race(container, [wrong] * GUESSERS)
    assert outcomes == Counter({"step-up-failed": LIMIT, "too-many-attempts": GUESSERS - LIMIT})
    # Locked: even the right code waits.
    right = _race(container, [_step_up(container, holder, "totp", code=totp.code())])
    assert right == Counter({"too-many-attempts": 1})


def test_parallel_recovery_code_guesses_cannot_exceed_the_limit(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    step_up(client, container, holder.auth, DEFAULT_PHONE, "enrol_factor")
    codes = client.post("/api/v1/me/factors/recovery-codes", headers=holder.auth).json()["codes"]
    guesses = [
        _step_up(container, holder, "recovery_code", code=f"ABCDE-{n:05d}") for n in range(GUESSERS)
    ]
    outcomes = _race(container, guesses)
    assert outcomes == Counter({"step-up-failed": LIMIT, "too-many-attempts": GUESSERS - LIMIT})
    assert _race(container, [_step_up(container, holder, "recovery_code", code=codes[0])]) == (
        Counter({"too-many-attempts": 1})
    )


def test_parallel_sms_code_guesses_cannot_exceed_the_limit(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    started = client.post(
        "/api/v1/step-up/challenges",
        json={"action": "change_password", "factor": "sms"},
        headers=holder.auth,
    ).json()
    real = latest_code(container, DEFAULT_PHONE)
    challenge_id = uuid.UUID(started["challenge_id"])
    wrong_codes = [f"{n:06d}" for n in range(GUESSERS + 1) if f"{n:06d}" != real][:GUESSERS]
    guesses = [
        _step_up(container, holder, "sms", code=code, challenge_id=challenge_id)
        for code in wrong_codes
    ]
    outcomes = _race(container, guesses)
    assert outcomes == Counter({"step-up-failed": LIMIT, "too-many-attempts": GUESSERS - LIMIT})
    right = _step_up(container, holder, "sms", code=real, challenge_id=challenge_id)
    assert _race(container, [right]) == Counter({"too-many-attempts": 1})


def test_one_totp_code_spent_twice_in_parallel_grants_once(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    totp = enrol_totp(client, container, holder)
    same = _step_up(container, holder, "totp", code=totp.code())
    assert _race(container, [same, same]) == Counter({"ok": 1, "step-up-failed": 1})


@pytest.mark.parametrize("racers", [2, 4])
def test_a_not_me_link_used_in_parallel_acts_once(
    client: TestClient, container: Container, racers: int
) -> None:
    from tests.conftest import STRONG_PASSWORD, login

    register(client, container)
    login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="attacker")
    token = not_me_token(container, "security.device_added")

    def report(db: Session) -> object:
        return RecoveryService(db, container).report_not_me(token, None)

    assert _race(container, [report] * racers) == Counter({"ok": 1, "link-used": racers - 1})
