"""The channel adapters against real servers: SMTP (aiosmtpd) and a signed webhook
(http.server), both on 127.0.0.1; SMS lands in the bound number's inbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.alerts_support import (
    alerts_of,
    all_deliveries,
    raise_security_alerts,
    smtp_server,
    webhook_server,
)
from tests.conftest import Holder, make_settings
from tests.wallet_support import PIN, funded_holder, latest_sms, money_post
from walletguard.alerts.channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_webhook,
    verify_webhook,
)
from walletguard.alerts.worker import deliver_due
from walletguard.app import create_app
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import ManualClock
from walletguard.kit.settings import Settings

PHONE = "+8613812345678"


@pytest.fixture
def smtp() -> Iterator[tuple[int, object]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, db_url: str, smtp: tuple[int, object]) -> Settings:
    return make_settings(
        tmp_path,
        db_url,
        smtp_port=smtp[0],
        smtp_from="walletguard <alerts@walletguard.test>",
        # The test webhook receiver listens on 127.0.0.1.
        webhook_allow_private_targets=True,
    )


def _pay(client: TestClient, holder: Holder, amount: str) -> None:
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "美团外卖", "amount": amount, "payment_password": PIN},
        holder,
    )
    assert paid.status_code == 201, paid.text


def test_email_alerts_arrive_over_smtp_in_chinese(
    client: TestClient, container: Container, smtp: tuple[int, object]
) -> None:
    from tests.alerts_support import Mailbox

    mailbox = smtp[1]
    assert isinstance(mailbox, Mailbox)
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    deliver_due(container)  # the top-up's SMS
    set_email = client.put(
        "/api/v1/me/alert-channels/email",
        json={"address": "Zhang.Wei@Example.COM"},
        headers=holder.auth,
    )
    assert set_email.status_code == 200, set_email.text
    email = next(c for c in set_email.json()["channels"] if c["channel"] == "email")
    assert email["enabled"] and email["target"] == "Z***@example.com"
    _pay(client, holder, "66.60")
    # channel_on (in-app, SMS, email) + the payment (in-app, SMS, email).
    assert deliver_due(container) == 4
    assert len(mailbox.messages) == 2
    recipients, message = mailbox.messages[-1]
    assert recipients == ["Zhang.Wei@example.com"]
    assert message["From"] == "walletguard <alerts@walletguard.test>"
    assert message["Subject"] == "【walletguard】动账提醒"
    body = message.get_body(("plain",))
    assert body is not None
    content = body.get_content()
    assert "使用钱包余额向「美团外卖」付款 66.60 元" in content
    assert content.index("付款 66.60 元") < content.index("66.60 yuan paid")  # zh-CN first
    assert "/not-me/" in content
    assert PHONE[3:] not in content
    payment = alerts_of(container, holder)[-1]
    assert message["X-Walletguard-Alert"] == str(payment.id)


def test_an_unreachable_mail_server_is_retried(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    from tests.alerts_support import free_port

    settings = make_settings(tmp_path, db_url, smtp_port=free_port(), smtp_timeout_seconds=2)
    container = build_container(settings, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
            deliver_due(container)
            response = client.put(
                "/api/v1/me/alert-channels/email",
                json={"address": "zhang@example.com"},
                headers=holder.auth,
            )
            assert response.status_code == 200
        deliver_due(container)
        email_rows = [r for r in all_deliveries(container) if r.channel == "email"]
        assert email_rows and all(r.status == "pending" for r in email_rows)
        assert all(r.attempts == 1 and (r.last_error or "").startswith("smtp") for r in email_rows)
    finally:
        container.close()


def test_webhook_alerts_are_signed_with_the_holders_secret(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    deliver_due(container)  # the top-up's SMS
    with webhook_server() as receiver:
        response = client.put(
            "/api/v1/me/alert-channels/webhook", json={"url": receiver.url}, headers=holder.auth
        )
        assert response.status_code == 200, response.text
        secret = response.json()["secret"]
        assert secret.startswith("whsec_")
        hook = next(c for c in response.json()["channels"] if c["channel"] == "webhook")
        assert hook["target"] == receiver.url.split("/hooks")[0] + "/…"
        _pay(client, holder, "12.34")
        assert deliver_due(container) == 4
        assert len(receiver.requests) == 2
        request = receiver.requests[-1]
    timestamp = request.headers[TIMESTAMP_HEADER.lower()]
    assert timestamp == str(int(clock.now().timestamp()))
    signature = request.headers[SIGNATURE_HEADER.lower()]
    assert signature.startswith("v1=")
    assert verify_webhook(secret, timestamp, request.body, signature)
    assert not verify_webhook("whsec_wrong", timestamp, request.body, signature)
    assert not verify_webhook(secret, str(int(timestamp) + 1), request.body, signature)
    assert signature == sign_webhook(secret, timestamp, request.body)
    payload = json.loads(request.body)
    assert payload["kind"] == "movement.posted"
    assert "12.34" in payload["body"]["zh-CN"]
    assert payload["data"]["amount_fen"] == 1234
    assert request.headers["x-walletguard-delivery"] == str(payload["delivery_id"])
    # The secret is stored encrypted, never in the clear.
    with container.engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT * FROM alert_channels")).all()
    dump = " ".join(str(value) for row in rows for value in row)
    assert secret not in dump
    assert receiver.url not in dump


def test_a_failing_webhook_is_retried_with_backoff_then_dead_lettered(
    client: TestClient, container: Container, clock: ManualClock
) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    deliver_due(container)  # the top-up's SMS
    settings = container.settings
    with webhook_server() as receiver:
        response = client.put(
            "/api/v1/me/alert-channels/webhook", json={"url": receiver.url}, headers=holder.auth
        )
        assert response.status_code == 200
        receiver.status = 503
        _pay(client, holder, "1.00")
        deliver_due(container)  # SMS delivered; both webhook rows fail
        hooks = [r for r in all_deliveries(container) if r.channel == "webhook"]
        assert [r.last_error for r in hooks] == ["webhook: HTTP 503"] * 2
        assert all(r.due_at == clock.now() + timedelta(seconds=30) for r in hooks)
        tries = 1
        while tries < settings.alert_max_attempts:
            clock.advance(timedelta(seconds=settings.alert_retry_max_seconds))
            assert deliver_due(container) == 0
            tries += 1
        assert len(receiver.requests) == 2 * settings.alert_max_attempts
        hooks = [r for r in all_deliveries(container) if r.channel == "webhook"]
        assert all(r.status == "dead" and r.attempts == settings.alert_max_attempts for r in hooks)
        # A dead row is never tried again; the next alert, to a healed receiver, arrives.
        receiver.status = 200
        clock.advance(timedelta(days=1))
        _pay(client, holder, "2.00")
        assert deliver_due(container) == 2  # its SMS and its webhook
        assert len(receiver.requests) == 2 * settings.alert_max_attempts + 1


def test_sms_alerts_go_to_the_bound_number(client: TestClient, container: Container) -> None:
    holder, _, _ = funded_holder(client, container, PHONE, top_up="100.00")
    deliver_due(container)  # the top-up's SMS
    raise_security_alerts(container, holder, 1)
    deliver_due(container)
    sms = latest_sms(container, PHONE)
    assert sms.sender == "walletguard"
    assert sms.body.startswith("新设备登录\n")
