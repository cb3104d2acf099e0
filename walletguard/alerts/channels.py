"""The delivery channels: ports, and the adapters wired by default.

Each adapter sends one ``OutgoingAlert`` to one address and either returns (delivered) or raises
``DeliveryFailed`` (the worker retries with backoff, then gives up). The in-app channel has no
adapter: the alert row is the delivery. Adapters never touch the outbox; the worker does.

- email: SMTP (``smtplib``) to the address the holder set, from ``WALLETGUARD_SMTP_*``;
- webhook: an HTTP POST of JSON signed with HMAC-SHA256 over ``"<timestamp>.<body>"`` under
  the holder's secret (``X-Walletguard-Timestamp``, ``X-Walletguard-Signature: v1=<hex>``);
- sms: the bound number, through the SMS carrier port — in this box the sandbox carrier, the
  same phone inboxes every other SMS of the platform lands in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work
from walletguard.kit.i18n import LANGUAGES, Language, text
from walletguard.messages.service import PhoneInbox

IN_APP = "in_app"
SMS = "sms"
EMAIL = "email"
WEBHOOK = "webhook"
CHANNELS = (IN_APP, SMS, EMAIL, WEBHOOK)

SIGNATURE_HEADER = "X-Walletguard-Signature"
TIMESTAMP_HEADER = "X-Walletguard-Timestamp"
DELIVERY_HEADER = "X-Walletguard-Delivery"
EVENT_HEADER = "X-Walletguard-Event"
SMS_SENDER = "walletguard"


class DeliveryFailed(Exception):
    """The channel did not take the alert; ``reason`` is short and holds no personal data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:255]


@dataclass(frozen=True)
class OutgoingAlert:
    delivery_id: int
    alert_id: uuid.UUID
    kind: str
    severity: str
    created_at: datetime
    language: Language
    titles: Mapping[Language, str]
    bodies: Mapping[Language, str]
    not_me_url: str | None
    data: Mapping[str, Any] = field(default_factory=dict)

    def languages(self) -> tuple[Language, ...]:
        """The holder's language first, then the other."""
        return (self.language, *(lang for lang in LANGUAGES if lang != self.language))

    def text_in(self, lang: Language) -> str:
        """Title, body and the "this was not me" line, as one message."""
        lines = [self.titles[lang], self.bodies[lang]]
        if self.not_me_url:
            lines.append(text("alerts.not_me_line", lang, url=self.not_me_url))
        return "\n".join(lines)


@dataclass(frozen=True)
class Destination:
    address: str  # phone number (E.164), email address or webhook URL
    secret: str | None = None  # the webhook signing secret


class ChannelAdapter(Protocol):
    def send(self, alert: OutgoingAlert, to: Destination) -> None:
        """Deliver or raise DeliveryFailed."""
        ...


# -- email -------------------------------------------------------------------------------------


class SmtpMailer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.timeout = timeout
        self.username = username
        self.password = password
        self.starttls = starttls

    def compose(self, alert: OutgoingAlert, to: str) -> EmailMessage:
        lead = alert.language
        message = EmailMessage()
        message["Subject"] = text("alerts.email.subject", lead, title=alert.titles[lead])
        message["From"] = self.sender
        message["To"] = to
        message["Date"] = format_datetime(alert.created_at)
        message["Message-ID"] = make_msgid(domain="walletguard.alerts")
        message["X-Walletguard-Alert"] = str(alert.alert_id)
        parts = [alert.text_in(lang) for lang in alert.languages()]
        parts.append(text("alerts.email.footer", lead))
        message.set_content("\n\n----\n\n".join(parts), charset="utf-8")
        return message

    def send(self, alert: OutgoingAlert, to: Destination) -> None:
        message = self.compose(alert, to.address)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username and self.password:
                    smtp.login(self.username, self.password)
                refused = smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed(f"smtp: {type(exc).__name__}") from exc
        if refused:
            raise DeliveryFailed("smtp: recipient refused")


# -- webhook -----------------------------------------------------------------------------------


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under the holder's secret."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_webhook(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (documented, and used by the tests)."""
    return hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


def webhook_payload(alert: OutgoingAlert) -> bytes:
    payload = {
        "id": str(alert.alert_id),
        "delivery_id": alert.delivery_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "created_at": alert.created_at.isoformat(),
        "language": alert.language,
        "title": dict(alert.titles),
        "body": dict(alert.bodies),
        "not_me_url": alert.not_me_url,
        "data": dict(alert.data),
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


class UnsafeWebhookTarget(ValueError):
    """The URL is not http(s), or its host is a private, loopback or link-local address."""


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return not ip.is_global or ip.is_multicast


def check_webhook_url(url: str, *, allow_private: bool, resolve: bool) -> None:
    """Refuse a URL the worker should not POST to; ``resolve`` also checks where DNS points.

    (A name can still be re-pointed between this check and the request; the check keeps
    holders from aiming the worker at the operator's own network by accident or on purpose.)
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookTarget("alerts.channel.webhook_invalid")
    if allow_private:
        return
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise UnsafeWebhookTarget("alerts.channel.webhook_private")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        literal = False
    else:
        literal = True
    if literal:
        if _is_private(host):
            raise UnsafeWebhookTarget("alerts.channel.webhook_private")
        return
    if not resolve:
        return
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise UnsafeWebhookTarget("alerts.channel.webhook_invalid") from exc
    if any(_is_private(str(info[4][0])) for info in infos):
        raise UnsafeWebhookTarget("alerts.channel.webhook_private")


class WebhookSender:
    def __init__(self, container: Container) -> None:
        self.clock = container.clock
        self.timeout = container.settings.webhook_timeout_seconds
        self.allow_private = container.settings.webhook_allow_private_targets

    def send(self, alert: OutgoingAlert, to: Destination) -> None:
        if to.secret is None:
            raise DeliveryFailed("webhook: no signing secret")
        try:
            # Checked again at delivery: a name may point elsewhere than when it was set.
            check_webhook_url(to.address, allow_private=self.allow_private, resolve=True)
        except UnsafeWebhookTarget as exc:
            raise DeliveryFailed(f"webhook: refused target ({exc})") from exc
        body = webhook_payload(alert)
        timestamp = str(int(self.clock.now().timestamp()))
        headers = {
            "content-type": "application/json",
            "user-agent": "walletguard-alerts/1",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_webhook(to.secret, timestamp, body),
            DELIVERY_HEADER: str(alert.delivery_id),
            EVENT_HEADER: alert.kind,
        }
        try:
            # No redirects: a redirect could send the signed alert somewhere else.
            response = httpx.post(
                to.address,
                content=body,
                headers=headers,
                timeout=self.timeout,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook: {type(exc).__name__}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"webhook: HTTP {response.status_code}")


# -- SMS ---------------------------------------------------------------------------------------


class SandboxSmsCarrier:
    """The SMS carrier port's sandbox adapter: the message lands in the number's phone inbox.

    Only the holder's own language goes by SMS (one short message); each send is its own
    transaction, as a carrier's acceptance would be.
    """

    def __init__(self, container: Container) -> None:
        self.container = container

    def send(self, alert: OutgoingAlert, to: Destination) -> None:
        container = self.container
        with unit_of_work(container.sessions) as db:
            PhoneInbox(db, container.cipher, container.clock).send_sms(
                to.address,
                sender=SMS_SENDER,
                body=alert.text_in(alert.language),
                purpose="alert",
            )


@dataclass
class ChannelAdapters:
    """The adapters the worker delivers through, by channel name."""

    by_channel: dict[str, ChannelAdapter]

    def get(self, channel: str) -> ChannelAdapter | None:
        return self.by_channel.get(channel)


def default_adapters(container: Container) -> ChannelAdapters:
    settings = container.settings
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return ChannelAdapters(
        {
            EMAIL: SmtpMailer(
                host=settings.smtp_host,
                port=settings.smtp_port,
                sender=settings.smtp_from,
                timeout=settings.smtp_timeout_seconds,
                username=settings.smtp_username,
                password=password,
                starttls=settings.smtp_starttls,
            ),
            WEBHOOK: WebhookSender(container),
            SMS: SandboxSmsCarrier(container),
        }
    )
