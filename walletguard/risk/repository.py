"""Every query of the risk engine: a few indexed reads per decision, and the review queue."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from walletguard.audit import service as audit
from walletguard.audit.models import AuditEntry
from walletguard.identity.models import Device, Holder
from walletguard.kit.db import core
from walletguard.messages.models import SimSwap
from walletguard.risk.models import (
    AUDIT_STEPS_WHERE,
    RiskDecision,
    RiskPayee,
    RiskScamExposure,
)
from walletguard.risk.velocity import WindowQuery

# Decisions older than this say nothing about the holder's habits.
HISTORY_ROWS = 200


# The reads and writes of every decision are built once, from the tables (Core, not ORM
# entities): a decision runs them on every login, sensitive action and movement, and building
# and loading ORM statements cost more than SQLite answering them. Core statements do not
# autoflush: ``SignalReader.read`` flushes the session once before it reads.
_DECISIONS = cast(Table, RiskDecision.__table__)
_PAYEES = cast(Table, RiskPayee.__table__)
_EXPOSURES = cast(Table, RiskScamExposure.__table__)
_AUDIT = cast(Table, AuditEntry.__table__)
_HOLDERS = cast(Table, Holder.__table__)
_SWAPS = cast(Table, SimSwap.__table__)
_DEVICES = cast(Table, Device.__table__)

_FACTS = (
    select(
        _HOLDERS.c.created_at.label("opened_at"),
        select(func.max(_SWAPS.c.swapped_at))
        .where(_SWAPS.c.phone_index == _HOLDERS.c.phone_index)
        .scalar_subquery()
        .label("last_sim_swap"),
        # What the holder paid the payee before (NULL payee key: no row, NULLs).
        select(_PAYEES.c.payments)
        .where(_PAYEES.c.holder_id == _HOLDERS.c.id, _PAYEES.c.payee_key == bindparam("payee_key"))
        .scalar_subquery()
        .label("payee_payments"),
        select(_PAYEES.c.trusted_at)
        .where(_PAYEES.c.holder_id == _HOLDERS.c.id, _PAYEES.c.payee_key == bindparam("payee_key"))
        .scalar_subquery()
        .label("payee_trusted_at"),
    )
    .where(_HOLDERS.c.id == bindparam("holder_id"))
    .subquery("facts")
)

_HISTORY = (
    select(
        _DECISIONS.c.created_at,
        _DECISIONS.c.kind,
        _DECISIONS.c.action,
        _DECISIONS.c.outcome,
        _DECISIONS.c.amount_fen,
        _DECISIONS.c.card_id,
        _DECISIONS.c.payee_key,
        _DECISIONS.c.payee_new,
        # Compared in SQL: this decision was made in the asking session (no UUID to load).
        (_DECISIONS.c.session_id == bindparam("session_id")).label("same_session"),
        _DECISIONS.c.place,
        _DECISIONS.c.lat,
        _DECISIONS.c.lon,
    )
    .where(
        _DECISIONS.c.holder_id == bindparam("holder_id"),
        _DECISIONS.c.created_at >= bindparam("since"),
    )
    .order_by(_DECISIONS.c.created_at.desc())
    .limit(HISTORY_ROWS)
)

# The newest of the rows ``_HISTORY`` would give that let the holder in somewhere known (at or
# before ``now``): the same bounded range, searched newest first and left at the first match.
_BOUNDED = _HISTORY.subquery("bounded")
_LAST_ALLOWED_PLACE = (
    select(*_BOUNDED.c)
    .where(
        _BOUNDED.c.outcome == "allow",
        _BOUNDED.c.lat.is_not(None),
        _BOUNDED.c.lon.is_not(None),
        _BOUNDED.c.created_at <= bindparam("now"),
    )
    .order_by(_BOUNDED.c.created_at.desc())
    .limit(1)
)

# The cards and the payees of the holder's movements since ``after`` (the last half hour) among
# the rows ``_HISTORY`` would give: its own bounded range (the rows newer than ``after`` are the
# newest of it), one row per distinct (card, payee), the card left out (NULL) of a withdrawal,
# which credits it. What "several cards drained" and "many new payees" count, without reading
# the rest of the history.
_NEWEST = _HISTORY.where(_DECISIONS.c.created_at > bindparam("after")).subquery("newest")
_RECENT_CARDS_AND_PAYEES = (
    select(
        case((_NEWEST.c.action != "withdraw", _NEWEST.c.card_id), else_=null()).label("card_id"),
        _NEWEST.c.payee_key,
    )
    .where(_NEWEST.c.kind == "movement")
    .distinct()
)

# One statement before every decision, its rows told apart by ``source``: the holder's facts
# on each of its devices (0: one row of facts and NULL device columns when it has none that
# count), its security events (1) and (at most 50 of) its scam exposures (2). Each row carries
# its own part's columns, NULLs of the same types in the others'.
_FACT_COLUMNS = (
    _FACTS.c.opened_at,
    _FACTS.c.last_sim_swap,
    _FACTS.c.payee_payments,
    _FACTS.c.payee_trusted_at,
)
_DEVICE_COLUMNS = (
    _DEVICES.c.id,
    _DEVICES.c.client_device_id,
    _DEVICES.c.first_seen_ip,
    _DEVICES.c.last_seen_ip,
    _DEVICES.c.first_seen_at,
    _DEVICES.c.last_seen_at,
    _DEVICES.c.trust,
    _DEVICES.c.revoked_at,
    _DEVICES.c.cooling_off_until,
)
_HOLDER_COLUMNS = _FACT_COLUMNS + _DEVICE_COLUMNS
_EVENT_COLUMNS = (_AUDIT.c.event, _AUDIT.c.at, _AUDIT.c.data, _EXPOSURES.c.payee_key)


def _nulls(columns: Sequence[Any]) -> list[Any]:
    return [null().cast(column.type) for column in columns]


_HOLDER_AND_DEVICES = select(
    literal(0).label("source"), *_HOLDER_COLUMNS, *_nulls(_EVENT_COLUMNS)
).select_from(
    _FACTS.outerjoin(
        _DEVICES,
        and_(
            _DEVICES.c.holder_id == bindparam("holder_id"),
            or_(_DEVICES.c.revoked_at.is_(None), _DEVICES.c.id == bindparam("device_id")),
        ),
    )
)

_AUDIT_EVENTS = select(
    literal(1),
    *_nulls(_HOLDER_COLUMNS),
    _AUDIT.c.event,
    _AUDIT.c.at,
    _AUDIT.c.data,
    null().cast(String),
).where(
    _AUDIT.c.holder_id == bindparam("holder_id"),
    _AUDIT.c.at >= bindparam("audit_since"),
    AUDIT_STEPS_WHERE,
)

_EXPOSURES_SINCE = (
    select(_EXPOSURES.c.received_at, _EXPOSURES.c.payee_key)
    .where(
        _EXPOSURES.c.holder_id == bindparam("holder_id"),
        _EXPOSURES.c.received_at >= bindparam("exposures_since"),
    )
    .order_by(_EXPOSURES.c.received_at.desc())
    .limit(50)
    .subquery()
)

_EXPOSURE_EVENTS = select(
    literal(2),
    *_nulls(_HOLDER_COLUMNS),
    null().cast(String),
    _EXPOSURES_SINCE.c.received_at,
    null().cast(Text),
    _EXPOSURES_SINCE.c.payee_key,
)
_HOLDER_AND_EVENTS = union_all(_HOLDER_AND_DEVICES, _AUDIT_EVENTS, _EXPOSURE_EVENTS)


@functools.lru_cache(maxsize=64)
def _holder_events_and_windows(windows: Any) -> Any:
    """PostgreSQL: ``_HOLDER_AND_EVENTS`` and one more row (3), the velocity windows' rows
    (``velocity.DatabaseVelocity.window_query``'s statement, one per shape) as one JSON array
    of arrays in the ``data`` column: the risk engine's first read and its velocity read in one
    round trip."""
    rows = windows.subquery("windows")
    as_json = select(
        func.coalesce(func.json_agg(func.json_build_array(*rows.c)), literal("[]").cast(JSON))
    ).scalar_subquery()
    return union_all(
        _HOLDER_AND_DEVICES,
        _AUDIT_EVENTS,
        _EXPOSURE_EVENTS,
        select(
            literal(3),
            *_nulls(_HOLDER_COLUMNS),
            null().cast(String),
            null().cast(_AUDIT.c.at.type),
            as_json.cast(Text),
            null().cast(String),
        ),
    )


_INSERT_DECISION = _DECISIONS.insert()


def _upsert_payee(dialect: str) -> Any:
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(_PAYEES)
    return statement.on_conflict_do_update(
        index_elements=[_PAYEES.c.holder_id, _PAYEES.c.payee_key],
        set_={
            "payments": _PAYEES.c.payments + 1,
            "total_fen": _PAYEES.c.total_fen + statement.excluded.total_fen,
            "last_at": statement.excluded.last_at,
        },
    )


_UPSERT_PAYEE = {dialect: _upsert_payee(dialect) for dialect in ("postgresql", "sqlite")}
# PostgreSQL: the decision (``decision_<column>`` parameters) and the payee's count, one statement.
_DECIDE_AND_COUNT_POSTGRESQL = _UPSERT_PAYEE["postgresql"].add_cte(
    _DECISIONS.insert()
    .values({c.key: bindparam(f"decision_{c.key}", type_=c.type) for c in _DECISIONS.columns})
    .cte("decided")
)


class PayeeStats(NamedTuple):
    payments: int
    trusted_at: datetime | None


class DeviceSeen(NamedTuple):
    """A device of the holder: where and when it was seen, and what its state is made of."""

    id: uuid.UUID
    client_device_id: str
    first_seen_ip: str | None
    last_seen_ip: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    trust: str
    revoked_at: datetime | None
    cooling_off_until: datetime | None


class HolderFacts(NamedTuple):
    opened_at: datetime
    last_sim_swap: datetime | None
    payee: PayeeStats | None


class RecentEvents(NamedTuple):
    # (event, at, data) of the holder's audit events named in AUDIT_STEPS, in no order.
    audit: list[tuple[str, datetime, str]]
    # (received_at, payee_key) of the latest 50 scam messages that reached the holder, in no order.
    exposures: list[tuple[datetime, str | None]]


class HolderAndEvents(NamedTuple):
    facts: HolderFacts
    devices: list[DeviceSeen]
    events: RecentEvents
    # The velocity windows' rows, when the read carried them (``windows``), else None.
    windows: list[list[Any]] | None


_FIRST_DEVICE = 1 + len(_FACT_COLUMNS)
_FIRST_EVENT = 1 + len(_HOLDER_COLUMNS)


def holder_and_events(
    db: Session,
    holder_id: uuid.UUID,
    payee_key: str | None,
    device_id: uuid.UUID | None,
    *,
    audit_since: datetime,
    exposures_since: datetime,
    windows: WindowQuery | None = None,
) -> HolderAndEvents:
    """When the account was opened, the last SIM swap of its bound number, what the holder
    paid this payee before, the holder's devices not revoked (and the acting one even if it
    is), its security events since ``audit_since`` and its scam exposures since
    ``exposures_since`` — one statement before every decision.

    A read-only look into identity's and messages' tables by the phone's blind index, instead
    of decrypting the profile and asking twice. The audit entries this transaction recorded
    are chained first (what a read of the audit log through the session does by itself), so
    they are among the events; then what the session changed is flushed, as a session read
    would.

    ``windows`` (PostgreSQL): the velocity windows' statement, read in the same statement; its
    rows come back as ``HolderAndEvents.windows`` for ``DatabaseVelocity.windows_from``."""
    audit.chain_pending(db)
    db.flush()
    params = {
        "holder_id": holder_id,
        "payee_key": payee_key,
        "device_id": device_id,
        "audit_since": audit_since,
        "exposures_since": exposures_since,
    }
    statement = _HOLDER_AND_EVENTS
    if windows is not None:
        statement = _holder_events_and_windows(windows.statement)
        params.update(windows.params)
    facts: HolderFacts | None = None
    devices: list[DeviceSeen] = []
    events = RecentEvents([], [])
    window_rows: list[list[Any]] | None = None
    event, at, data, exposure_payee = range(_FIRST_EVENT, _FIRST_EVENT + 4)
    for row in core(db).execute(statement, params):
        source = row[0]
        if source == 0:
            if facts is None:
                payee = PayeeStats(int(row[3]), row[4]) if row[3] is not None else None
                facts = HolderFacts(row[1], row[2], payee)
            if row[_FIRST_DEVICE] is not None:
                devices.append(DeviceSeen._make(row[_FIRST_DEVICE:_FIRST_EVENT]))
        elif source == 1:
            events.audit.append((row[event], row[at], row[data]))
        elif source == 2:
            events.exposures.append((row[at], row[exposure_payee]))
        else:
            window_rows = json.loads(row[data])
    if facts is None:
        raise NoResultFound(f"no holder {holder_id}")
    return HolderAndEvents(facts, devices, events, window_rows)


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
    same_session: bool | None
    place: str | None
    lat: float | None
    lon: float | None


def history(
    db: Session, holder_id: uuid.UUID, since: datetime, session_id: uuid.UUID | None = None
) -> list[Past]:
    """The holder's decisions since then, newest first (bounded); ``same_session`` says which
    were made in ``session_id``."""
    params = {"holder_id": holder_id, "since": since, "session_id": session_id}
    return core(db).execute(_HISTORY, params, row=Past._make).all()


def last_allowed_place(
    db: Session, holder_id: uuid.UUID, since: datetime, now: datetime
) -> Past | None:
    """The newest decision of ``history`` that let the holder in (``outcome`` allow) with a
    place, made at or before ``now``; without reading the rest of the history."""
    params = {"holder_id": holder_id, "since": since, "session_id": None, "now": now}
    found: Past | None = core(db).execute(_LAST_ALLOWED_PLACE, params, row=Past._make).first()
    return found


def recent_cards_and_payees(
    db: Session, holder_id: uuid.UUID, since: datetime, after: datetime
) -> tuple[set[uuid.UUID], set[str]]:
    """The cards debited and the payees paid by the holder's movements of ``history``
    (bounded alike) made after ``after``, refused ones included, without reading the rest."""
    params = {"holder_id": holder_id, "since": since, "session_id": None, "after": after}
    cards: set[uuid.UUID] = set()
    payees: set[str] = set()
    for card_id, payee_key in core(db).execute(_RECENT_CARDS_AND_PAYEES, params):
        if card_id is not None:
            cards.add(card_id)
        if payee_key is not None:
            payees.add(payee_key)
    return cards, payees


class PaidPayee(NamedTuple):
    """An allowed payment or transfer, counted on the holder's row for its payee."""

    payee_key: str
    amount_fen: int
    at: datetime


def store_decision(db: Session, values: dict[str, Any], *, paid: PaidPayee | None = None) -> None:
    """Insert the decision (``values``: its columns) and, for an allowed payment, count it on
    the payee's row (an upsert; the first payment creates the row). On PostgreSQL both in one
    statement."""
    if paid is None:
        core(db).execute(_INSERT_DECISION, values)
        return
    payee = {
        "holder_id": values["holder_id"],
        "payee_key": paid.payee_key,
        "payments": 1,
        "total_fen": paid.amount_fen,
        "first_at": paid.at,
        "last_at": paid.at,
        "trusted_at": None,
    }
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        decision = {f"decision_{key}": value for key, value in values.items()}
        core(db).execute(_DECIDE_AND_COUNT_POSTGRESQL, {**payee, **decision})
        return
    core(db).execute(_INSERT_DECISION, values)
    core(db).execute(_UPSERT_PAYEE[dialect], payee)


def decisions_since(db: Session, holder_id: uuid.UUID, since: datetime) -> Sequence[RiskDecision]:
    """The holder's decisions, newest first (bounded)."""
    return db.scalars(
        select(RiskDecision)
        .where(RiskDecision.holder_id == holder_id, RiskDecision.created_at >= since)
        .order_by(RiskDecision.created_at.desc())
        .limit(HISTORY_ROWS)
    ).all()


def payee(db: Session, holder_id: uuid.UUID, payee_key: str) -> RiskPayee | None:
    """The payee's row as an ORM object, for the holder's own changes (vouching for it)."""
    return db.get(RiskPayee, (holder_id, payee_key))


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
