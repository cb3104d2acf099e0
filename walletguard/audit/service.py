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
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ClauseElement,
    Table,
    TextClause,
    bindparam,
    column,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.util import find_tables

from walletguard.audit.models import AuditEntry, AuditHead
from walletguard.kit.clock import Clock
from walletguard.kit.db import CommitQueue, core, send_before_commit

GENESIS_HASH = "0" * 64
HEAD_ID = 1


def canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _hashed_fields(
    at: datetime,
    event: str,
    holder_id: uuid.UUID | None,
    device_id: uuid.UUID | None,
    ip: str | None,
    data: str,
) -> dict[str, Any]:
    """An entry's hashed keys other than ``seq`` and ``prev_hash``, as they are hashed."""
    return {
        "at": at.isoformat(timespec="microseconds"),
        "event": event,
        "holder_id": str(holder_id) if holder_id else None,
        "device_id": str(device_id) if device_id else None,
        "ip": ip,
        "data": data,
    }


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
            **_hashed_fields(at, event, holder_id, device_id, ip, data),
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _locked_head(session: Session) -> tuple[int, str]:
    """SQLite: the chain's tip (seq, hash), locked until the caller's transaction ends.

    On an empty log the head row does not exist yet, and ``FOR UPDATE`` locks nothing: two
    first entries would both become #1. So the row is created with ``ON CONFLICT DO NOTHING``
    first — a concurrent creator waits on the primary key until the other commits — and only
    then locked. Prebuilt statements on the session's connection (``kit.db.core``): every
    commit that chains runs them, the last of them while holding the one row all writers share.
    The session is flushed first, as the ORM form of the read did by itself.
    """
    if session.autoflush:
        session.flush()
    connection = core(session)
    head = connection.execute(_LOCK_HEAD).first()
    if head is None:
        connection.execute(_CREATE_HEAD)
        head = connection.execute(_LOCK_HEAD).one()
    return int(head[0]), str(head[1])


_LOG = cast(Table, AuditEntry.__table__)
_HEAD = cast(Table, AuditHead.__table__)
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()
# PostgreSQL creates the head in walletguard_audit_chain (migration 0010).
_CREATE_HEAD = (
    sqlite_insert(_HEAD)
    .values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
    .on_conflict_do_nothing(index_elements=[_HEAD.c.id])
)
_AUDIT_TABLES = frozenset({"audit_log", "audit_head"})


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
    """Append one entry in the caller's transaction; it commits or rolls back with it.

    The entry is chained (numbered, hashed, linked to the head) when the transaction commits,
    in one step with every other entry of the transaction: the chain's head row is locked only
    for those few statements before COMMIT, not for the whole transaction, so writers do not
    queue on it while they do their other work. ``at`` is the time of the event. Reads of the
    audit log in the same session chain what is pending first (they see their own entries);
    ``chain_pending`` does it on demand, for a caller that needs ``seq`` or ``hash`` now.
    """
    entry = AuditEntry(
        at=clock.now(),
        event=event,
        holder_id=holder_id,
        device_id=device_id,
        ip=ip,
        data=canonical_json(dict(data or {})),
    )
    _QUEUE.add(session, entry)
    return entry


def chain_pending(session: Session) -> None:
    """Chain the session's pending entries now: lock the head, number, hash and insert them."""
    _QUEUE.write_now(session)


def hash_prefix(entry: AuditEntry) -> str:
    """The entry's hashed material (``entry_hash``) up to its ``prev_hash`` value: ``prev_hash``
    and ``seq`` are the last keys of the canonical JSON, so the material is this, the previous
    hash, ``","seq":``, the number and ``}``. What PostgreSQL's ``walletguard_audit_chain``
    completes and hashes, without the application waiting for the head in between."""
    fields = _hashed_fields(
        entry.at, entry.event, entry.holder_id, entry.device_id, entry.ip, entry.data
    )
    return canonical_json(fields)[:-1] + ',"prev_hash":"'


def chain_entries_json(entries: list[AuditEntry]) -> str:
    """Entries not yet chained as PostgreSQL's ``walletguard_audit_chain`` takes them (migration
    0010): a JSON array of ``[hash_prefix, at, event, holder_id, device_id, ip, data]``."""
    return json.dumps(
        [
            [
                hash_prefix(entry),
                entry.at.isoformat(),
                entry.event,
                str(entry.holder_id) if entry.holder_id else None,
                str(entry.device_id) if entry.device_id else None,
                entry.ip,
                entry.data,
            ]
            for entry in entries
        ],
        ensure_ascii=False,
    )


def _chain(session: Session, pending: list[AuditEntry]) -> None:
    connection = core(session)
    if connection.dialect.name == "postgresql":
        # One statement numbers, hashes and inserts the entries and moves the head, under the
        # head's lock (migration 0010). At COMMIT it goes with COMMIT: the head is locked only
        # while the server runs it, and the entries learn their numbers and hashes from its
        # answer once committed.
        params = {"entries": chain_entries_json(pending)}

        def numbered(rows: list[Any]) -> None:
            for entry, (seq, prev_hash, digest) in zip(pending, rows[0][0], strict=True):
                entry.seq, entry.prev_hash, entry.hash = int(seq), str(prev_hash), str(digest)

        send_before_commit(session, _CHAIN_POSTGRESQL, params, answer=numbered)
        return
    seq, prev_hash = _locked_head(session)
    rows = []
    for entry in pending:
        seq += 1
        entry.seq = seq
        entry.prev_hash = prev_hash
        entry.hash = recompute(entry)
        prev_hash = entry.hash
        rows.append(
            {
                "seq": entry.seq,
                "at": entry.at,
                "event": entry.event,
                "holder_id": entry.holder_id,
                "device_id": entry.device_id,
                "ip": entry.ip,
                "data": entry.data,
                "prev_hash": entry.prev_hash,
                "hash": entry.hash,
            }
        )
    connection.execute(_INSERT_ENTRIES, rows)
    connection.execute(_MOVE_HEAD, {"head_seq": seq, "head_hash": prev_hash})


_INSERT_ENTRIES = insert(_LOG)
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == HEAD_ID)
    .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)
# migration 0010; its answer is [[seq, prev_hash, hash], ...], one per entry.
_CHAIN_POSTGRESQL = text("SELECT walletguard_audit_chain(CAST(:entries AS json))").columns(
    column("chained", JSON)
)

# Last of the commit queues: the head is locked only for the chaining and COMMIT.
_QUEUE: CommitQueue[AuditEntry] = CommitQueue("audit", _chain, order=100)


@event.listens_for(Session, "do_orm_execute")
def _reads_see_pending(state: ORMExecuteState) -> None:
    """A read of the audit log sees the entries its own transaction recorded."""
    if not _QUEUE.has_pending(state.session):
        return
    statement = state.statement
    if isinstance(statement, TextClause):
        touches = "audit_" in statement.text
    elif not isinstance(statement, ClauseElement):
        touches = True
    else:
        touches = any(
            getattr(table, "name", None) in _AUDIT_TABLES
            for table in find_tables(statement, include_joins=True, include_aliases=True)
        )
    if touches:
        chain_pending(state.session)


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
