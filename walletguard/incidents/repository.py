"""The incident desk's queries: cases, marks, checklist ticks, notes, and the audit entries and
money movements a case is built from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from walletguard.audit.models import AuditEntry, AuditHead
from walletguard.audit.service import HEAD_ID
from walletguard.identity.models import Device, LoginSession
from walletguard.incidents.models import CaseNote, ChecklistTick, IncidentCase, MovementMark
from walletguard.kit.db import is_postgres

OPEN_STATUSES = ("open", "in_progress", "waiting_holder")


# -- cases -----------------------------------------------------------------------------------


def case_of_holder(db: Session, holder_id: uuid.UUID, case_id: uuid.UUID) -> IncidentCase | None:
    """The holder's case, or None — also for another holder's case (a 404, never a 403)."""
    case = db.get(IncidentCase, case_id)
    if case is None or case.holder_id != holder_id:
        return None
    return case


def cases_of_holder(db: Session, holder_id: uuid.UUID) -> list[IncidentCase]:
    return list(
        db.scalars(
            select(IncidentCase)
            .where(IncidentCase.holder_id == holder_id)
            .order_by(IncidentCase.opened_at.desc(), IncidentCase.id)
        ).all()
    )


def open_incident_of_holder(db: Session, holder_id: uuid.UUID) -> IncidentCase | None:
    """The holder's newest incident case still being worked on (a new report joins it)."""
    return db.scalar(
        select(IncidentCase)
        .where(
            IncidentCase.holder_id == holder_id,
            IncidentCase.category == "incident",
            IncidentCase.status.in_(OPEN_STATUSES),
        )
        .order_by(IncidentCase.opened_at.desc(), IncidentCase.id)
        .limit(1)
    )


def case_by_reference(db: Session, reference: str) -> IncidentCase | None:
    return db.scalar(select(IncidentCase).where(IncidentCase.reference == reference))


def reference_taken(db: Session, reference: str) -> bool:
    return db.scalar(select(IncidentCase.id).where(IncidentCase.reference == reference)) is not None


@dataclass(frozen=True)
class CaseFilter:
    status: str | None = None
    category: str | None = None
    assignee: str | None = None
    overdue_at: datetime | None = None  # only cases not resolved by their due time, as of then


def list_cases(
    db: Session, filters: CaseFilter, *, offset: int, limit: int
) -> tuple[list[IncidentCase], int]:
    query = select(IncidentCase)
    if filters.status is not None:
        query = query.where(IncidentCase.status == filters.status)
    if filters.category is not None:
        query = query.where(IncidentCase.category == filters.category)
    if filters.assignee is not None:
        query = query.where(IncidentCase.assignee == filters.assignee)
    if filters.overdue_at is not None:
        query = query.where(
            IncidentCase.status.in_(OPEN_STATUSES), IncidentCase.due_at <= filters.overdue_at
        )
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(
        query.order_by(IncidentCase.due_at, IncidentCase.id).offset(offset).limit(limit)
    ).all()
    return list(rows), int(total)


# -- marks, checklist, notes -----------------------------------------------------------------


def marks_of_case(db: Session, case_id: uuid.UUID) -> dict[uuid.UUID, MovementMark]:
    rows = db.scalars(select(MovementMark).where(MovementMark.case_id == case_id)).all()
    return {row.movement_id: row for row in rows}


def mark_of(db: Session, case_id: uuid.UUID, movement_id: uuid.UUID) -> MovementMark | None:
    return db.scalar(
        select(MovementMark).where(
            MovementMark.case_id == case_id, MovementMark.movement_id == movement_id
        )
    )


def ticks_of_case(db: Session, case_id: uuid.UUID) -> dict[str, ChecklistTick]:
    rows = db.scalars(select(ChecklistTick).where(ChecklistTick.case_id == case_id)).all()
    return {row.item: row for row in rows}


def notes_of_case(db: Session, case_id: uuid.UUID) -> list[CaseNote]:
    return list(
        db.scalars(
            select(CaseNote)
            .where(CaseNote.case_id == case_id)
            .order_by(CaseNote.created_at, CaseNote.id)
        ).all()
    )


# -- what a case is built from ----------------------------------------------------------------


def holder_audit_entries(
    db: Session, holder_id: uuid.UUID, since: datetime, *, limit: int
) -> list[AuditEntry]:
    """The holder's entries since then, oldest first; the newest ``limit`` if there are more
    (the attack is the recent part)."""
    newest = db.scalars(
        select(AuditEntry)
        .where(AuditEntry.holder_id == holder_id, AuditEntry.at >= since)
        .order_by(AuditEntry.seq.desc())
        .limit(limit)
    ).all()
    return list(reversed(newest))


def audit_links(db: Session, first_seq: int, last_seq: int) -> list[tuple[int, str, str]]:
    """(seq, prev_hash, hash) of every entry in a stretch of the chain: its skeleton."""
    rows = db.execute(
        select(AuditEntry.seq, AuditEntry.prev_hash, AuditEntry.hash)
        .where(AuditEntry.seq >= first_seq, AuditEntry.seq <= last_seq)
        .order_by(AuditEntry.seq)
    ).all()
    return [(int(seq), prev, digest) for seq, prev, digest in rows]


def devices_by_id(db: Session, holder_id: uuid.UUID) -> dict[uuid.UUID, Device]:
    rows = db.scalars(select(Device).where(Device.holder_id == holder_id)).all()
    return {row.id: row for row in rows}


def lock_live_sessions(db: Session, holder_id: uuid.UUID) -> None:
    """Lock the holder's live sessions first (PostgreSQL), in id order.

    A request that touched its own session row holds that lock until it commits, and then goes
    on to the wallet-state lock; taking the session rows before the wallet state (as that request
    does) keeps the freeze from waiting on it while it waits on the freeze.
    """
    if not is_postgres(db):
        return
    db.execute(
        select(LoginSession.id)
        .where(LoginSession.holder_id == holder_id, LoginSession.revoked_at.is_(None))
        .order_by(LoginSession.id)
        .with_for_update()
    )


def lock_audit_head(db: Session) -> tuple[int, str] | None:
    """The audit chain's head, locked until this transaction ends: nothing is appended between
    a package's chain proof and the receipt that closes it."""
    head = db.execute(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID).with_for_update()
    ).first()
    return (int(head[0]), str(head[1])) if head is not None else None
