"""Registration: the code flow, no enumeration, bad input, concurrency."""

from __future__ import annotations

import threading
import uuid
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import (
    DEFAULT_PHONE,
    STRONG_PASSWORD,
    assert_problem,
    latest_code,
    register,
)
from walletguard.bootstrap import Container
from walletguard.identity.models import Holder
from walletguard.identity.service import DeviceInfo, IdentityService
from walletguard.kit.db import unit_of_work


def _id_number(region: str, birthday: date, serial: str) -> str:
    body = f"{region}{birthday:%Y%m%d}{serial}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    return body + check


VALID_ID = _id_number("110105", date(1985, 3, 12), "123")


def holders(container: Container) -> int:
    with container.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Holder)) or 0)


def test_register_with_code_signs_in_on_the_trusted_device(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, id_number=VALID_ID)
    me = client.get("/api/v1/me", headers=holder.auth)
    assert me.status_code == 200
    body = me.json()
    assert body["phone_masked"] == "+86 138****5678"
    assert body["name_masked"] == "张*"
    assert body["id_number_masked"] == VALID_ID[0] + "*" * 16 + VALID_ID[-1]
    devices = client.get("/api/v1/devices", headers=holder.auth).json()
    assert [d["trust"] for d in devices] == ["trusted"]
    assert devices[0]["current"] is True


def test_registration_answers_alike_for_taken_and_free_numbers(
    client: TestClient, container: Container
) -> None:
    register(client, container)
    taken = client.post("/api/v1/registrations", json={"phone": DEFAULT_PHONE})
    free = client.post("/api/v1/registrations", json={"phone": "+8613912345678"})
    assert taken.status_code == free.status_code == 202
    assert set(taken.json()) == set(free.json())
    assert taken.json()["message"] == free.json()["message"]
    # The taken number's owner is told instead of being sent a code.
    with container.sessions() as db:
        from walletguard.messages.service import PhoneInbox

        newest = PhoneInbox(db, container.cipher, container.clock).messages(DEFAULT_PHONE)[0]
    assert newest.purpose == "registration_attempt_notice"
    # No code was sent for the taken number, so no guess can complete it.
    completed = client.post(
        f"/api/v1/registrations/{taken.json()['registration_id']}/complete",
        json={
            "code": "000000",
            "name": "冒充者",
            "birthday": "1990-01-01",
            "password": STRONG_PASSWORD,
            "device": {"id": "x", "label": "x"},
        },
    )
    assert_problem(completed, 400, "registration-code-refused")
    assert holders(container) == 1


def test_wrong_code_is_refused_and_tries_are_limited(
    client: TestClient, container: Container
) -> None:
    started = client.post("/api/v1/registrations", json={"phone": DEFAULT_PHONE}).json()
    good = latest_code(container, DEFAULT_PHONE)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    body: dict[str, Any] = {
        "code": wrong,
        "name": "张伟",
        "birthday": "1985-03-12",
        "password": STRONG_PASSWORD,
        "device": {"id": "p", "label": "p"},
    }
    url = f"/api/v1/registrations/{started['registration_id']}/complete"
    for _ in range(5):
        assert_problem(client.post(url, json=body), 400, "registration-code-refused")
    body["code"] = good
    # The sixth try is refused even with the right code: the registration is spent.
    assert_problem(client.post(url, json=body), 429, "too-many-attempts")
    assert holders(container) == 0


@pytest.mark.parametrize(
    ("change", "status", "slug", "field"),
    [
        ({"phone": "12345"}, 422, "invalid-input", "phone"),
        ({"phone": "+86 010 1234 5678"}, 422, "invalid-input", "phone"),
        ({"phone": "not a number"}, 422, "invalid-input", "phone"),
        ({"phone": "1" * 40}, 422, "invalid-input", "phone"),
        ({"phone": 13812345678}, 422, "invalid-input", "phone"),
        ({"extra": "field"}, 422, "invalid-input", "extra"),
    ],
)
def test_bad_phone_input_is_a_problem_and_writes_nothing(
    client: TestClient,
    container: Container,
    change: dict[str, Any],
    status: int,
    slug: str,
    field: str,
) -> None:
    body: dict[str, Any] = {"phone": DEFAULT_PHONE, **change}
    problem = assert_problem(client.post("/api/v1/registrations", json=body), status, slug)
    fields = [e["field"] for e in problem.get("errors", [])] + [problem.get("field")]
    assert field in fields
    with container.sessions() as db:
        from walletguard.identity.models import PendingRegistration

        assert db.scalar(select(func.count()).select_from(PendingRegistration)) == 0


@pytest.mark.parametrize(
    ("change", "slug", "field"),
    [
        (
            {"id_number": VALID_ID[:-1] + ("0" if VALID_ID[-1] != "0" else "1")},
            "invalid-input",
            "id_number",
        ),
        ({"id_number": "11010519850312"}, "invalid-input", "id_number"),
        ({"birthday": "1985-13-40"}, "invalid-input", "birthday"),
        ({"birthday": "2999-01-01"}, "invalid-input", "birthday"),
        ({"id_number": VALID_ID, "birthday": "1986-03-12"}, "invalid-input", "birthday"),
        ({"name": "张" * 65}, "invalid-input", "name"),
        ({"name": ""}, "invalid-input", "name"),
        ({"password": "x" * 129}, "invalid-input", "password"),
        ({"password": 12345678}, "invalid-input", "password"),
        ({"password": "password1"}, "weak-secret", "password"),
        ({"password": "zhangwei1985"}, "weak-secret", "password"),
        ({"code": "12ab56"}, "invalid-input", "code"),
    ],
)
def test_bad_registration_input_is_a_problem_and_writes_nothing(
    client: TestClient, container: Container, change: dict[str, Any], slug: str, field: str
) -> None:
    started = client.post("/api/v1/registrations", json={"phone": DEFAULT_PHONE}).json()
    body: dict[str, Any] = {
        "code": latest_code(container, DEFAULT_PHONE),
        "name": "张伟",
        "birthday": "1985-03-12",
        "password": STRONG_PASSWORD,
        "device": {"id": "p", "label": "p"},
        **change,
    }
    response = client.post(
        f"/api/v1/registrations/{started['registration_id']}/complete", json=body
    )
    status = 422
    problem = assert_problem(response, status, slug)
    fields = [e["field"] for e in problem.get("errors", [])] + [problem.get("field")]
    assert field in fields
    # Nothing a caller typed is echoed back.
    assert STRONG_PASSWORD not in response.text
    assert holders(container) == 0


def test_weak_password_lists_every_reason_in_the_callers_language(
    client: TestClient, container: Container
) -> None:
    started = client.post("/api/v1/registrations", json={"phone": DEFAULT_PHONE}).json()
    body = {
        "code": latest_code(container, DEFAULT_PHONE),
        "name": "张伟",
        "birthday": "1985-03-12",
        "password": "zhangwei",
        "device": {"id": "p", "label": "p"},
    }
    url = f"/api/v1/registrations/{started['registration_id']}/complete"
    zh = assert_problem(client.post(url, json=body), 422, "weak-secret")
    en = assert_problem(
        client.post(url, json=body, headers={"accept-language": "en-US,en;q=0.9"}),
        422,
        "weak-secret",
    )
    assert zh["title"] != en["title"]
    codes = {v["code"] for v in zh["violations"]}
    assert codes, zh
    assert "zhangwei" not in str(zh)


def test_two_completions_for_one_number_race_and_exactly_one_wins(
    container: Container,
) -> None:
    phone = "+8613700001111"
    pending_ids: list[uuid.UUID] = []
    codes: list[str] = []
    for _ in range(2):
        with unit_of_work(container.sessions) as db:
            pending_ids.append(IdentityService(db, container).start_registration(phone, ip=None).id)
        codes.append(latest_code(container, phone))
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def complete(index: int) -> None:
        barrier.wait()
        try:
            with unit_of_work(container.sessions) as db:
                IdentityService(db, container).complete_registration(
                    pending_ids[index],
                    code=codes[index],
                    name="王芳",
                    birthday=date(1992, 7, 1),
                    password=STRONG_PASSWORD,
                    id_number=None,
                    device=DeviceInfo(f"d{index}", "phone", "ua", None),
                )
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["RegistrationCodeRefused", "ok"]
    assert holders(container) == 1
