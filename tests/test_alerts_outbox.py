"""Alerts go through a transactional outbox: queued with the movement or security event that
raised them (and never without it), delivered by workers that may die, retried, dead-lettered."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.alerts_support import (
    RecordingChannel,
    alerts_of,
    all_deliveries,
    deliveries_of,
    raise_security_alerts,
    recording_adapters,
)
from tests.conftest import Holder, login, make_settings, register
from tests.wallet_support import (
    PIN,
    funded_holder,
    latest_sms,
    money_post,
    step_up_for,
    wallet_holder,
)
from walletguard.alerts import service as alerts
from walletguard.alerts.models import Alert, AlertChannel, AlertDelivery
from walletguard.alerts.worker import claim_due, deliver_due
from walletguard.audit.models import AuditEntry
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import unit_of_work
from walletguard.messages.otp_guard import recognise_otp
from walletguard.wallet.service import IdempotentRequest, WalletService

PHONE = "+8613812345678"
PAYEE_PHONE = "+8613912345678"


def _pay(client: TestClient, holder: Holder, amount: str, merchant: str = "京东商城") -> str:
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": merchant, "amount": amount, "payment_password": PIN},
        holder,
    )
    assert paid.status_code == 201, paid.text
    movement_id: str = paid.json()["id"]
    return movement_id


def test_a_payment_queues_its_alert_in_the_same_transaction(
    client: TestClient, container: Container
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="500.00")
    before = len(alerts_of(container, holder))
    movement_id = _pay(client, holder, "88.00")
    new = alerts_of(container, holder)[before:]
    assert [a.kind for a in new] == ["movement.posted"]
    alert = new[0]
    assert alert.category == "transaction"
    assert "88.00" in alert.body_zh and "京东商城" in alert.body_zh
    assert "88.00" in alert.body_en
    assert json.loads(alert.data)["movement_id"] == movement_id
    # "This was not me" names the device that paid.
    assert alert.not_me_url and "/not-me/" in alert.not_me_url
    deliveries = deliveries_of(container, alert.id)
    assert deliveries["in_app"].status == "delivered"
    assert deliveries["sms"].status == "pending"
    assert set(deliveries) == {"in_app", "sms"}  # no email or webhook set up


def test_a_request_that_fails_after_posting_queues_nothing(
    client: TestClient, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="500.00")
    alerts_before = len(alerts_of(container, holder))
    outbox_before = len(all_deliveries(container))

    def broken(self: IdempotentRequest, status: int, body: object) -> None:
        raise RuntimeError("the response could not be stored")

    monkeypatch.setattr(IdempotentRequest, "complete", broken)
    with TestClient(client.app, raise_server_exceptions=False) as failing:
        paid = money_post(
            failing,
            "/api/v1/payments",
            {"merchant": "京东商城", "amount": "88.00", "payment_password": PIN},
            holder,
        )
    assert paid.status_code == 500
    assert len(alerts_of(container, holder)) == alerts_before
    assert len(all_deliveries(container)) == outbox_before
    # A refused movement (more than the balance) raises nothing either.
    monkeypatch.undo()
    refused = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "京东商城", "amount": "9999.00", "payment_password": PIN},
        holder,
    )
    assert refused.status_code == 422 or refused.status_code == 409, refused.text
    assert len(alerts_of(container, holder)) == alerts_before


def test_an_alert_raised_in_a_rolled_back_unit_of_work_is_not_queued(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, PHONE)

    def raise_then_fail() -> None:
        with unit_of_work(container.sessions) as db:
            alerts.security_alert(
                db,
                container,
                alerts.Recipient(uuid.UUID(holder.holder_id), PHONE),
                "security.device_added",
                device_id=None,
                data={"device_label": "x"},
            )
            raise RuntimeError("the request failed later")

    with pytest.raises(RuntimeError):
        raise_then_fail()
    assert alerts_of(container, holder) == []
    assert all_deliveries(container) == []


def test_every_movement_kind_is_alerted_without_raw_personal_data(
    client: TestClient, container: Container
) -> None:
    holder, card_id, number = funded_holder(client, container, PHONE, top_up="500.00")
    payee = wallet_holder(client, container, PAYEE_PHONE, name="李娜")
    _pay(client, holder, "10.00")
    sent = money_post(
        client,
        "/api/v1/transfers",
        {"to_phone": PAYEE_PHONE, "amount": "20.00", "payment_password": PIN},
        holder,
    )
    assert sent.status_code == 201, sent.text
    withdrawn = money_post(
        client,
        "/api/v1/withdrawals",
        {"card_id": card_id, "amount": "30.00", "payment_password": PIN},
        holder,
    )
    assert withdrawn.status_code == 201, withdrawn.text
    with unit_of_work(container.sessions) as db:
        WalletService(db, container).refund(
            uuid.UUID(sent.json()["id"]), operator="test", reason="test"
        )
    kinds = [a.kind for a in alerts_of(container, holder)]
    assert kinds == [
        "movement.posted",  # top-up
        "movement.posted",  # payment
        "movement.posted",  # transfer
        "movement.posted",  # withdrawal
        "movement.refunded",
    ]
    received = [a.kind for a in alerts_of(container, payee)]
    assert received == ["movement.received", "movement.refund_debited"]
    everything = alerts_of(container, holder) + alerts_of(container, payee)
    bodies = " ".join(a.title_zh + a.body_zh + a.title_en + a.body_en + a.data for a in everything)
    for secret in (number, PHONE, PHONE[3:], PAYEE_PHONE[3:], "张伟", "李娜"):
        assert secret not in bodies
    assert number[-4:] in bodies  # the card is named by its last 4 only
    assert "+86 139****5678" in bodies  # the payee by a masked number
    # SMS bodies never look like one-time codes (the OTP guard would hide them).
    for alert in everything:
        assert recognise_otp(alert.body_zh) is None, alert.body_zh
        assert recognise_otp(alert.body_en) is None, alert.body_en


def test_closing_and_reopening_transactions_is_alerted(
    client: TestClient, container: Container
) -> None:
    holder = wallet_holder(client, container, PHONE)
    assert client.post("/api/v1/wallet/close", headers=holder.auth).status_code == 200
    step_up_for(client, container, holder, "reopen_payments")
    assert client.post("/api/v1/wallet/reopen", headers=holder.auth).status_code == 202
    assert client.post("/api/v1/wallet/close", headers=holder.auth).status_code == 200
    kinds = [a.kind for a in alerts_of(container, holder)]
    assert kinds == [
        "wallet.transactions_closed",
        "wallet.reopen_requested",
        "wallet.reopen_cancelled",
    ]
    reopen = alerts_of(container, holder)[1]
    assert reopen.severity == "critical"
    # Beijing time: 09:00 UTC + 24 h delay → 17:00 the next day.
    assert "2026-03-13 17:00" in reopen.body_zh
    assert set(deliveries_of(container, reopen.id)) == {"in_app", "sms"}


def test_a_security_event_is_alerted_by_sms_even_when_sms_is_switched_off(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, PHONE)
    with unit_of_work(container.sessions) as db:
        db.add(
            AlertChannel(
                holder_id=uuid.UUID(holder.holder_id),
                channel="sms",
                enabled=False,
                updated_at=container.clock.now(),
            )
        )
    assert login(client, PHONE, holder.password, device_id="attacker").status_code == 201
    alert = alerts_of(container, holder)[-1]
    assert alert.kind == "security.device_added"
    assert alert.title_zh == "新设备登录"
    assert "另一台设备" in alert.body_zh
    assert alert.not_me_url and "/not-me/" in alert.not_me_url
    assert set(deliveries_of(container, alert.id)) == {"in_app", "sms"}
    # The SMS itself arrives on the phone with the "this was not me" link.
    assert deliver_due(container) == 1
    sms = latest_sms(container, PHONE)
    assert "新设备登录" in sms.body and alert.not_me_url in sms.body
    assert sms.purpose == "alert"


def test_with_the_security_alerts_control_off_security_events_are_in_app_only(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, db_url, disabled_controls="security_alerts")
    container = build_container(settings, clock=clock)
    try:
        from walletguard.app import create_app

        with TestClient(create_app(container)) as client:
            holder = register(client, container, PHONE)
            assert login(client, PHONE, holder.password, device_id="attacker").status_code == 201
        alert = alerts_of(container, holder)[-1]
        assert alert.kind == "security.device_added"
        assert set(deliveries_of(container, alert.id)) == {"in_app"}
        with container.sessions() as db:
            audited = db.scalars(
                select(AuditEntry.event).where(AuditEntry.event == "security.device_added")
            ).all()
        assert audited == ["security.device_added"]
    finally:
        container.close()


def test_a_worker_killed_mid_delivery_loses_nothing(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container, PHONE)
    raise_security_alerts(container, holder, 3)
    channel = RecordingChannel()
    adapters = recording_adapters(channel)
    # The first worker claims everything due, then dies before it delivers or records anything.
    claimed = claim_due(container, limit=10, adapters=adapters)
    assert len(claimed) == 3
    # While its lease holds, nobody else takes those rows.
    assert deliver_due(container, adapters=adapters) == 0
    assert channel.sent == []
    clock.advance(timedelta(seconds=container.settings.alert_lease_seconds + 1))
    assert deliver_due(container, adapters=adapters) == 3
    assert deliver_due(container, adapters=adapters) == 0
    assert sorted(d for d, _, _ in channel.sent) == sorted(job.delivery_id for job in claimed)
    assert {address for _, _, address in channel.sent} == {PHONE}
    sms_rows = [row for row in all_deliveries(container) if row.channel == "sms"]
    assert all(row.status == "delivered" and row.attempts == 2 for row in sms_rows)


def test_failures_back_off_exponentially_then_die(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container, PHONE)
    raise_security_alerts(container, holder, 1)
    channel = RecordingChannel()
    channel.failing = True
    adapters = recording_adapters(channel)
    settings = container.settings
    waits = []
    for attempt in range(1, settings.alert_max_attempts):
        assert deliver_due(container, adapters=adapters) == 0
        (row,) = [r for r in all_deliveries(container) if r.channel == "sms"]
        assert row.status == "pending" and row.attempts == attempt
        assert row.last_error == "test: refused"
        waits.append(row.due_at - clock.now())
        # Not due before its time.
        clock.advance(waits[-1] - timedelta(seconds=1))
        assert claim_due(container, adapters=adapters) == []
        clock.advance(timedelta(seconds=1))
    base = settings.alert_retry_base_seconds
    expected = [
        timedelta(seconds=min(base * 2**n, settings.alert_retry_max_seconds))
        for n in range(settings.alert_max_attempts - 1)
    ]
    assert waits == expected
    assert deliver_due(container, adapters=adapters) == 0
    (row,) = [r for r in all_deliveries(container) if r.channel == "sms"]
    assert row.status == "dead" and row.attempts == settings.alert_max_attempts
    with container.sessions() as db:
        dead = db.scalars(
            select(AuditEntry).where(AuditEntry.event == "alerts.delivery_dead")
        ).all()
    assert len(dead) == 1 and "sms" in dead[0].data
    clock.advance(timedelta(days=1))
    assert claim_due(container, adapters=adapters) == []


def test_parallel_workers_never_deliver_a_row_twice(
    client: TestClient, container: Container, is_postgres: bool
) -> None:
    """Two workers on two threads (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: queued
    writers and the conditional claim): every row delivered, none twice."""
    holder = register(client, container, PHONE)
    raise_security_alerts(container, holder, 40)
    channel = RecordingChannel()
    adapters = recording_adapters(channel)
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def work() -> None:
        barrier.wait()
        total = 0
        while True:
            delivered = deliver_due(container, limit=5, adapters=adapters)
            if delivered == 0:
                break
            total += delivered
        counts.append(total)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    ids = [delivery_id for delivery_id, _, _ in channel.sent]
    duplicates = [d for d, n in Counter(ids).items() if n > 1]
    assert duplicates == []
    assert len(ids) == 40
    assert sum(counts) == 40
    assert all(row.status == "delivered" for row in all_deliveries(container))


def test_simulator_queries_count_each_alert_once(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder = register(client, container, PHONE)
    holder_id = uuid.UUID(holder.holder_id)
    start = clock.now()
    raise_security_alerts(container, holder, 2)
    with container.sessions() as db:
        # In-app is delivered with the alert; the SMS copies are not delivered yet.
        assert alerts.delivered_count(db, holder_id) == 2
        assert alerts.first_delivered_after(db, holder_id, start) == start
        later = start + timedelta(minutes=5)
        assert alerts.first_delivered_after(db, holder_id, later) is None
    clock.advance(timedelta(minutes=10))
    assert deliver_due(container, adapters=recording_adapters(RecordingChannel())) == 2
    with container.sessions() as db:
        assert alerts.delivered_count(db, holder_id) == 2  # SMS too, still each alert once
        assert alerts.first_delivered_after(db, holder_id, later) == clock.now()
        other = db.scalar(select(Alert.id).where(Alert.holder_id != holder_id))
        assert other is None
        assert db.scalar(select(AlertDelivery.id).where(AlertDelivery.status == "dead")) is None


def test_every_alert_kind_has_both_texts_in_both_languages() -> None:
    from walletguard.alerts.service import _SECURITY_TEXTS, _SEVERITY
    from walletguard.kit.i18n import catalogue

    texts = catalogue()
    kinds = (set(_SECURITY_TEXTS) | set(_SEVERITY) | {"security.generic"}) - {"movement.posted"}
    for kind in kinds:
        assert f"alerts.{kind}.title" in texts, kind
        assert f"alerts.{kind}.body" in texts, kind
    for movement in ("top_up", "withdraw", "payment", "transfer"):
        assert f"alerts.movement.posted.{movement}" in texts
    assert "alerts.movement.posted.title" in texts


def test_an_unknown_security_event_still_alerts_with_the_generic_text(
    client: TestClient, container: Container
) -> None:
    holder = register(client, container, PHONE)
    with unit_of_work(container.sessions) as db:
        alert = alerts.security_alert(
            db,
            container,
            alerts.Recipient(uuid.UUID(holder.holder_id), PHONE),
            "security.something_new",
            device_id=None,
            data={"not_me_url": "http://127.0.0.1:8000/not-me/x", "cancel_url": "secret"},
        )
        assert alert.title_en == "Account security alert"
        assert "security.something_new" in alert.body_en
        assert alert.not_me_url == "http://127.0.0.1:8000/not-me/x"
        assert "cancel_url" not in alert.data and "not_me_url" not in alert.data
