"""Every query of the risk engine: a few indexed reads per decision, and the review queue."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from walletguard.audit.models import AuditEntry
from walletguard.identity.models import Holder
from walletguard.messages.models import SimSwap
from walletguard.risk.models import RiskDecision, RiskPayee, RiskScamExposure

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

# Decisions older than this say nothing about the holder's habits.
HISTORY_ROWS = 200


def holder_facts(db: Session, holder_id: uuid.UUID) -> tuple[datetime, datetime | None]:
    """When the account was opened, and the last SIM swap of its bound number.

    A read-only join into identity's and messages' tables by the phone's blind index, instead of
    decrypting the profile and asking twice: it runs before every decision."""
    row = db.execute(
        select(Holder.created_at, func.max(SimSwap.swapped_at))
        .select_from(Holder)
        .outerjoin(SimSwap, SimSwap.phone_index == Holder.phone_index)
        .where(Holder.id == holder_id)
        .group_by(Holder.created_at)
    ).one()
    return row[0], row[1]


def audit_events_since(
    db: Session, holder_id: uuid.UUID, since: datetime
) -> Sequence[tuple[str, datetime, uuid.UUID | None, str]]:
    rows = db.execute(
        select(AuditEntry.event, AuditEntry.at, AuditEntry.device_id, AuditEntry.data)
        .where(
            AuditEntry.holder_id == holder_id,
            AuditEntry.at >= since,
            AuditEntry.event.in_(list(AUDIT_STEPS)),
        )
        .order_by(AuditEntry.seq)
    ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


class Past(NamedTuple):
    """What the signals need of an earlier decision (columns only: no ORM objects)."""

    created_at: datetime
    kind: str
    action: str
    outcome: str
    amount_fen: int | None
    card_id: uuid.UUID | None
    payee_key: str | None
    payee_new: bool | None
    session_id: uuid.UUID | None
    place: str | None
    lat: float | None
    lon: float | None


def history(db: Session, holder_id: uuid.UUID, since: datetime) -> list[Past]:
    """The holder's decisions since then, newest first (bounded)."""
    rows = db.execute(
        select(
            RiskDecision.created_at,
            RiskDecision.kind,
            RiskDecision.action,
            RiskDecision.outcome,
            RiskDecision.amount_fen,
            RiskDecision.card_id,
            RiskDecision.payee_key,
            RiskDecision.payee_new,
            RiskDecision.session_id,
            RiskDecision.place,
            RiskDecision.lat,
            RiskDecision.lon,
        )
        .where(RiskDecision.holder_id == holder_id, RiskDecision.created_at >= since)
        .order_by(RiskDecision.created_at.desc())
        .limit(HISTORY_ROWS)
    ).all()
    return [Past._make(row) for row in rows]


def decisions_since(db: Session, holder_id: uuid.UUID, since: datetime) -> Sequence[RiskDecision]:
    """The holder's decisions, newest first (bounded)."""
    return db.scalars(
        select(RiskDecision)
        .where(RiskDecision.holder_id == holder_id, RiskDecision.created_at >= since)
        .order_by(RiskDecision.created_at.desc())
        .limit(HISTORY_ROWS)
    ).all()


def payee(db: Session, holder_id: uuid.UUID, payee_key: str) -> RiskPayee | None:
    return db.get(RiskPayee, (holder_id, payee_key))


def last_scam_exposure(
    db: Session, holder_id: uuid.UUID, since: datetime
) -> Sequence[tuple[datetime, str | None]]:
    rows = db.execute(
        select(RiskScamExposure.received_at, RiskScamExposure.payee_key)
        .where(RiskScamExposure.holder_id == holder_id, RiskScamExposure.received_at >= since)
        .order_by(RiskScamExposure.received_at.desc())
        .limit(50)
    ).all()
    return [(row[0], row[1]) for row in rows]


def spread(
    db: Session,
    holder_id: uuid.UUID,
    since: dict[str, datetime],
    payee_key: str | None,
    ip_key: str | None,
    device_key: str | None,
) -> tuple[int, int, int]:
    """How many *other* holders share this payee, IP and device (each in its own window):
    one round trip, three COUNT(DISTINCT …) over their own indexes."""

    def distinct(column: Any, value: str | None, start: datetime) -> Any:
        if value is None:
            return literal(0)
        return (
            select(func.count(func.distinct(RiskDecision.holder_id)))
            .where(
                column == value,
                RiskDecision.created_at >= start,
                RiskDecision.holder_id != holder_id,
            )
            .scalar_subquery()
        )

    row = db.execute(
        select(
            distinct(RiskDecision.payee_key, payee_key, since["payee"]),
            distinct(RiskDecision.ip_key, ip_key, since["ip"]),
            distinct(RiskDecision.device_key, device_key, since["device"]),
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


def pending_review(db: Session, *, offset: int, limit: int) -> tuple[list[RiskDecision], int]:
    query = select(RiskDecision).where(RiskDecision.review == "pending")
    total = int(db.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = db.scalars(
        query.order_by(RiskDecision.created_at.desc(), RiskDecision.id).offset(offset).limit(limit)
    ).all()
    return list(rows), total


def expired_holds(db: Session, now: datetime) -> Sequence[RiskDecision]:
    return db.scalars(
        select(RiskDecision)
        .where(
            RiskDecision.review == "pending",
            RiskDecision.outcome == "hold",
            RiskDecision.expires_at <= now,
        )
        .limit(1000)
    ).all()


def approved_request(
    db: Session, holder_id: uuid.UUID, request_hash: str, since: datetime
) -> RiskDecision | None:
    """A confirmed or released hold of this very request, not yet used."""
    return db.scalar(
        select(RiskDecision)
        .where(
            RiskDecision.holder_id == holder_id,
            RiskDecision.request_hash == request_hash,
            RiskDecision.review.in_(["confirmed", "released"]),
            RiskDecision.reviewed_at >= since,
            RiskDecision.approval_used_at.is_(None),
        )
        .order_by(RiskDecision.reviewed_at.desc())
        .limit(1)
    )
