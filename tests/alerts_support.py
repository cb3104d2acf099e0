"""Test helpers for alerts: a real SMTP server (aiosmtpd), a real webhook receiver
(http.server), a recording channel, and lookups of alerts and their outbox rows."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import select

from tests.conftest import Holder
from walletguard.alerts.channels import (
    EMAIL,
    SMS,
    WEBHOOK,
    ChannelAdapters,
    DeliveryFailed,
    Destination,
    OutgoingAlert,
)
from walletguard.alerts.models import Alert, AlertDelivery
from walletguard.alerts.service import Recipient, security_alert
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- SMTP --------------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message it is given."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        self.arrived.set()
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


# -- webhook receiver --------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    # The status the receiver answers with; a test can change it between deliveries.
    status: int = 204


@contextmanager
def webhook_server() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            receiver.requests.append(
                Received({k.lower(): v for k, v in self.headers.items()}, body)
            )
            self.send_response(receiver.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/walletguard"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- a recording channel -----------------------------------------------------------------------


class RecordingChannel:
    """Takes every alert (or refuses all while ``failing``) and remembers what it took."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, str]] = []  # (delivery id, alert kind, address)
        self.failing = False
        self.lock = threading.Lock()

    def send(self, alert: OutgoingAlert, to: Destination) -> None:
        if self.failing:
            raise DeliveryFailed("test: refused")
        with self.lock:
            self.sent.append((alert.delivery_id, alert.kind, to.address))


def recording_adapters(channel: RecordingChannel) -> ChannelAdapters:
    return ChannelAdapters({SMS: channel, EMAIL: channel, WEBHOOK: channel})


# -- lookups -----------------------------------------------------------------------------------


def alerts_of(container: Container, holder: Holder | str) -> list[Alert]:
    holder_id = uuid.UUID(holder.holder_id if isinstance(holder, Holder) else holder)
    with container.sessions() as db:
        return list(
            db.scalars(
                select(Alert).where(Alert.holder_id == holder_id).order_by(Alert.created_at)
            ).all()
        )


def deliveries_of(container: Container, alert_id: uuid.UUID) -> dict[str, AlertDelivery]:
    with container.sessions() as db:
        rows = db.scalars(select(AlertDelivery).where(AlertDelivery.alert_id == alert_id)).all()
    return {row.channel: row for row in rows}


def all_deliveries(container: Container) -> list[AlertDelivery]:
    with container.sessions() as db:
        return list(db.scalars(select(AlertDelivery).order_by(AlertDelivery.id)).all())


def raise_security_alerts(container: Container, holder: Holder, count: int) -> None:
    """``count`` security alerts for the holder (each: in-app, and SMS to the bound number)."""
    with unit_of_work(container.sessions) as db:
        for n in range(count):
            security_alert(
                db,
                container,
                Recipient(uuid.UUID(holder.holder_id), holder.phone),
                "security.device_added",
                device_id=None,
                data={"device_label": f"device {n}"},
            )
