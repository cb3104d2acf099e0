"""The bundled list of common and breached passwords: its size and what it refuses."""

from __future__ import annotations

from datetime import date

import pytest
from fastapi.testclient import TestClient

from tests.conftest import DEFAULT_PHONE, STRONG_PASSWORD, assert_problem, latest_code
from walletguard.bootstrap import Container
from walletguard.identity.password_policy import (
    PersonalContext,
    check_login_password,
    common_passwords,
)

# Someone whose birthday, phone and name share nothing with the passwords below, so the only
# reason left to refuse them is the list.
STRANGER = PersonalContext(
    phone_e164="+8613900007531", name="欧阳娜", birthday=date(1979, 11, 23), id_number=None
)

FAMOUS_LEAKED = [
    "password1",
    "qwerty123",
    "woaini1314",  # CSDN / Tianya
    "iloveyou",
    "sunshine",
    "superman123",
    "trustno1",
    "football!!",  # a listed stem with trailing digits and symbols
    "Dragon2024",
    "1qaz2wsx3edc",
    "letmein!",
]


def test_the_list_holds_at_least_ten_thousand_lower_cased_entries() -> None:
    listed = common_passwords()
    assert len(listed) >= 10_000
    assert all(entry == entry.lower() and entry == entry.strip() for entry in listed)
    # The hand-compiled Chinese leak entries are kept alongside the public list.
    assert {"woaini1314", "5201314", "aini1314", "caonima", "zhang123"} <= listed


@pytest.mark.parametrize("password", FAMOUS_LEAKED)
def test_famous_leaked_passwords_are_refused_as_common(password: str) -> None:
    codes = {violation.code for violation in check_login_password(password, STRANGER)}
    assert "password.common" in codes


@pytest.mark.parametrize("password", [STRONG_PASSWORD, "Granite-Heron-7731", "Harbor-Lotus-5521"])
def test_passphrases_used_across_the_suite_are_not_listed(password: str) -> None:
    assert check_login_password(password, STRANGER) == []


def test_registration_with_a_leaked_password_says_it_is_common(
    client: TestClient, container: Container
) -> None:
    started = client.post("/api/v1/registrations", json={"phone": DEFAULT_PHONE}).json()
    body = {
        "code": latest_code(container, DEFAULT_PHONE),
        "name": "欧阳娜",
        "birthday": "1979-11-23",
        "password": "qwerty123",
        "device": {"id": "p", "label": "p"},
    }
    response = client.post(
        f"/api/v1/registrations/{started['registration_id']}/complete", json=body
    )
    problem = assert_problem(response, 422, "weak-secret")
    assert "password.common" in {v["code"] for v in problem["violations"]}
    assert "qwerty123" not in response.text
