"""The risk engine end to end: decisions asked by the wallet, identity and messages; holds the
holder answers; the operator review queue; what a decision stores."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from tests.conftest import (
    Holder,
    assert_problem,
    login,
    login_trusted,
    make_settings,
    register,
    step_up,
)
from tests.mfa_support import enrol_totp
from tests.wallet_support import (
    PIN,
    audit_events,
    bind_card,
    card_number,
    funded_holder,
    money_post,
    open_card,
    set_pin,
    top_up_now,
)
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.kit.settings import Settings
from walletguard.risk.models import RiskDecision
from walletguard.risk.service import RiskEvent, RiskService
from walletguard.wallet.service import WalletService

SHANGHAI = "116.228.10.21"
BEIJING = "61.135.169.121"
ANALYST_TOKEN = "analyst-" + "a" * 40
CASE_WORKER_TOKEN = "caseworker-" + "c" * 40
LEGACY_TOKEN = "legacy-" + "l" * 40


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    tokens = {
        "li.na": {"token": ANALYST_TOKEN, "roles": ["risk_analyst"]},
        "zhou.bo": {"token": CASE_WORKER_TOKEN, "roles": ["case_worker"]},
        "wang.fang": LEGACY_TOKEN,  # the original form: a token alone, an admin
    }
    return make_settings(tmp_path, db_url, operator_tokens=SecretStr(json.dumps(tokens)))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def decisions(container: Container) -> list[RiskDecision]:
    with container.sessions() as db:
        return list(db.scalars(select(RiskDecision).order_by(RiskDecision.created_at)).all())


def pay(
    client: TestClient, holder: Holder, amount: str, merchant: str = "金店", **extra: Any
) -> Any:
    body = {"merchant": merchant, "amount": amount, "payment_password": PIN, **extra}
    return money_post(client, "/api/v1/payments", body, holder)


def scammed_holder(client: TestClient, container: Container) -> Holder:
    """A holder with 5,000.00 in the balance who just received a scam SMS."""
    holder, _card, _number = funded_holder(client, container, "+8613812345678", top_up="5000.00")
    with unit_of_work(container.sessions) as db:
        RiskService(db, container).scam_exposure(
            uuid.UUID(holder.holder_id), typology="fake_customer_service"
        )
    return holder


# -- honest habits stay frictionless -----------------------------------------------------------


def test_an_honest_payment_is_allowed_and_stored_with_its_evidence(
    client: TestClient, container: Container
) -> None:
    holder, _card, _ = funded_holder(client, container, "+8613812345678", top_up="500.00")
    paid = pay(client, holder, "35.00", merchant="全家便利店")
    assert paid.status_code == 201, paid.text
    assert paid.json()["risk_decision"] == "allow"
    rows = [row for row in decisions(container) if row.kind == "movement"]
    assert [row.outcome for row in rows] == ["allow", "allow"]  # the top-up, the payment
    assert json.loads(rows[-1].signals)["payee_new"] is True
    # A plain "allow, nothing fired" is in risk_decisions only; the audit log has the rest.
    assert audit_events(container, "risk.decided") == []


# -- the seed case: new device, sync, PIN reset, drain -> frozen ------------------------------


def test_the_takeover_chain_freezes_payments_with_the_other_controls_off(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    off = "new_device_step_up,cooling_off,step_up,sms_restricted,otp_guard,limit_delay"
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    container = build_container(make_settings(tmp_path, db_url, disabled_controls=off), clock=clock)
    app = create_app(container)
    try:
        victim_client = TestClient(app, client=(SHANGHAI, 40000))
        thief_client = TestClient(app, client=(SHANGHAI, 40001))
        victim = register(victim_client, container)
        set_pin(victim_client, victim)
        number = card_number()
        open_card(container, number=number, name="张伟", phone=victim.phone, balance_fen=5_000_000)
        card_id = bind_card(victim_client, container, victim, number)
        clock.advance(timedelta(days=30))

        issued = login(thief_client, victim.phone, victim.password, device_id="redmi").json()
        thief = Holder(
            victim.phone,
            victim.password,
            issued["session_token"],
            "",
            victim.holder_id,
            issued["session_id"],
            issued["device_id"],
        )
        assert thief_client.post("/api/v1/messages/sync", headers=thief.auth).status_code == 200
        step_up(thief_client, container, thief.auth, victim.phone, "reset_payment_password")
        reset = thief_client.post(
            "/api/v1/me/payment-password/reset",
            json={"payment_password": "580326"},
            headers=thief.auth,
        )
        assert reset.status_code == 204, reset.text
        drained = money_post(
            thief_client,
            "/api/v1/payments",
            {
                "merchant": "金店",
                "amount": "50000.00",
                "payment_password": "580326",
                "card_id": card_id,
            },
            thief,
        )
        problem = assert_problem(drained, 423, "account-frozen")
        assert "ato-chain" in problem["rules"]
        assert problem["reasons"]["zh-CN"] and problem["reasons"]["en"]
        with container.sessions() as db:
            summary = WalletService(db, container).summary(uuid.UUID(victim.holder_id))
        assert summary.transactions_closed
        assert [e.event for e in audit_events(container, "wallet.transactions_closed")]
        last = decisions(container)[-1]
        assert last.outcome == "freeze"
        assert last.score >= 100
        victim_client.close()
        thief_client.close()
    finally:
        container.close()


# -- holds --------------------------------------------------------------------------------------


def test_a_held_payment_is_confirmed_on_a_trusted_device_and_then_goes_through(
    client: TestClient, container: Container
) -> None:
    holder = scammed_holder(client, container)
    held = pay(client, holder, "2000.00", merchant="安全账户")
    problem = assert_problem(held, 409, "risk-hold")
    assert "scam-then-pay" in problem["rules"]
    hold_id = problem["hold_id"]
    audited = [json.loads(e.data) for e in audit_events(container, "risk.decided")]
    assert [(a["decision_id"], a["outcome"]) for a in audited] == [(hold_id, "hold")]

    listed = client.get("/api/v1/risk/holds", headers=holder.auth).json()
    assert [h["id"] for h in listed] == [hold_id]
    assert listed[0]["reasons"]["zh-CN"]

    confirmed = client.post(f"/api/v1/risk/holds/{hold_id}/confirm", headers=holder.auth)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["review"] == "confirmed"
    again = pay(client, holder, "2000.00", merchant="安全账户")
    assert again.status_code == 201, again.text
    # The approval is good once: a third try is judged afresh.
    assert [e.event for e in audit_events(container, "risk.hold_confirmed")]


def test_a_rejected_hold_stays_refused(client: TestClient, container: Container) -> None:
    holder = scammed_holder(client, container)
    hold_id = assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")[
        "hold_id"
    ]
    rejected = client.post(f"/api/v1/risk/holds/{hold_id}/reject", headers=holder.auth)
    assert rejected.json()["review"] == "rejected"
    assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")
    answered_twice = client.post(f"/api/v1/risk/holds/{hold_id}/confirm", headers=holder.auth)
    assert_problem(answered_twice, 409, "hold-not-pending")


def test_an_unanswered_hold_expires_rejected(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = scammed_holder(client, container)
    hold_id = assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")[
        "hold_id"
    ]
    clock.advance(timedelta(minutes=container.settings.risk_hold_minutes + 1))
    listed = client.get("/api/v1/risk/holds", headers=holder.auth).json()
    assert listed[0]["review"] == "expired"
    late = client.post(f"/api/v1/risk/holds/{hold_id}/confirm", headers=holder.auth)
    assert_problem(late, 409, "hold-not-pending")


def test_housekeeping_expires_holds_and_trims_old_velocity(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    from walletguard.risk.velocity import DatabaseVelocity

    holder = scammed_holder(client, container)  # its top-up counted under velocity keys
    assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")
    with unit_of_work(container.sessions) as db:
        assert RiskService(db, container).housekeeping() == (0, 0)  # nothing old yet
        counted = DatabaseVelocity(db).count()
    assert counted > 0
    clock.advance(timedelta(days=3))
    with unit_of_work(container.sessions) as db:
        expired, trimmed = RiskService(db, container).housekeeping()
        assert expired == 1
        assert trimmed > 0
        assert DatabaseVelocity(db).count() == 0
    assert [json.loads(e.data)["decision_id"] for e in audit_events(container, "risk.hold_expired")]


def test_who_may_answer_a_hold(client: TestClient, container: Container) -> None:
    holder = scammed_holder(client, container)
    other = register(client, container, "+8613900002222", device_id="other-phone")
    fresh = login(client, holder.phone, holder.password, device_id="brand-new").json()
    hold_id = assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")[
        "hold_id"
    ]
    path = f"/api/v1/risk/holds/{hold_id}/confirm"
    callers: list[tuple[dict[str, str], int, str | None]] = [
        ({}, 401, "not-authenticated"),
        (other.auth, 404, "not-found"),
        (bearer(fresh["session_token"]), 403, None),  # not verified, or not trusted for holds
        (holder.auth, 200, None),
    ]
    for headers, status, slug in callers:
        response = client.post(path, headers=headers)
        assert response.status_code == status, (headers, response.text)
        if slug:
            assert_problem(response, status, slug)


def test_every_sensitive_action_is_scored_before_its_step_up_is_spent(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    """``require_step_up`` asks the risk engine: enrolling a factor, approving a device and
    changing the phone number are decisions too, not only sync, PIN resets and movements."""
    holder = register(client, container)
    login_trusted(client, container, holder)
    totp = enrol_totp(client, container, holder)
    scored = {
        row.action: row.outcome for row in decisions(container) if row.kind == "sensitive_action"
    }
    assert scored == {"enrol_factor": "allow", "add_device": "allow"}
    # Right after a SIM swap an SMS proves little: changing the number is challenged.
    assert client.post(f"/api/v1/sandbox/phones/{holder.phone}/sim-swap").status_code == 204
    clock.advance(timedelta(seconds=31))
    step_up(client, container, holder.auth, holder.phone, "change_phone", "totp", code=totp.code())
    changed = client.post(
        "/api/v1/me/phone-change", json={"new_phone": "+8613900001111"}, headers=holder.auth
    )
    problem = assert_problem(changed, 403, "risk-challenge")
    assert "sim-swap-sms-untrusted" in problem["rules"]


def test_a_held_sensitive_action_is_confirmed_and_its_retry_goes_through_once(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    """A rules file may hold a sensitive action: the holder confirms it on the phone, the
    tablet's retry goes through (its step-up grant was not spent by the refusal), once."""
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    rules = tmp_path / "hold-sync.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - id: hold-sync\n    kinds: [sensitive_action]\n"
        "    when: {signal: action, eq: enable_sync}\n    action: hold\n    score: 50\n"
        "    reasons: {zh-CN: 开启同步需确认, en: turning sync on needs a confirmation}\n",
        encoding="utf-8",
    )
    container = build_container(make_settings(tmp_path, db_url, risk_rules=rules), clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            holder = register(client, container)
            tablet = login_trusted(client, container, holder)
            step_up(client, container, tablet["auth"], holder.phone, "enable_sync", "sms")
            held = client.post("/api/v1/messages/sync", headers=tablet["auth"])
            hold_id = assert_problem(held, 409, "risk-hold")["hold_id"]
            confirmed = client.post(f"/api/v1/risk/holds/{hold_id}/confirm", headers=holder.auth)
            assert confirmed.status_code == 200, confirmed.text
            again = client.post("/api/v1/messages/sync", headers=tablet["auth"])
            assert again.status_code == 200, again.text
            assert client.delete("/api/v1/messages/sync", headers=tablet["auth"]).status_code == 204
            step_up(client, container, tablet["auth"], holder.phone, "enable_sync", "sms")
            third = client.post("/api/v1/messages/sync", headers=tablet["auth"])
            assert_problem(third, 409, "risk-hold")
    finally:
        container.close()


# -- challenge: a strong factor clears it for one request ---------------------------------------


def test_impossible_travel_is_challenged_and_a_totp_step_up_clears_it(
    client_at: Callable[[str], TestClient], container: Container, clock: ManualClock
) -> None:
    shanghai, beijing = client_at(SHANGHAI), client_at(BEIJING)
    holder, card_id, _ = funded_holder(shanghai, container, "+8613812345678")
    totp = enrol_totp(shanghai, container, holder)
    top_up_now(shanghai, container, holder, card_id, "800.00")
    clock.advance(timedelta(minutes=5))

    challenged = pay(beijing, holder, "20.00", merchant="全家便利店")
    problem = assert_problem(challenged, 403, "risk-challenge")
    assert "impossible-travel" in problem["rules"]
    assert problem["action"] == "risky_payment"
    assert problem["factors"] == ["totp"]
    sms = beijing.post(
        "/api/v1/step-up/challenges",
        json={"action": "risky_payment", "factor": "sms"},
        headers=holder.auth,
    )
    assert_problem(sms, 403, "factor-not-allowed")

    step_up(
        beijing, container, holder.auth, holder.phone, "risky_payment", "totp", code=totp.code()
    )
    cleared = pay(beijing, holder, "20.00", merchant="全家便利店")
    assert cleared.status_code == 201, cleared.text
    assert cleared.json()["risk_decision"] == "stepped_up"
    signals = json.loads(decisions(container)[-1].signals)
    assert signals["travel_km"] > 1000
    assert signals["travel_kmh"] > 900


# -- operator review ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer not-a-token"}, 401),
        (bearer(CASE_WORKER_TOKEN), 403),
        (bearer(ANALYST_TOKEN), 200),
        (bearer(LEGACY_TOKEN), 200),
    ],
)
def test_the_review_queue_callers(
    client: TestClient, container: Container, headers: dict[str, str], status: int
) -> None:
    holder = scammed_holder(client, container)
    assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")
    as_holder = client.get("/api/v1/operator/risk/reviews", headers=holder.auth)
    assert as_holder.status_code == 401
    response = client.get("/api/v1/operator/risk/reviews", headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        body = response.json()
        assert body["pagination"]["total"] == 1
        item = body["items"][0]
        assert item["outcome"] == "hold"
        assert "scam-then-pay" in item["rules"]
        assert item["signals"]["scam_message_h"] < 24
        assert item["payee"] == "安全账户"
    elif status == 403:
        assert_problem(response, 403, "operator-role-missing")


def test_an_operator_releases_and_confirms_each_audited_with_their_name(
    client: TestClient, container: Container
) -> None:
    holder = scammed_holder(client, container)
    first = assert_problem(pay(client, holder, "2000.00", merchant="安全账户"), 409, "risk-hold")
    second = assert_problem(pay(client, holder, "3000.00", merchant="公检法"), 409, "risk-hold")
    analyst = bearer(ANALYST_TOKEN)
    released = client.post(
        f"/api/v1/operator/risk/reviews/{first['hold_id']}/release", headers=analyst
    )
    assert released.json()["review"] == "released"
    assert released.json()["reviewed_by"] == "operator:li.na"
    upheld = client.post(
        f"/api/v1/operator/risk/reviews/{second['hold_id']}/confirm", headers=analyst
    )
    assert upheld.json()["review"] == "upheld"
    again = client.post(
        f"/api/v1/operator/risk/reviews/{second['hold_id']}/release", headers=analyst
    )
    assert_problem(again, 409, "hold-not-pending")
    missing = client.post(f"/api/v1/operator/risk/reviews/{uuid.uuid4()}/release", headers=analyst)
    assert_problem(missing, 404, "not-found")
    events = audit_events(container, "risk.review_")
    assert [(e.event, json.loads(e.data)["operator"]) for e in events] == [
        ("risk.review_released", "li.na"),
        ("risk.review_upheld", "li.na"),
    ]
    # the released payment goes through once
    assert pay(client, holder, "2000.00", merchant="安全账户").status_code == 201
    assert client.get("/api/v1/operator/risk/reviews", headers=analyst).json()["items"] == []


def test_rules_reload_through_the_operator_api(
    client: TestClient, container: Container, tmp_path: Path
) -> None:
    response = client.post("/api/v1/operator/risk/rules/reload", headers=bearer(ANALYST_TOKEN))
    assert response.status_code == 200, response.text
    assert response.json()["rules"] >= 20
    assert client.post("/api/v1/operator/risk/rules/reload").status_code == 401
    assert [e.event for e in audit_events(container, "risk.rules_reloaded")]


def test_an_invalid_rules_file_is_refused_with_its_lines(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - id: all\n    when: {signal: amount_fen, ge: 0}\n"
        "    action: allow\n    score: 0\n    reasons: {zh-CN: 好, en: fine}\n",
        encoding="utf-8",
    )
    settings = make_settings(
        tmp_path,
        db_url,
        risk_rules=rules,
        operator_tokens=SecretStr(json.dumps({"li.na": ANALYST_TOKEN})),
    )
    container = build_container(settings, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            broken = rules.read_text("utf-8").replace("action: allow", "action: maybe")
            rules.write_text(broken, "utf-8")
            response = client.post(
                "/api/v1/operator/risk/rules/reload", headers=bearer(ANALYST_TOKEN)
            )
            problem = assert_problem(response, 422, "risk-rules-invalid")
            assert {
                "line": 5,
                "message": "action must be one of allow, challenge, hold, block, freeze",
            } in problem["errors"]
    finally:
        container.close()


# -- shadow rules, the scam hook, the control, and no personal data --------------------------------


def test_a_shadow_rule_is_recorded_but_does_not_act(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    from walletguard.bootstrap import build_container

    rules = tmp_path / "shadow.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - id: block-everything\n    when: {signal: amount_fen, ge: 0}\n"
        "    action: block\n    score: 90\n    shadow: true\n"
        "    reasons: {zh-CN: 试运行, en: trial}\n",
        encoding="utf-8",
    )
    container = build_container(make_settings(tmp_path, db_url, risk_rules=rules), clock=clock)
    try:
        from walletguard.app import create_app

        with TestClient(create_app(container)) as client:
            holder = register(client, container)
            with unit_of_work(container.sessions) as db:
                decision = RiskService(db, container).decide(
                    RiskEvent(
                        kind="movement",
                        holder_id=uuid.UUID(holder.holder_id),
                        action="payment",
                        device_id=uuid.UUID(holder.device_id),
                        amount_fen=100,
                        payee="全家便利店",
                    )
                )
            assert (decision.outcome, decision.score, decision.rules) == ("allow", 0, ())
            assert decision.shadow_rules == ("block-everything",)
    finally:
        container.close()


def test_the_scam_named_payee_is_blocked(client: TestClient, container: Container) -> None:
    holder, _card, _ = funded_holder(client, container, "+8613812345678", top_up="500.00")
    with unit_of_work(container.sessions) as db:
        RiskService(db, container).scam_exposure(
            uuid.UUID(holder.holder_id), typology="fake_police", named_payee="公检法安全账户"
        )
    problem = assert_problem(
        pay(client, holder, "10.00", merchant="公检法安全账户"), 403, "risk-blocked"
    )
    assert problem["rules"] == ["scam-named-payee"]
    assert pay(client, holder, "10.00", merchant="全家便利店").status_code == 201
    # An operator who finds it was a real payment releases it: it goes through once.
    released = client.post(
        f"/api/v1/operator/risk/reviews/{problem['decision_id']}/release",
        headers=bearer(LEGACY_TOKEN),
    )
    assert released.status_code == 200, released.text
    assert pay(client, holder, "10.00", merchant="公检法安全账户").status_code == 201
    assert_problem(pay(client, holder, "10.00", merchant="公检法安全账户"), 403, "risk-blocked")


def test_a_payee_the_holder_trusts_is_not_held(client: TestClient, container: Container) -> None:
    holder = scammed_holder(client, container)
    trusted = client.post(
        "/api/v1/risk/trusted-payees", json={"merchant": "房东"}, headers=holder.auth
    )
    assert trusted.status_code == 204, trusted.text
    assert pay(client, holder, "2000.00", merchant="房东").status_code == 201


def test_the_engine_is_off_with_its_control(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    settings = make_settings(tmp_path, db_url, disabled_controls="risk_engine")
    container = build_container(settings, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            holder, _card, _ = funded_holder(client, container, "+8613812345678", top_up="500.00")
            assert pay(client, holder, "400.00").status_code == 201
            assert decisions(container) == []
    finally:
        container.close()


def test_decisions_never_store_personal_data(
    client_at: Callable[[str], TestClient], container: Container
) -> None:
    shanghai = client_at(SHANGHAI)
    holder, _card_id, number = funded_holder(shanghai, container, "+8613812345678", top_up="900.00")
    friend = register(shanghai, container, "+8613900002222", name="李娜", device_id="f-phone")
    sent = money_post(
        shanghai,
        "/api/v1/transfers",
        {"to_phone": friend.phone, "amount": "10.00", "payment_password": PIN},
        holder,
    )
    assert sent.status_code == 201, sent.text
    login(shanghai, holder.phone, holder.password, device_id="secret-device-id")
    rows = decisions(container)
    assert {row.kind for row in rows} >= {"movement", "login"}
    secrets = [
        "13812345678",
        "13900002222",
        "2345678",
        SHANGHAI,
        number,
        number[-8:],
        "张伟",
        "李娜",
        "secret-device-id",
    ]
    for row in rows:
        stored = json.dumps(
            {c.name: str(getattr(row, c.name)) for c in RiskDecision.__table__.columns},
            ensure_ascii=False,
        )
        for secret in secrets:
            assert secret not in stored, (secret, stored)
    assert any(row.payee_label and "*" in row.payee_label for row in rows)
    assert any(row.place == "上海" for row in rows)


def test_the_risk_read_sees_the_security_events_its_own_transaction_recorded(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    # A step recorded earlier in the same transaction (not chained yet: the audit chain is
    # written just before COMMIT) is among the events the risk engine reads.
    from walletguard.audit import service as audit
    from walletguard.risk import repository

    holder_id = uuid.UUID(register(client, container).holder_id)
    now = clock.now()
    with unit_of_work(container.sessions) as db:
        audit.record(db, clock, "security.phone_changed", holder_id=holder_id)
        found = repository.holder_and_events(
            db, holder_id, None, None, audit_since=now - timedelta(days=1), exposures_since=now
        ).events
    assert "security.phone_changed" in [event for event, _at, _data in found.audit]


def test_the_risk_read_carries_the_velocity_windows(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    # On PostgreSQL the first risk read also reads the velocity windows (one round trip): the
    # same windows as the velocity store's own read, this transaction's queued counts included.
    from walletguard.risk import repository
    from walletguard.risk.velocity import DatabaseVelocity, Window

    holder_id = uuid.UUID(register(client, container).holder_id)
    now = clock.now()
    holder, payee = f"holder:{holder_id}", "payee:somewhere"
    spans = (timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24))
    wanted = {holder: spans, payee: spans[1:2], "ip:nobody": spans[1:2]}
    with unit_of_work(container.sessions) as db:
        store = DatabaseVelocity(db)
        store.record([holder, payee], now - timedelta(hours=2), 700)
        store.record([holder, payee], now - timedelta(minutes=30), 300)
    with unit_of_work(container.sessions) as db:
        store = DatabaseVelocity(db)
        store.record([holder, payee], now - timedelta(minutes=1), 50)  # queued, not written
        query = store.window_query(wanted, now)
        assert query is not None
        read = repository.holder_and_events(
            db,
            holder_id,
            None,
            None,
            audit_since=now - timedelta(days=1),
            exposures_since=now,
            windows=query if db.get_bind().dialect.name == "postgresql" else None,
        )
        expected = store.window_map(wanted, now)
        assert expected[(holder, spans[2])] == Window(3, 1_050)
        assert expected[(holder, spans[0])] == Window(1, 50)
        assert expected[(holder, spans[1])] == Window(2, 350)
        assert expected[(payee, spans[1])] == Window(2, 350)
        assert expected[("ip:nobody", spans[1])] == Window(0, 0)
        if db.get_bind().dialect.name != "postgresql":
            assert read.windows is None  # SQLite reads them apart (window_map)
            return
        assert read.windows is not None
        assert store.windows_from(query, read.windows, now) == expected
