"""The wallet's queries: cards, movements, limits, idempotency records, wallet states."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import (
    Select,
    Table,
    Uuid,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from walletguard.identity.service import PAYER_HELD, SESSION_BY_TOKEN, SESSION_COLUMNS
from walletguard.kit.db import UtcDateTime, core, is_postgres, one_of
from walletguard.wallet.models import (
    Card,
    IdempotencyRecord,
    LedgerAccount,
    LedgerTransaction,
    WalletLimit,
    WalletState,
)

ACTIVE_CARD_STATUSES = ("pending", "bound")
LIVE_MOVEMENT_STATUSES = ("pending", "posted")


# -- cards -----------------------------------------------------------------------------------


def card_of_holder(db: Session, holder_id: uuid.UUID, card_id: uuid.UUID) -> Card | None:
    """The holder's card, or None — also for another holder's card (a 404, never a 403)."""
    card = db.get(Card, card_id)
    if card is None or card.holder_id != holder_id:
        return None
    return card


def cards_of_holder(db: Session, holder_id: uuid.UUID, *, include_unbound: bool) -> list[Card]:
    query = select(Card).where(Card.holder_id == holder_id)
    if not include_unbound:
        query = query.where(Card.status != "unbound")
    return list(db.scalars(query.order_by(Card.created_at, Card.id)).all())


def active_cards_by_number(db: Session, number_index: str) -> list[Card]:
    return list(
        db.scalars(
            select(Card).where(
                Card.number_index == number_index, Card.status.in_(ACTIVE_CARD_STATUSES)
            )
        ).all()
    )


# -- movements -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MovementFilter:
    created_from: datetime | None = None
    created_before: datetime | None = None
    card_id: uuid.UUID | None = None
    kind: str | None = None
    status: str | None = None


def _movements_query(holder_id: uuid.UUID, filters: MovementFilter) -> Select[Any]:
    # A holder sees what they did and what was sent to them.
    query = select(LedgerTransaction).where(
        or_(
            LedgerTransaction.holder_id == holder_id,
            LedgerTransaction.counterparty_holder_id == holder_id,
        )
    )
    if filters.created_from is not None:
        query = query.where(LedgerTransaction.created_at >= filters.created_from)
    if filters.created_before is not None:
        query = query.where(LedgerTransaction.created_at < filters.created_before)
    if filters.card_id is not None:
        query = query.where(
            LedgerTransaction.card_id == filters.card_id,
            LedgerTransaction.holder_id == holder_id,
        )
    if filters.kind is not None:
        query = query.where(LedgerTransaction.kind == filters.kind)
    if filters.status is not None:
        query = query.where(LedgerTransaction.status == filters.status)
    return query


def list_movements(
    db: Session, holder_id: uuid.UUID, filters: MovementFilter, *, offset: int, limit: int | None
) -> tuple[list[LedgerTransaction], int]:
    query = _movements_query(holder_id, filters)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    ordered = query.order_by(LedgerTransaction.created_at.desc(), LedgerTransaction.id).offset(
        offset
    )
    if limit is not None:
        ordered = ordered.limit(limit)
    return list(db.scalars(ordered).all()), int(total)


def movement_visible_to(
    db: Session, holder_id: uuid.UUID, movement_id: uuid.UUID
) -> LedgerTransaction | None:
    txn = db.get(LedgerTransaction, movement_id)
    if txn is None or holder_id not in (txn.holder_id, txn.counterparty_holder_id):
        return None
    return txn


def expired_pending(
    db: Session, now: datetime, holder_id: uuid.UUID | None
) -> Sequence[LedgerTransaction]:
    # 'pending' written into the SQL: the partial index of pending movements serves this sweep
    # of every holder's only if the statement names its WHERE (a parameter would not, once
    # PostgreSQL plans the statement for any parameters).
    query = select(LedgerTransaction).where(
        one_of(_TXNS.c.status, ["pending"]),
        LedgerTransaction.expires_at.is_not(None),
        LedgerTransaction.expires_at <= now,
    )
    if holder_id is not None:
        query = query.where(LedgerTransaction.holder_id == holder_id)
    return db.scalars(query.order_by(LedgerTransaction.created_at)).all()


def pending_movements(
    db: Session, holder_id: uuid.UUID, *, card_id: uuid.UUID | None = None
) -> Sequence[LedgerTransaction]:
    query = select(LedgerTransaction).where(
        LedgerTransaction.holder_id == holder_id, LedgerTransaction.status == "pending"
    )
    if card_id is not None:
        query = query.where(LedgerTransaction.card_id == card_id)
    return db.scalars(query.order_by(LedgerTransaction.created_at)).all()


def spent_since(
    db: Session,
    since: datetime,
    kinds: Sequence[str],
    *,
    holder_id: uuid.UUID | None = None,
    card_id: uuid.UUID | None = None,
    device_id: uuid.UUID | None = None,
) -> int:
    """Pending and posted movements of these kinds since ``since``, by holder (and made from
    one of their devices) or by card: a range of the holder's movements or of the card's,
    never of everyone's day (there is no index by time alone, migration 0013)."""
    if holder_id is None and card_id is None:
        raise ValueError("spent_since counts a holder's movements or a card's")
    query = select(func.coalesce(func.sum(LedgerTransaction.amount_fen), 0)).where(
        LedgerTransaction.created_at >= since,
        LedgerTransaction.kind.in_(kinds),
        LedgerTransaction.status.in_(LIVE_MOVEMENT_STATUSES),
    )
    if holder_id is not None:
        query = query.where(LedgerTransaction.holder_id == holder_id)
    if card_id is not None:
        query = query.where(LedgerTransaction.card_id == card_id)
    if device_id is not None:
        query = query.where(LedgerTransaction.device_id == device_id)
    return int(db.scalar(query) or 0)


# -- limits ----------------------------------------------------------------------------------


def limit_settings(
    db: Session, holder_id: uuid.UUID, card_id: uuid.UUID | None, period: str
) -> list[WalletLimit]:
    query = select(WalletLimit).where(
        WalletLimit.holder_id == holder_id, WalletLimit.period == period
    )
    query = query.where(
        WalletLimit.card_id.is_(None) if card_id is None else WalletLimit.card_id == card_id
    )
    return list(db.scalars(query.order_by(WalletLimit.id)).all())


# -- wallet state (kill switch and per-holder movement lock) ---------------------------------


def lock_wallet_state(db: Session, holder_id: uuid.UUID, now: datetime) -> WalletState:
    """The holder's wallet state, created if need be, locked for this transaction.

    Every movement takes this lock first: it serialises one holder's movements, so the kill
    switch and the daily limits are judged against everything that committed before. The row
    almost always exists: one locking SELECT, and only when it finds nothing the INSERT.
    """
    state = db.execute(_LOCK_STATE, {"state_holder": holder_id}).scalar_one_or_none()
    if state is not None:
        return state
    insert_fn = postgresql.insert if is_postgres(db) else sqlite.insert
    db.execute(
        insert_fn(WalletState)
        .values(holder_id=holder_id, created_at=now)
        .on_conflict_do_nothing(index_elements=[WalletState.holder_id])
    )
    return db.execute(_LOCK_STATE, {"state_holder": holder_id}).scalar_one()


# An ORM select (it loads the WalletState), so the session flushes first: a request's own
# session-row touch is written, and locked, before the wallet state (see incidents).
_LOCK_STATE = (
    select(WalletState)
    .where(WalletState.holder_id == bindparam("state_holder", type_=Uuid()))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


@dataclass(frozen=True)
class MovementFacts:
    """What a new movement of a holder is judged on, read in one statement under the holder's
    wallet-state lock."""

    spent_today_fen: int  # the holder's counted movements since local midnight
    has_limit_settings: bool  # any limit setting of the holder's own (else the defaults)
    expired_pending: bool  # a pending movement past its expiry, to void first
    available_fen: int | None  # the holder account's balance minus holds (None: no account)


_TXNS = cast(Table, LedgerTransaction.__table__)
_LIMITS = cast(Table, WalletLimit.__table__)
_ACCOUNTS = cast(Table, LedgerAccount.__table__)
_KEYS = cast(Table, IdempotencyRecord.__table__)


@functools.cache
def _movement_facts_statement(counted_kinds: tuple[str, ...]) -> Select[Any]:
    """Built once for each set of counted kinds (there is one: the limits' kinds)."""
    txn = _TXNS.c
    since = bindparam("since", type_=UtcDateTime())
    now = bindparam("now", type_=UtcDateTime())
    holder = bindparam("facts_holder", type_=Uuid())
    # Two ranges of the holder's rows by index, not every row the holder ever had: the day's
    # movements ((holder_id, created_at)) and the pending ones (the partial index, which the
    # planner can use because 'pending' is written into the SQL).
    spent = (
        select(func.coalesce(func.sum(txn.amount_fen), 0))
        .where(
            txn.holder_id == holder,
            txn.created_at >= since,
            one_of(txn.kind, counted_kinds),
            one_of(txn.status, LIVE_MOVEMENT_STATUSES),
        )
        .scalar_subquery()
    )
    expired = (
        select(txn.id)
        .where(
            txn.holder_id == holder,
            txn.status == literal_column("'pending'"),
            txn.expires_at <= now,
        )
        .exists()
    )
    has_settings = (
        select(_LIMITS.c.id)
        .where(_LIMITS.c.holder_id == holder, _LIMITS.c.card_id.is_(None))
        .exists()
    )
    available = (
        select(_ACCOUNTS.c.balance_fen - _ACCOUNTS.c.pending_fen)
        .where(_ACCOUNTS.c.code == bindparam("account_code"))
        .scalar_subquery()
    )
    return select(
        spent.label("spent_today_fen"),
        expired.label("expired_pending"),
        has_settings.label("has_limit_settings"),
        available.label("available_fen"),
    )


def _facts_of(row: Sequence[Any]) -> MovementFacts:
    """The facts from the columns of ``_movement_facts_statement``, in its order."""
    return MovementFacts(
        spent_today_fen=int(row[0]),
        expired_pending=bool(row[1]),
        has_limit_settings=bool(row[2]),
        available_fen=None if row[3] is None else int(row[3]),
    )


def movement_facts(
    db: Session,
    holder_id: uuid.UUID,
    *,
    since: datetime,
    now: datetime,
    counted_kinds: Sequence[str],
    holder_account_code: str,
) -> MovementFacts:
    # Before every movement, so on the connection; flushed first, as the ORM read it replaces
    # was (autoflush): whatever the request changed so far is what the facts are read from.
    db.flush()
    params = _facts_params(holder_id, since, now, holder_account_code)
    row = core(db).execute(_movement_facts_statement(tuple(counted_kinds)), params).one()
    return _facts_of(row)


def _facts_params(
    holder_id: uuid.UUID, since: datetime, now: datetime, holder_account_code: str
) -> dict[str, Any]:
    """The parameters of ``_movement_facts_statement`` (alone or inside the wallet lock's)."""
    return {
        "facts_holder": holder_id,
        "since": since,
        "now": now,
        "account_code": holder_account_code,
    }


def wallet_state(db: Session, holder_id: uuid.UUID) -> WalletState | None:
    return db.get(WalletState, holder_id)


class KillSwitch(Protocol):
    """The kill switch of a holder's wallet: a ``WalletState``, or its two columns alone."""

    @property
    def closed_at(self) -> datetime | None: ...
    @property
    def reopens_at(self) -> datetime | None: ...


class LockedWallet(NamedTuple):
    """What the lock taken before every movement read: columns, not the entity."""

    kill_switch: KillSwitch
    facts: MovementFacts  # as of the moment the lock was taken


def lock_wallet_with_facts(
    db: Session,
    holder_id: uuid.UUID,
    *,
    since: datetime,
    now: datetime,
    counted_kinds: Sequence[str],
    holder_account_code: str,
) -> LockedWallet | None:
    """SQLite: the holder's kill switch with the wallet state locked (like
    ``lock_wallet_state``) and, in the same statement, the facts a new movement is judged on
    (``movement_facts``, read under that lock); None when the holder has no wallet state yet
    (nothing read, nothing locked). SQLite runs one writer at a time (``BEGIN IMMEDIATE``), so
    nothing commits between the statement's start and the lock; on PostgreSQL something can,
    and the facts are read by a statement after the lock (``lock_wallet_with_payer``).
    Flushed first, as an ORM statement would be: the request's own session-row touch is
    written, and locked, before the wallet state (see incidents)."""
    db.flush()
    params = {
        "state_holder": holder_id,
        **_facts_params(holder_id, since, now, holder_account_code),
    }
    row = core(db).execute(_lock_with_facts_statement(tuple(counted_kinds)), params).first()
    if row is None:
        return None
    return LockedWallet(row, _facts_of(row[2:]))


@functools.cache
def _lock_with_facts_statement(counted_kinds: tuple[str, ...]) -> Select[Any]:
    """The kill switch's columns and the movement facts' (one row of aggregates, joined),
    the wallet state alone locked (``FOR NO KEY UPDATE OF wallet_states``)."""
    facts = _movement_facts_statement(counted_kinds).subquery("facts")
    states = cast(Table, WalletState.__table__)
    return (
        select(states.c.closed_at, states.c.reopens_at, *facts.c)
        .select_from(states.join(facts, true()))
        .where(states.c.holder_id == bindparam("state_holder", type_=Uuid()))
        .with_for_update(key_share=True, of=states)
    )


@functools.cache
def _lock_with_payer_statement() -> Select[Any]:
    """PostgreSQL: the kill switch's columns, the wallet state locked, and identity's
    ``PAYER_HELD`` row joined (its PIN counter held by its data-modifying WITH)."""
    states = cast(Table, WalletState.__table__)
    payer = PAYER_HELD.subquery("payer")
    return (
        select(states.c.closed_at, states.c.reopens_at, *payer.c)
        .select_from(states.join(payer, true()))
        .where(states.c.holder_id == bindparam("state_holder", type_=Uuid()))
        .with_for_update(key_share=True, of=states)
    )


class LockedWithPayer(NamedTuple):
    kill_switch: KillSwitch
    payer: Sequence[Any]  # PAYER_HELD's row


def lock_wallet_with_payer(
    db: Session, holder_id: uuid.UUID, payer_params: Mapping[str, Any]
) -> LockedWithPayer | None:
    """PostgreSQL: the holder's wallet state locked (like ``lock_wallet_state``) and, in the
    same statement, what the payment password reads (identity's ``PAYER_HELD`` with
    ``payer_params``: the PIN's attempt counter held, the holder, the paying device, the alert
    channels): one round trip where a movement made two. None when the holder has no wallet
    state yet or is not found (the counter's hold, if taken, is this transaction's and taken
    again by the caller's own read).

    Not the movement's facts: a statement reads with the snapshot taken when it started, so
    one that waited for this lock would read spent-today and the balance from before the
    movement that held it committed (two parallel payments would each pass the daily limit).
    They are read by the next statement (``movement_facts``), after the lock."""
    db.flush()
    params = {"state_holder": holder_id, **payer_params}
    row = core(db).execute(_lock_with_payer_statement(), params).first()
    if row is None:
        return None
    return LockedWithPayer(row, row[2:])


# -- idempotency -----------------------------------------------------------------------------


def idempotency_record(db: Session, holder_id: uuid.UUID, key: str) -> IdempotencyRecord | None:
    return db.execute(
        select(IdempotencyRecord)
        .where(IdempotencyRecord.holder_id == holder_id, IdempotencyRecord.key == key)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _claimed_row(holder: Any) -> dict[str, Any]:
    """An idempotency key's row as a claim inserts it (``_claim_params``), its holder given."""
    return {
        "id": bindparam("record_id", type_=Uuid()),
        "holder_id": holder,
        "key": bindparam("record_key"),
        "request_hash": bindparam("record_hash"),
        "created_at": bindparam("record_at", type_=UtcDateTime()),
    }


def _claim_params(record: IdempotencyRecord) -> dict[str, Any]:
    """``_claimed_row``'s parameters (the holder's apart: each statement takes it its way)."""
    return {
        "record_id": record.id,
        "record_key": record.key,
        "record_hash": record.request_hash,
        "record_at": record.created_at,
    }


@functools.cache
def _claim_statement(dialect: str) -> ReturningInsert[uuid.UUID]:
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert_fn(_KEYS)
        .values(_claimed_row(bindparam("record_holder", type_=Uuid())))
        .on_conflict_do_nothing(index_elements=[_KEYS.c.holder_id, _KEYS.c.key])
        .returning(_KEYS.c.id)
    )


def claim_idempotency_key(db: Session, record: IdempotencyRecord) -> bool:
    """Insert the key unless the holder already used it; True if this request has it now.

    One statement. A concurrent request with the same key waits here (PostgreSQL) until the
    first one commits, and then finds it taken."""
    claimed = (
        core(db)
        .execute(
            _claim_statement(db.get_bind().dialect.name),
            {**_claim_params(record), "record_holder": record.holder_id},
        )
        .first()
    )
    return claimed is not None


@functools.cache
def _authenticate_and_claim_statement() -> Select[Any]:
    """PostgreSQL: the session the bearer token names (identity's ``SESSION_BY_TOKEN``, its
    columns first) and, in the same statement, the idempotency key claimed for that session's
    holder (``_claim_statement``'s INSERT, from the session's row): the claimed id last, NULL
    when the holder had used the key already. A token that finds no session claims nothing;
    one whose session is then refused (revoked, expired, idle, its device revoked or not
    verified) is refused before any work, and the refusal rolls the claim back with the rest."""
    session = SESSION_BY_TOKEN.cte("authenticated")
    row = _claimed_row(session.c.holder_id)
    claimed = (
        postgresql.insert(_KEYS)
        .from_select(list(row), select(*row.values()))
        .on_conflict_do_nothing(index_elements=[_KEYS.c.holder_id, _KEYS.c.key])
        .returning(_KEYS.c.id)
        .cte("claimed")
    )
    return select(*session.c, select(claimed.c.id).scalar_subquery()).add_cte(claimed)


class Claimed(NamedTuple):
    session: Sequence[Any] | None  # SESSION_BY_TOKEN's row, None when the token found none
    claimed: bool  # the key is this request's now


def authenticate_and_claim(db: Session, token_hash: str, record: IdempotencyRecord) -> Claimed:
    """One round trip where a money request would make two (PostgreSQL only): authenticate and
    claim the idempotency key (``record``, whose ``holder_id`` is not read: the session's holder
    is). What the request then checks of the session is identity's
    (``SessionCredentials.holder_of``); a key that was not claimed is looked up as
    ``claim_idempotency_key``'s caller does."""
    found = (
        core(db)
        .execute(
            _authenticate_and_claim_statement(),
            {"token_hash": token_hash, **_claim_params(record)},
        )
        .first()
    )
    if found is None:
        return Claimed(None, claimed=False)
    return Claimed(found[:SESSION_COLUMNS], claimed=found[SESSION_COLUMNS] is not None)


def store_idempotent_response(db: Session, record_id: uuid.UUID, status: int, body: str) -> None:
    core(db).execute(
        _STORE_RESPONSE,
        {"record_id": record_id, "new_status": status, "new_body": body},
    )


_STORE_RESPONSE = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("record_id", type_=Uuid()))
    .values(response_status=bindparam("new_status"), response_body=bindparam("new_body"))
)


def delete_idempotency_record(db: Session, record_id: uuid.UUID) -> None:
    db.execute(
        delete(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id)
        .execution_options(synchronize_session=False)
    )
