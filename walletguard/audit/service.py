"""Append to and verify the hash-chained audit log.

Each entry's hash covers its sequence number, time, event, actors, data and the previous entry's
hash, so an edited, deleted or reordered entry breaks the chain at a point ``verify`` names.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from walletguard.audit.models import AuditEntry, AuditHead
from walletguard.kit.clock import Clock

GENESIS_HASH = "0" * 64
HEAD_ID = 1


def canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(
    *,
    seq: int,
    at: datetime,
    event: str,
    holder_id: uuid.UUID | None,
    device_id: uuid.UUID | None,
    ip: str | None,
    data: str,
    prev_hash: str,
) -> str:
    material = canonical_json(
        {
            "seq": seq,
            "at": at.isoformat(timespec="microseconds"),
            "event": event,
            "holder_id": str(holder_id) if holder_id else None,
            "device_id": str(device_id) if device_id else None,
            "ip": ip,
            "data": data,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _locked_head(session: Session) -> AuditHead:
    """The chain's tip, locked until the caller's transaction ends.

    On an empty log the head row does not exist yet, and ``FOR UPDATE`` locks nothing: two
    first entries would both become #1. So the row is created with ``ON CONFLICT DO NOTHING``
    first — a concurrent creator waits on the primary key until the other commits — and only
    then locked.
    """
    locked = select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update()
    head = session.execute(locked).scalar_one_or_none()
    if head is not None:
        return head
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert(AuditHead)
        .values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
        .on_conflict_do_nothing(index_elements=[AuditHead.id])
    )
    return session.execute(locked).scalar_one()


def record(
    session: Session,
    clock: Clock,
    event: str,
    *,
    holder_id: uuid.UUID | None = None,
    device_id: uuid.UUID | None = None,
    ip: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction; it commits or rolls back with it."""
    head = _locked_head(session)
    at = clock.now()
    payload = canonical_json(dict(data or {}))
    seq = head.seq + 1
    digest = entry_hash(
        seq=seq,
        at=at,
        event=event,
        holder_id=holder_id,
        device_id=device_id,
        ip=ip,
        data=payload,
        prev_hash=head.hash,
    )
    entry = AuditEntry(
        seq=seq,
        at=at,
        event=event,
        holder_id=holder_id,
        device_id=device_id,
        ip=ip,
        data=payload,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(entry)
    head.seq = seq
    head.hash = digest
    session.flush()
    return entry


@dataclass
class ChainProblem:
    seq: int
    kind: str  # edited | missing | reordered | truncated
    message: str


@dataclass
class VerifyReport:
    entries: int = 0
    head_seq: int = 0
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _stream(session: Session, batch: int = 2000) -> Iterator[AuditEntry]:
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.seq > last).order_by(AuditEntry.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def recompute(entry: AuditEntry) -> str:
    return entry_hash(
        seq=entry.seq,
        at=entry.at,
        event=entry.event,
        holder_id=entry.holder_id,
        device_id=entry.device_id,
        ip=entry.ip,
        data=entry.data,
        prev_hash=entry.prev_hash,
    )


def _written_as(entry: AuditEntry, reach: int = 64) -> int | None:
    """The sequence number an entry's content was hashed under, if it was moved nearby."""
    for candidate in range(max(1, entry.seq - reach), entry.seq + reach + 1):
        if candidate == entry.seq:
            continue
        digest = entry_hash(
            seq=candidate,
            at=entry.at,
            event=entry.event,
            holder_id=entry.holder_id,
            device_id=entry.device_id,
            ip=entry.ip,
            data=entry.data,
            prev_hash=entry.prev_hash,
        )
        if digest == entry.hash:
            return candidate
    return None


def verify(session: Session) -> VerifyReport:
    """Walk the whole chain and report every break, each named by its sequence number."""
    report = VerifyReport()
    expected_seq = 1
    prev_hash = GENESIS_HASH
    for entry in _stream(session):
        report.entries += 1
        if entry.seq != expected_seq:
            report.problems.append(
                ChainProblem(
                    expected_seq,
                    "missing",
                    f"entries {expected_seq}..{entry.seq - 1} are missing (deleted)",
                )
            )
        if recompute(entry) != entry.hash:
            written_as = _written_as(entry)
            if written_as is not None:
                report.problems.append(
                    ChainProblem(
                        entry.seq,
                        "reordered",
                        f"entry {entry.seq} was written as entry {written_as} (reordered)",
                    )
                )
            else:
                report.problems.append(
                    ChainProblem(
                        entry.seq, "edited", f"entry {entry.seq} was edited after it was written"
                    )
                )
        elif entry.prev_hash != prev_hash and entry.seq == expected_seq:
            report.problems.append(
                ChainProblem(
                    entry.seq,
                    "reordered",
                    f"entry {entry.seq} does not follow entry {entry.seq - 1} "
                    "(reordered or replaced)",
                )
            )
        prev_hash = entry.hash
        expected_seq = entry.seq + 1
    head = session.get(AuditHead, HEAD_ID)
    report.head_seq = head.seq if head else 0
    if head is not None and head.seq >= expected_seq:
        report.problems.append(
            ChainProblem(
                expected_seq,
                "truncated",
                f"entries {expected_seq}..{head.seq} are missing from the end of the log",
            )
        )
    elif (
        head is not None
        and head.seq == expected_seq - 1
        and head.hash != prev_hash
        and all(problem.seq != head.seq for problem in report.problems)
    ):
        report.problems.append(
            ChainProblem(head.seq, "edited", f"entry {head.seq} does not match the chain head")
        )
    return report


def events_for_holder(
    session: Session, holder_id: uuid.UUID, *, offset: int, limit: int
) -> tuple[list[AuditEntry], int]:
    """A holder's own security events, newest first."""
    where = AuditEntry.holder_id == holder_id
    total = session.scalar(select(func.count()).select_from(AuditEntry).where(where)) or 0
    rows = session.scalars(
        select(AuditEntry).where(where).order_by(AuditEntry.seq.desc()).offset(offset).limit(limit)
    ).all()
    return list(rows), int(total)
