"""Risk tables: decisions (with holds and their review), payees, scam exposures, velocity.

No raw personal data: IPs, device ids and payees are blind indexes (``cipher.blind_index``);
a place is province/city only; a merchant's name is not personal data, a recipient is masked.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.audit.models import AuditEntry
from walletguard.kit.db import Base, new_id, one_of

# Audit events the signals and sequence rules read, and the sequence step each one is.
AUDIT_STEPS: dict[str, str] = {
    "login.succeeded": "login",
    "security.device_added": "device_added",
    "security.sync_enabled": "sync_enabled",
    "security.credential_changed": "credential_changed",
    "payment_password.reset": "payment_password_reset",
    "security.factor_enrolled": "factor_changed",
    "security.factor_removed": "factor_changed",
    "security.phone_changed": "phone_changed",
}
# Before every decision the holder's events of those kinds since a moment are read
# (``repository.holder_and_events``): a partial index of them alone, a few entries a holder
# whatever its payments (migration 0012, which must list the same events: an event added here
# needs a migration that rebuilds it).
AUDIT_STEPS_WHERE = one_of(AuditEntry.__table__.c.event, list(AUDIT_STEPS))
Index(
    "ix_audit_log_risk_events",
    AuditEntry.holder_id,
    AuditEntry.at,
    postgresql_where=AUDIT_STEPS_WHERE,
    sqlite_where=AUDIT_STEPS_WHERE,
)


class RiskDecision(Base):
    __tablename__ = "risk_decisions"
    __table_args__ = (
        Index("ix_risk_decisions_holder_id_created_at", "holder_id", "created_at"),
        Index("ix_risk_decisions_payee_key_created_at", "payee_key", "created_at"),
        Index("ix_risk_decisions_ip_key_created_at", "ip_key", "created_at"),
        Index("ix_risk_decisions_device_key_created_at", "device_key", "created_at"),
        # Only held decisions are reviewed: the index holds those alone (migration 0013).
        Index(
            "ix_risk_decisions_review_created_at",
            "review",
            "created_at",
            postgresql_where=text("review IS NOT NULL"),
            sqlite_where=text("review IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"))
    # login | sensitive_action | movement; action: the sensitive action or the movement kind.
    kind: Mapped[str] = mapped_column(String(24))
    action: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ip_key: Mapped[str | None] = mapped_column(String(64))
    device_key: Mapped[str | None] = mapped_column(String(64))
    place: Mapped[str | None] = mapped_column(String(64))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    card_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    payee_key: Mapped[str | None] = mapped_column(String(64))
    payee_label: Mapped[str | None] = mapped_column(String(64))
    # The movement went to a payee the holder had never paid (sequence step "new_payee").
    payee_new: Mapped[bool | None]
    # allow | challenge | hold | block | freeze
    outcome: Mapped[str] = mapped_column(String(16))
    score: Mapped[int] = mapped_column(Integer)
    rules: Mapped[str] = mapped_column(Text)  # JSON list of the acting rules' ids
    shadow_rules: Mapped[str] = mapped_column(Text)  # JSON list: fired, recorded, not acted on
    reasons_zh: Mapped[str] = mapped_column(Text)
    reasons_en: Mapped[str] = mapped_column(Text)
    signals: Mapped[str] = mapped_column(Text)  # JSON: numbers, booleans, places, never PII
    # SHA-256 of (kind, action, amount, card, payee): a confirmed hold lets this one through.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    # Holds and blocks: pending -> confirmed | rejected | expired (holder), released | upheld
    # (operator); None for everything else.
    review: Mapped[str | None] = mapped_column(String(16))
    expires_at: Mapped[datetime | None]
    reviewed_at: Mapped[datetime | None]
    reviewed_by: Mapped[str | None] = mapped_column(String(80))
    approval_used_at: Mapped[datetime | None]


class RiskPayee(Base):
    """What the holder has paid a payee before; ``trusted_at`` when the holder vouched for it."""

    __tablename__ = "risk_payees"

    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), primary_key=True)
    payee_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    payments: Mapped[int] = mapped_column(Integer)
    total_fen: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    trusted_at: Mapped[datetime | None]


class RiskScamExposure(Base):
    """A scam message reached the holder (fed by the scam-detection capability, C9)."""

    __tablename__ = "risk_scam_exposures"
    __table_args__ = (
        Index("ix_risk_scam_exposures_holder_id_received_at", "holder_id", "received_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"))
    typology: Mapped[str] = mapped_column(String(48))
    payee_key: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime]


class RiskVelocityBucket(Base):
    """Count and sum under one key in one minute, in one of ``risk.velocity.SHARDS`` shards (the
    database velocity store, the embedded default). A writer adds to a shard of its own choice,
    so movements under one busy key (a carrier-grade NAT's IP, a popular merchant) rarely wait
    for each other's row; a window sums every shard of the minutes it spans: at most
    ``SHARDS`` rows a minute, however busy the key."""

    __tablename__ = "risk_velocity"

    key: Mapped[str] = mapped_column(String(96), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default="0")
    count: Mapped[int] = mapped_column(Integer)
    sum_fen: Mapped[int] = mapped_column(BigInteger)
