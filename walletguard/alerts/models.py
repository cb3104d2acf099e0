"""Alerts, their delivery outbox, and each holder's alert channels (SPEC C8)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.kit.db import Base, new_id


class Alert(Base):
    """One thing the holder is told about: a money movement or a security event.

    The texts are rendered when the alert is raised, in both languages, so what the holder was
    told is what is stored. They hold no raw personal data: amounts, merchant names, card last
    4, masked phone numbers and device labels only. The row is also the in-app channel.
    """

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_holder_id_created_at", "holder_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"))
    # movement.posted, security.device_added, alerts.channel_off_requested, …
    kind: Mapped[str] = mapped_column(String(64))
    # security | transaction: security alerts always go by SMS and in-app.
    category: Mapped[str] = mapped_column(String(16))
    # info | warning | critical
    severity: Mapped[str] = mapped_column(String(16))
    # The holder's language when it was raised: SMS and email lead with it.
    language: Mapped[str] = mapped_column(String(8))
    title_zh: Mapped[str] = mapped_column(Text)
    body_zh: Mapped[str] = mapped_column(Text)
    title_en: Mapped[str] = mapped_column(Text)
    body_en: Mapped[str] = mapped_column(Text)
    # The signed one-click "this was not me", when the event has one.
    not_me_url: Mapped[str | None] = mapped_column(Text)
    # Ids and masked forms for machines (the webhook payload); never personal data.
    data: Mapped[str] = mapped_column(Text)
    device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime]
    read_at: Mapped[datetime | None]


class AlertDelivery(Base):
    """The transactional outbox: one row per alert and channel, written with the alert.

    ``pending`` rows are claimed by a worker for a lease (``locked_until``); a worker that dies
    leaves a lease that expires, and another worker delivers. ``attempts`` counts claims, so a
    row that kills every worker that touches it still ends ``dead``. In-app rows are written
    ``delivered``: the alert row is the delivery.
    """

    __tablename__ = "alert_outbox"
    # The rows a worker may claim, by when they are due: pending ones only (an in-app row, which
    # every alert writes already delivered, and every delivered row stay out; migration 0013).
    __table_args__ = (
        Index(
            "ix_alert_outbox_pending_due_at",
            "due_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    alert_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("alerts.id"), index=True)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    # in_app | sms | email | webhook
    channel: Mapped[str] = mapped_column(String(16))
    # The bound phone number the SMS goes to, fixed when the alert was raised (encrypted).
    # Email addresses and webhook URLs are read from the channel settings at delivery.
    destination_enc: Mapped[str | None] = mapped_column(Text)
    # pending | delivered | dead
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    # The claim (one per worker batch) that holds the lease.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class AlertChannel(Base):
    """A holder's setting for one channel; without a row the channel has its default.

    Turning a channel on is instant. Turning it off — or moving it to another address, which
    mutes the old one — is a pending change that takes effect at ``pending_effective_at``.
    """

    __tablename__ = "alert_channels"
    __table_args__ = (UniqueConstraint("holder_id", "channel"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    # sms | email | webhook (in-app has no setting: it is always on)
    channel: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool]
    # The email address or webhook URL (encrypted: an address is personal data).
    target_enc: Mapped[str | None] = mapped_column(Text)
    # The webhook signing secret.
    secret_enc: Mapped[str | None] = mapped_column(Text)
    # A change waiting for its delay: pending_enabled False switches the channel off; a
    # pending target (and secret) replaces the current one.
    pending_enabled: Mapped[bool | None]
    pending_target_enc: Mapped[str | None] = mapped_column(Text)
    pending_secret_enc: Mapped[str | None] = mapped_column(Text)
    pending_requested_at: Mapped[datetime | None]
    pending_effective_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
