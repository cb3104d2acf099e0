"""The incident desk around the case: the freeze racing a movement, who may call what, the
checklist, the letters, "this was not me", and the operators' side."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
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
    make_settings,
    register,
)
from tests.incident_support import VALID_ID, VICTIM_NAME, drain, report, victim_with_cards
from tests.mfa_support import not_me_token
from tests.test_incidents import PDFTOTEXT, pdf_text
from tests.wallet_support import (
    PIN,
    audit_events,
    bank_balance,
    funded_holder,
    latest_sms_code,
    principal_of,
    wallet,
)
from walletguard.bootstrap import Container
from walletguard.identity.service import Principal
from walletguard.incidents.service import IncidentService
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import WalletguardError
from walletguard.kit.settings import Settings
from walletguard.wallet.models import LedgerTransaction
from walletguard.wallet.service import WalletService

OPERATOR_TOKEN = "op-" + "k" * 40
OPERATOR = {"authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    from pydantic import SecretStr

    return make_settings(
        tmp_path,
        db_url,
        operator_tokens=SecretStr(json.dumps({"wang.fang": OPERATOR_TOKEN})),
    )


# -- the freeze races a movement -----------------------------------------------------------------


def _second_device(client: TestClient, container: Container, holder: Holder) -> Principal:
    issued = login_trusted(client, container, holder)
    return Principal(
        holder_id=uuid.UUID(holder.holder_id),
        session_id=uuid.UUID(issued["session_id"]),
        device_id=uuid.UUID(issued["device_id"]),
        device_trust="trusted",
        ip="203.0.113.50",
    )


def _race(container: Container, spend: Callable[[WalletService], object], holder: Holder) -> str:
    barrier = threading.Barrier(2)

    def movement() -> str:
        barrier.wait()
        try:
            with unit_of_work(container.sessions) as db:
                spend(WalletService(db, container))
        except WalletguardError as exc:
            return exc.slug
        return "moved"

    def freeze() -> str:
        barrier.wait()
        with unit_of_work(container.sessions) as db:
            IncidentService(db, container).report(principal_of(holder), kind="robbed")
        return "frozen"

    with ThreadPoolExecutor(max_workers=2) as pool:
        moved = pool.submit(movement)
        frozen = pool.submit(freeze)
        assert frozen.result(timeout=60) == "frozen"
        return moved.result(timeout=60)


def test_a_movement_racing_the_freeze_completes_before_it_or_is_refused_after(
    client: TestClient, container: Container
) -> None:
    outcomes = []
    for round_ in range(4):
        phone = f"+861390000{round_:04d}"
        holder, card_id, number = funded_holder(
            client, container, phone, top_up="500.00", serial=round_ + 1
        )
        other = _second_device(client, container, holder)
        # A card debit already waiting for its dynamic password, confirmed during the freeze.
        with unit_of_work(container.sessions) as db:
            pending = WalletService(db, container).pay(
                other,
                merchant="金店",
                amount_fen=20_000,
                payment_password=PIN,
                card_id=uuid.UUID(card_id),
            )
            assert isinstance(pending, LedgerTransaction)
            pending_id = pending.id
        card_before = bank_balance(container, number)
        assert card_before is not None

        def confirm_and_pay(
            service: WalletService,
            other: Principal = other,
            pending_id: uuid.UUID = pending_id,
            code: str = latest_sms_code(container, phone),
        ) -> None:
            service.confirm_movement(other, pending_id, dynamic_password=code)
            service.pay(other, merchant="便利店", amount_fen=10_000, payment_password=PIN)

        outcome = _race(container, confirm_and_pay, holder)
        outcomes.append(outcome)
        assert outcome in ("moved", "transactions-closed"), outcome
        with container.sessions() as db:
            card_debit = db.get(LedgerTransaction, pending_id)
            assert card_debit is not None
            status = card_debit.status
        debited = card_before - (bank_balance(container, number) or 0)
        if outcome == "moved":
            assert status == "posted" and debited == 20_000
            assert wallet(client, holder)["balance"] == "400.00"
        else:
            # Voided by the freeze: the bank never took the money.
            assert status == "voided" and debited == 0
            assert wallet(client, holder)["balance"] == "500.00"
        # Either way, after the report nothing moves and every card is blocked.
        with unit_of_work(container.sessions) as db, pytest.raises(WalletguardError) as refused:
            WalletService(db, container).pay(
                other, merchant="便利店", amount_fen=100, payment_password=PIN
            )
        assert refused.value.slug == "transactions-closed"
        assert client.get("/api/v1/cards", headers=holder.auth).json()[0]["status"] == "blocked"
    assert set(outcomes) <= {"moved", "transactions-closed"}


# -- who may call what ---------------------------------------------------------------------------


@pytest.fixture
def two_holders(client: TestClient, container: Container) -> tuple[Holder, Holder, str, str]:
    owner, _, _ = victim_with_cards(client, container)
    reported = report(client, owner)
    assert reported.status_code == 201, reported.text
    case_id = reported.json()["case_id"]
    stranger = register(client, container, "+8613700000001")
    # The owner's case has no debits: marking a movement not in it is a 404 for everyone.
    return owner, stranger, case_id, str(uuid.uuid4())


ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("GET", "/api/v1/incidents/{case}", None, 200),
    ("GET", "/api/v1/incidents/{case}/evidence.zip", None, 200),
    ("GET", "/api/v1/incidents/{case}/checklist", None, 200),
    ("POST", "/api/v1/incidents/{case}/checklist", {"item": "no_fees"}, 200),
    ("GET", "/api/v1/incidents/{case}/letters/police", None, 200),
    ("GET", "/api/v1/incidents/{case}/letters/bank.pdf", None, 200),
    ("PATCH", "/api/v1/incidents/{case}/movements/{movement}", {"unauthorised": True}, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "owner_status"), ENDPOINTS)
def test_callers_table(
    client: TestClient,
    two_holders: tuple[Holder, Holder, str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    owner_status: int,
) -> None:
    owner, stranger, case_id, movement = two_holders
    url = path.format(case=case_id, movement=movement)
    anonymous = client.request(method, url, json=body)
    assert_problem(anonymous, 401, "not-authenticated")
    other = client.request(method, url, json=body, headers=stranger.auth)
    assert_problem(other, 404, "not-found")
    mine = client.request(method, url, json=body, headers=owner.auth)
    assert mine.status_code == owner_status, mine.text


def test_reporting_and_listing_need_a_signed_in_device(
    client: TestClient, container: Container
) -> None:
    assert_problem(client.post("/api/v1/incidents"), 401, "not-authenticated")
    assert_problem(client.get("/api/v1/incidents"), 401, "not-authenticated")
    holder = register(client, container)
    # A device that only knows the password may not freeze the account.
    fresh = login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="thief").json()
    auth = {"authorization": f"Bearer {fresh['session_token']}"}
    assert_problem(client.post("/api/v1/incidents", headers=auth), 403, "device-not-verified")
    assert client.get("/api/v1/incidents", headers=holder.auth).json() == []


OPERATOR_ENDPOINTS = [
    ("GET", "/api/v1/operator/cases", None),
    ("GET", "/api/v1/operator/cases/{case}", None),
    ("PATCH", "/api/v1/operator/cases/{case}", {"status": "in_progress"}),
    ("POST", "/api/v1/operator/cases/{case}/notes", {"body": "回电持卡人"}),
    (
        "POST",
        "/api/v1/operator/incidents",
        {"phone": "13912340001", "name": VICTIM_NAME, "id_number_last6": VALID_ID[-6:]},
    ),
    (
        "POST",
        "/api/v1/operator/complaints",
        {
            "phone": "13912340001",
            "name": VICTIM_NAME,
            "id_number_last6": VALID_ID[-6:],
            "channel": "social_media",
            "summary": "微博投诉",
        },
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ENDPOINTS)
def test_operator_endpoints_need_an_operator_key(
    client: TestClient,
    two_holders: tuple[Holder, Holder, str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    owner, _, case_id, _ = two_holders
    url = path.format(case=case_id)
    assert_problem(client.request(method, url, json=body), 401, "not-authenticated")
    wrong = {"authorization": "Bearer " + "x" * 43}
    assert_problem(client.request(method, url, json=body, headers=wrong), 401, "not-authenticated")
    # A holder's session is not an operator key.
    assert_problem(
        client.request(method, url, json=body, headers=owner.auth), 401, "not-authenticated"
    )
    right = client.request(method, url, json=body, headers=OPERATOR)
    assert right.status_code in (200, 201), right.text


def test_without_configured_operators_nobody_is_one(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    built = build_container(make_settings(tmp_path, db_url), clock=clock)
    try:
        with TestClient(create_app(built)) as client:
            listed = client.get("/api/v1/operator/cases", headers=OPERATOR)
            assert_problem(listed, 401, "not-authenticated")
    finally:
        built.close()


# -- operators -----------------------------------------------------------------------------------


def test_an_operator_reports_for_a_verified_holder_and_everything_freezes(
    client: TestClient, container: Container
) -> None:
    victim, _, _ = victim_with_cards(client, container)
    body = {"phone": "139 1234 0001", "name": VICTIM_NAME, "id_number_last6": "000000"}
    refused = client.post("/api/v1/operator/incidents", json=body, headers=OPERATOR)
    assert_problem(refused, 422, "identity-check-failed")
    unknown = dict(body, phone="13700000009", id_number_last6=VALID_ID[-6:])
    assert_problem(
        client.post("/api/v1/operator/incidents", json=unknown, headers=OPERATOR),
        422,
        "identity-check-failed",
    )
    body["id_number_last6"] = VALID_ID[-6:]
    body["channel"] = "hotline"
    done = client.post("/api/v1/operator/incidents", json=body, headers=OPERATOR)
    assert done.status_code == 201, done.text
    assert done.json()["cards_blocked"] == 3
    assert done.json()["other_sessions_kept"] is False
    # Every session ends: the holder signs in again on a phone they hold.
    assert client.get("/api/v1/me", headers=victim.auth).status_code == 401
    assert [e for e in audit_events(container, "incident.reported")]
    data = json.loads(audit_events(container, "incident.reported")[-1].data)
    assert data["operator"] == "wang.fang" and data["reported_by"] == "operator"
    assert "identity-check" not in json.dumps(data)
    # No personal data in the audit log's record of the failed checks.
    for entry in audit_events(container, "incident.identity_check_failed"):
        assert VICTIM_NAME not in entry.data and "13912340001" not in entry.data


def test_identity_checks_are_limited_per_number(client: TestClient, container: Container) -> None:
    victim_with_cards(client, container)
    body = {"phone": "13912340001", "name": VICTIM_NAME, "id_number_last6": "000000"}
    for _ in range(5):
        assert_problem(
            client.post("/api/v1/operator/incidents", json=body, headers=OPERATOR),
            422,
            "identity-check-failed",
        )
    body["id_number_last6"] = VALID_ID[-6:]
    locked = client.post("/api/v1/operator/incidents", json=body, headers=OPERATOR)
    assert_problem(locked, 429, "too-many-attempts")


def test_operators_track_cases_with_status_assignee_notes_and_sla(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    owner, _, _ = victim_with_cards(client, container)
    case_id = report(client, owner).json()["case_id"]
    complaint = client.post(
        "/api/v1/operator/complaints",
        json={
            "phone": "13912340001",
            "name": VICTIM_NAME,
            "id_number_last6": VALID_ID[-6:],
            "channel": "web_form",
            "summary": "要求平台说明验证码泄露原因",
        },
        headers=OPERATOR,
    )
    assert complaint.status_code == 201, complaint.text
    assert complaint.json()["category"] == "complaint"
    listed = client.get("/api/v1/operator/cases", headers=OPERATOR).json()
    assert listed["pagination"]["total"] == 2
    assert listed["items"][0]["id"] == case_id  # due first: incidents within 24 h
    assert listed["items"][0]["overdue"] is False
    updated = client.patch(
        f"/api/v1/operator/cases/{case_id}",
        json={"status": "in_progress", "assignee": "li.na"},
        headers=OPERATOR,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["assignee"] == "li.na"
    note = client.post(
        f"/api/v1/operator/cases/{case_id}/notes",
        json={"body": "已电话联系持卡人，指导其报警"},
        headers=OPERATOR,
    )
    assert note.status_code == 201
    clock.advance(timedelta(hours=25))
    overdue = client.get("/api/v1/operator/cases?overdue=true", headers=OPERATOR).json()
    assert [item["id"] for item in overdue["items"]] == [case_id]
    detail = client.get(f"/api/v1/operator/cases/{case_id}", headers=OPERATOR).json()
    assert detail["notes"][0]["body"] == "已电话联系持卡人，指导其报警"
    assert detail["notes"][0]["author"] == "wang.fang"
    assert detail["overdue"] is True and detail["status"] == "in_progress"
    resolved = client.patch(
        f"/api/v1/operator/cases/{case_id}", json={"status": "resolved"}, headers=OPERATOR
    ).json()
    assert resolved["resolved_at"] is not None
    changes = [json.loads(e.data) for e in audit_events(container, "incident.case_updated")]
    assert changes[0]["changes"] == {
        "status": ["open", "in_progress"],
        "assignee": [None, "li.na"],
    }
    assert all(c["operator"] == "wang.fang" for c in changes)
    notes = audit_events(container, "incident.case_note_added")
    assert len(notes) == 1 and "持卡人" not in notes[0].data
    assert_problem(
        client.get(f"/api/v1/operator/cases/{uuid.uuid4()}", headers=OPERATOR), 404, "not-found"
    )


# -- checklist -----------------------------------------------------------------------------------


def test_the_checklist_names_each_bank_hotline_and_keeps_progress(
    client: TestClient, container: Container
) -> None:
    owner, _, _ = victim_with_cards(client, container)
    case_id = report(client, owner).json()["case_id"]
    url = f"/api/v1/incidents/{case_id}/checklist"
    checklist = client.get(url, headers=owner.auth).json()
    items = {item["key"]: item for item in checklist["items"]}
    assert {"police_report", "keep_records", "no_fees", "warn_contacts", "change_passwords"} <= set(
        items
    )
    assert "96110" in items["police_report"]["title"] and "110" in items["police_report"]["title"]
    assert items["call_bank:ICBC"]["hotline"] == "95588"
    assert items["call_bank:CCB"]["hotline"] == "95533"
    assert "95555" in items["call_bank:CMB"]["title"]
    assert checklist["done"] == 0
    ticked = client.post(url, json={"item": "call_bank:ICBC"}, headers=owner.auth).json()
    assert ticked["done"] == 1
    assert next(i for i in ticked["items"] if i["key"] == "call_bank:ICBC")["done"] is True
    unticked = client.post(
        url, json={"item": "call_bank:ICBC", "done": False}, headers=owner.auth
    ).json()
    assert unticked["done"] == 0
    assert_problem(
        client.post(url, json={"item": "pay_unfreeze_fee"}, headers=owner.auth),
        404,
        "checklist-item-not-found",
    )


# -- letters -------------------------------------------------------------------------------------


@pytest.fixture
def vulnerable(tmp_path: Path, db_url: str, clock: ManualClock) -> Any:
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    built = build_container(make_settings(tmp_path, db_url, profile="vulnerable"), clock=clock)
    with TestClient(create_app(built)) as client:
        yield client, built
    built.close()


def test_letters_cite_the_law_and_never_hold_a_full_card_or_id_number(
    vulnerable: Any, tmp_path: Path
) -> None:
    client, container = vulnerable
    drained = drain(client, container)
    case_id = report(client, drained.victim).json()["case_id"]
    base = f"/api/v1/incidents/{case_id}/letters"
    texts = {}
    for kind, query in (("police", ""), ("platform", ""), ("bank", ""), ("bank", "?bank=ICBC")):
        response = client.get(f"{base}/{kind}{query}", headers=drained.victim.auth)
        assert response.status_code == 200, response.text
        texts[kind + query] = response.json()["text"]
        pdf = client.get(f"{base}/{kind}.pdf{query}", headers=drained.victim.auth)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        if PDFTOTEXT:
            texts[kind + query + ".pdf"] = pdf_text(pdf.content, tmp_path)
    english = client.get(f"{base}/police?lang=en", headers=drained.victim.auth).json()["text"]
    texts["police-en"] = english
    for name, letter in texts.items():
        flat = "".join(letter.split())
        for number in drained.numbers:
            assert number not in flat, name
        assert VALID_ID not in flat and VALID_ID[-6:] not in flat, name
        assert VICTIM_NAME not in flat, name
        assert "13912340001" not in flat, name
    assert "网络安全法》第四十二条" in texts["platform"]
    assert "2026年修订后条文序号以现行文本为准" in texts["platform"]
    assert "第五十七条" in texts["platform"] and "第六十九条" in texts["platform"]
    assert "法释〔2021〕10号" in texts["bank"] and "举证责任" in texts["bank"]
    for kind in ("police", "platform", "bank"):
        assert "云" in texts[kind] and "同步" in texts[kind]
        assert "验证码是经云同步服务泄露的" in texts[kind] or "经云端短信同步" in texts[kind]
    assert drained.numbers[0][-4:] in texts["bank?bank=ICBC"]
    assert drained.numbers[1][-4:] not in texts["bank?bank=ICBC"]
    assert "88,130.00" in texts["police"]
    assert_problem(
        client.get(f"{base}/love-letter", headers=drained.victim.auth), 404, "letter-not-found"
    )


# -- "this was not me" ---------------------------------------------------------------------------


def test_not_me_opens_a_case_that_the_holder_then_confirms(
    client: TestClient, container: Container
) -> None:
    holder, _, _ = funded_holder(client, container, DEFAULT_PHONE)
    login(client, DEFAULT_PHONE, STRONG_PASSWORD, device_id="attacker")
    token = not_me_token(container, "security.device_added")
    reported = client.post(f"/api/v1/not-me/{token}")
    assert reported.status_code == 200, reported.text
    assert reported.json()["payments_frozen"] is True
    cases = client.get("/api/v1/incidents", headers=holder.auth).json()
    assert len(cases) == 1 and cases[0]["kind"] == "not_me"
    assert cases[0]["channel"] == "not_me_link" and cases[0]["frozen_at"] is None
    assert f"/api/v1/incidents/{cases[0]['id']}" in reported.headers["link"]
    # Cards stay usable for the holder's own checks until they confirm from their phone.
    assert client.get("/api/v1/cards", headers=holder.auth).json()[0]["status"] == "bound"
    confirmed = report(client, holder)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["case_id"] == cases[0]["id"]
    assert confirmed.json()["cards_blocked"] == 1
    case = client.get(f"/api/v1/incidents/{cases[0]['id']}", headers=holder.auth).json()
    assert case["frozen_at"] is not None and case["kind"] == "robbed"
    assert case["freeze"]["not_me_reports"] == 1
