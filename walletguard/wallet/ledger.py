"""The double-entry ledger in integer fen (SPEC C4, STYLE rule 2).

Every movement is a two-legged transaction: ``amount_fen`` leaves ``from_account`` and arrives
at ``to_account``; when it posts, two postings (−x, +x) are written, so every transaction sums to
zero and so does the whole ledger. Accounts cache their balance (the sum of their postings) and
their holds (``pending_fen``, the pending outgoing movements); ``reconcile`` proves both.

Balances are changed only by conditional UPDATEs that carry their own check — ``balance_fen -
pending_fen >= x`` for an account that may not go negative — so the check and the write are one
atomic statement, never a read, a decision and a write across round trips. On PostgreSQL the rows
are also locked first, always in the same order (by account id), so two movements touching the
same accounts queue instead of deadlocking. Corrections are new, reversing transactions: postings
are never updated or deleted.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    Update,
    Uuid,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from walletguard.kit.clock import Clock
from walletguard.kit.db import UtcDateTime, core, is_postgres, one_of
from walletguard.kit.errors import Conflict
from walletguard.kit.money import format_yuan
from walletguard.wallet.models import LedgerAccount, LedgerTransaction, Posting

HOLDER = "holder"
SETTLEMENT = "settlement"
MERCHANT = "merchant"
EXTERNAL = "external"
# Only accounts that stand for the outside world may go below zero: a bank's settlement
# account is negative by what its cards paid in; a merchant by what it refunded beyond its takings.
MAY_GO_NEGATIVE = frozenset({SETTLEMENT, MERCHANT, EXTERNAL})

PENDING = "pending"
POSTED = "posted"
VOIDED = "voided"
FAILED = "failed"


class InsufficientBalance(Conflict):
    slug = "insufficient-balance"
    title_key = "wallet.insufficient_balance_title"

    def __init__(self) -> None:
        super().__init__("wallet.insufficient_balance")


class MovementNotPending(Conflict):
    slug = "movement-not-pending"
    title_key = "wallet.movement.not_pending_title"

    def __init__(self, status: str) -> None:
        super().__init__("wallet.movement.not_pending", extensions={"movement_status": status})


class RefundExceedsOriginal(Conflict):
    slug = "refund-exceeds-original"
    title_key = "wallet.refund.exceeds_title"

    def __init__(self, refundable_fen: int) -> None:
        super().__init__(
            "wallet.refund.exceeds",
            extensions={"refundable": format_yuan(refundable_fen, grouping=False)},
            refundable=format_yuan(refundable_fen),
        )


def holder_code(holder_id: uuid.UUID) -> str:
    return f"{HOLDER}:{holder_id}"


def merchant_code(name: str) -> str:
    return f"{MERCHANT}:{name}"


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


_ACCOUNTS = cast(Table, LedgerAccount.__table__)
_TXNS = cast(Table, LedgerTransaction.__table__)
_POSTINGS = cast(Table, Posting.__table__)


@functools.cache
def _by_code(count: int, lock: bool) -> Select[str, uuid.UUID]:
    """The accounts with ``count`` codes (``code_0``, ``code_1``, …), built once for each count:
    an ``in_()`` list would be rendered into the SQL again on every movement."""
    statement = (
        select(_ACCOUNTS.c.code, _ACCOUNTS.c.id)
        .where(or_(*(_ACCOUNTS.c.code == bindparam(f"code_{i}") for i in range(count))))
        .order_by(_ACCOUNTS.c.id)
    )
    # PostgreSQL sorts before it locks (ORDER BY runs below the row locks): id order, as lock().
    return statement.with_for_update(key_share=True) if lock else statement


_INSERT_TXN = insert(_TXNS)
_INSERT_POSTINGS = insert(_POSTINGS)


def _legs_statement(*, from_hold: bool) -> Update:
    """Debit ``x`` from ``debit_id`` and credit it to ``credit_id`` in one conditional UPDATE;
    from a hold, the hold becomes the debit. The debit's check is asked of the debited row for
    both rows, so the statement changes both or neither: a refusal leaves nothing to undo,
    even for a caller that goes on in the same transaction."""
    a = _ACCOUNTS.c
    debited = _ACCOUNTS.alias("debited").c
    debit_id = bindparam("debit_id", type_=Uuid())
    x = bindparam("x", type_=BigInteger())
    is_debit = a.id == debit_id
    if from_hold:
        debit_allowed: ColumnElement[bool] = debited.pending_fen >= x
        pending: ColumnElement[int] = case((is_debit, a.pending_fen - x), else_=a.pending_fen)
    else:
        debit_allowed = or_(
            debited.allow_negative.is_(True), debited.balance_fen - debited.pending_fen >= x
        )
        pending = a.pending_fen
    return (
        update(_ACCOUNTS)
        .where(
            a.id.in_([debit_id, bindparam("credit_id", type_=Uuid())]),
            exists().where(debited.id == debit_id, debit_allowed),
        )
        .values(balance_fen=a.balance_fen + case((is_debit, -x), else_=x), pending_fen=pending)
    )


_LEGS = _legs_statement(from_hold=False)
_LEGS_FROM_HOLD = _legs_statement(from_hold=True)


def _post_new_statement() -> Select[int]:
    """PostgreSQL: a new movement posted in one round trip. The legs' conditional UPDATE
    (``_LEGS``) comes first; the movement (``txn_<column>`` parameters) and its two postings
    are inserted only if it changed both rows, and the statement returns how many it changed:
    2, or 0 when the money is not there (then nothing at all was written). The postings'
    foreign key to the new movement is checked when the whole statement is done, so it finds
    it."""
    legs = _LEGS.returning(_ACCOUNTS.c.id).cte("legs")
    legs_moved = select(func.count()).select_from(legs).scalar_subquery()
    movement = select(*(bindparam(f"txn_{c.key}", type_=c.type) for c in _TXNS.columns)).where(
        legs_moved == 2
    )
    moved = (
        insert(_TXNS)
        .from_select([c.key for c in _TXNS.columns], movement)
        .returning(_TXNS.c.id)
        .cte("moved")
    )
    x = bindparam("x", type_=BigInteger())
    now = bindparam("now", type_=UtcDateTime())
    legs_posted = union_all(
        select(moved.c.id, bindparam("debit_id", type_=Uuid()), -x, now),
        select(moved.c.id, bindparam("credit_id", type_=Uuid()), x, now),
    )
    posted = (
        insert(_POSTINGS)
        .from_select(["transaction_id", "account_id", "amount_fen", "created_at"], legs_posted)
        .cte("posted")
    )
    return select(legs_moved).add_cte(moved, posted)


_POST_NEW_POSTGRESQL = _post_new_statement()


class Ledger:
    def __init__(self, db: Session, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    # -- accounts --------------------------------------------------------------------------

    def _insert_account(self, code: str, kind: str, holder_id: uuid.UUID | None) -> None:
        # Created on first use by whichever request gets there first; a concurrent creator
        # waits on the unique code and then finds the row.
        insert_fn = postgresql.insert if is_postgres(self.db) else sqlite.insert
        self.db.execute(
            insert_fn(LedgerAccount)
            .values(
                id=uuid.uuid4(),
                code=code,
                kind=kind,
                holder_id=holder_id,
                balance_fen=0,
                pending_fen=0,
                allow_negative=kind in MAY_GO_NEGATIVE,
                created_at=self.clock.now(),
            )
            .on_conflict_do_nothing(index_elements=[LedgerAccount.code])
        )

    def _ensure(self, code: str, kind: str, holder_id: uuid.UUID | None = None) -> LedgerAccount:
        existing = self.db.scalar(select(LedgerAccount).where(LedgerAccount.code == code))
        if existing is not None:
            return existing
        self._insert_account(code, kind, holder_id)
        return self.db.scalars(select(LedgerAccount).where(LedgerAccount.code == code)).one()

    def holder_account(self, holder_id: uuid.UUID) -> LedgerAccount:
        return self._ensure(f"{HOLDER}:{holder_id}", HOLDER, holder_id)

    def settlement_account(self, bank_code: str) -> LedgerAccount:
        return self._ensure(f"{SETTLEMENT}:{bank_code}", SETTLEMENT)

    def merchant_account(self, name: str) -> LedgerAccount:
        return self._ensure(f"{MERCHANT}:{name}", MERCHANT)

    def find_holder_account(self, holder_id: uuid.UUID) -> LedgerAccount | None:
        return self.db.scalar(
            select(LedgerAccount).where(LedgerAccount.code == f"{HOLDER}:{holder_id}")
        )

    def lock(self, *account_ids: uuid.UUID) -> None:
        """Lock the accounts a movement touches, in id order (PostgreSQL; SQLite has one writer)."""
        if not is_postgres(self.db):
            return
        # One statement: PostgreSQL sorts before it locks (ORDER BY runs below the row locks),
        # so the rows are locked in id order. FOR NO KEY UPDATE, not FOR UPDATE: the foreign
        # keys of other movements' rows take KEY SHARE locks on these accounts, and FOR UPDATE
        # would wait for them and deadlock; no key is changed here.
        self.db.execute(
            select(LedgerAccount.id)
            .where(LedgerAccount.id.in_(sorted(set(account_ids), key=str)))
            .order_by(LedgerAccount.id)
            .with_for_update(key_share=True)
        )

    def locked_accounts(
        self, wanted: Mapping[str, tuple[str, uuid.UUID | None]]
    ) -> dict[str, uuid.UUID]:
        """The ids of the accounts with these codes (``code: (kind, holder_id)``), created if
        need be and locked in id order like ``lock``: one statement when they all exist."""
        codes = sorted(wanted)
        query = _by_code(len(codes), is_postgres(self.db))
        params = {f"code_{i}": code for i, code in enumerate(codes)}
        found = {str(code): account_id for code, account_id in core(self.db).execute(query, params)}
        missing = [code for code in codes if code not in found]
        if not missing:
            return found
        for code in missing:
            kind, holder_id = wanted[code]
            self._insert_account(code, kind, holder_id)
        # The new rows are this transaction's (or a concurrent creator's, now committed).
        return {str(code): account_id for code, account_id in self.db.execute(query, params)}

    # -- movements -------------------------------------------------------------------------

    def _refresh(self, *objects: object) -> None:
        for obj in objects:
            self.db.refresh(obj)

    def hold(self, txn: LedgerTransaction) -> None:
        """Reserve a pending movement's amount on its source account (available drops now)."""
        self.lock(txn.from_account_id, txn.to_account_id)
        account = LedgerAccount
        held = self.db.execute(
            update(account)
            .where(
                account.id == txn.from_account_id,
                or_(
                    account.allow_negative.is_(True),
                    account.balance_fen - account.pending_fen >= txn.amount_fen,
                ),
            )
            .values(pending_fen=account.pending_fen + txn.amount_fen)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(held) != 1:
            raise InsufficientBalance()
        txn.hold_account_id = txn.from_account_id
        self.db.flush()

    def _move_legs(self, txn: LedgerTransaction) -> None:
        """Both legs' balances in one conditional UPDATE, which changes both rows or neither
        (``_legs_statement``); InsufficientBalance when the money is not there. The rows are
        already locked (lock()), in id order, so this statement cannot deadlock on them."""
        legs = core(self.db).execute(
            _LEGS_FROM_HOLD if txn.hold_account_id == txn.from_account_id else _LEGS,
            {"debit_id": txn.from_account_id, "credit_id": txn.to_account_id, "x": txn.amount_fen},
        )
        if _rowcount(legs) != 2:
            raise InsufficientBalance()

    @staticmethod
    def _postings(txn: LedgerTransaction, now: datetime) -> list[dict[str, object]]:
        """The movement's two postings: its amount out of one account and into the other."""
        return [
            {
                "transaction_id": txn.id,
                "account_id": account,
                "amount_fen": amount,
                "created_at": now,
            }
            for account, amount in (
                (txn.from_account_id, -txn.amount_fen),
                (txn.to_account_id, txn.amount_fen),
            )
        ]

    def _apply_legs(self, txn: LedgerTransaction, now: datetime) -> None:
        self._move_legs(txn)
        self.db.add_all([Posting(**posting) for posting in self._postings(txn, now)])

    def record_pending(self, txn: LedgerTransaction) -> LedgerTransaction:
        txn.status = PENDING
        self.db.add(txn)
        self.db.flush()
        return txn

    def post_new(self, txn: LedgerTransaction, *, locked: bool = False) -> LedgerTransaction:
        """Record a movement and post it at once (no hold): both legs, or nothing.
        ``locked``: the caller has locked both accounts already (``locked_accounts``)."""
        now = self.clock.now()
        if not locked:
            self.lock(txn.from_account_id, txn.to_account_id)
        txn.status = POSTED
        txn.posted_at = now
        if locked:
            # The hot path (payments and transfers from the balance): Core statements for the
            # movement, its legs and its postings, no unit-of-work bookkeeping; ``txn`` stays
            # out of the session, as written. On PostgreSQL all three in one statement.
            self.db.flush()
            columns = {c.key: getattr(txn, c.key) for c in _TXNS.columns}
            if not is_postgres(self.db):
                # The legs first: refused, they leave nothing written.
                self._move_legs(txn)
                core(self.db).execute(_INSERT_TXN, columns)
                core(self.db).execute(_INSERT_POSTINGS, self._postings(txn, now))
                return txn
            params = {f"txn_{key}": value for key, value in columns.items()}
            params.update(
                debit_id=txn.from_account_id,
                credit_id=txn.to_account_id,
                x=txn.amount_fen,
                now=now,
            )
            if core(self.db).execute(_POST_NEW_POSTGRESQL, params).scalar_one() != 2:
                raise InsufficientBalance()
            return txn
        # The legs first (a Core statement: what is pending is flushed before it), so that a
        # refusal leaves nothing written.
        self.db.flush()
        self._move_legs(txn)
        self.db.add(txn)
        self.db.flush()
        self.db.add_all([Posting(**posting) for posting in self._postings(txn, now)])
        self.db.flush()
        return txn

    def post_pending(self, txn: LedgerTransaction) -> None:
        """Post a pending movement; MovementNotPending if it was voided or posted meanwhile."""
        now = self.clock.now()
        self.lock(txn.from_account_id, txn.to_account_id)
        claimed = self.db.execute(
            update(LedgerTransaction)
            .where(LedgerTransaction.id == txn.id, LedgerTransaction.status == PENDING)
            .values(status=POSTED, posted_at=now, expires_at=None)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(claimed) != 1:
            self._refresh(txn)
            raise MovementNotPending(txn.status)
        self._apply_legs(txn, now)
        self.db.flush()
        self._refresh(txn)

    def end_pending(self, txn: LedgerTransaction, status: str, reason: str) -> bool:
        """Void (or fail) a pending movement and release its hold; False if it was not pending."""
        assert status in (VOIDED, FAILED)
        ended = self.db.execute(
            update(LedgerTransaction)
            .where(LedgerTransaction.id == txn.id, LedgerTransaction.status == PENDING)
            .values(
                status=status, status_reason=reason, voided_at=self.clock.now(), expires_at=None
            )
            .execution_options(synchronize_session=False)
        )
        if _rowcount(ended) != 1:
            self._refresh(txn)
            return False
        if txn.hold_account_id is not None:
            self.db.execute(
                update(LedgerAccount)
                .where(LedgerAccount.id == txn.hold_account_id)
                .values(pending_fen=LedgerAccount.pending_fen - txn.amount_fen)
                .execution_options(synchronize_session=False)
            )
        self.db.flush()
        self._refresh(txn)
        return True

    def reverse(self, original: LedgerTransaction, refund: LedgerTransaction) -> None:
        """Post ``refund`` (kind refund, legs the other way) against a posted movement.

        The refundable rest is checked and reduced in one conditional UPDATE, so two partial
        refunds racing cannot together return more than was paid.
        """
        assert refund.amount_fen > 0
        counted = self.db.execute(
            update(LedgerTransaction)
            .where(
                LedgerTransaction.id == original.id,
                LedgerTransaction.status == POSTED,
                LedgerTransaction.refunded_fen + refund.amount_fen <= LedgerTransaction.amount_fen,
            )
            .values(refunded_fen=LedgerTransaction.refunded_fen + refund.amount_fen)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(counted) != 1:
            self._refresh(original)
            raise RefundExceedsOriginal(max(0, original.amount_fen - original.refunded_fen))
        refund.from_account_id = original.to_account_id
        refund.to_account_id = original.from_account_id
        refund.reverses_id = original.id
        self.post_new(refund)
        self._refresh(original)


# -- reconciliation --------------------------------------------------------------------------


@dataclass
class LedgerReport:
    transactions: int = 0
    postings: int = 0
    total_debits_fen: int = 0
    total_credits_fen: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def reconcile(db: Session) -> LedgerReport:
    """Check the ledger against itself; every mismatch is named.

    Total debits equal total credits; every transaction's postings sum to zero and exist exactly
    when it is posted; every cached balance equals its postings and every cached hold its pending
    movements; no account that may not go negative is below zero; no movement refunded beyond
    its amount or beyond what its refunds add up to.
    """
    report = LedgerReport()
    debits, credits, count = db.execute(
        select(
            func.coalesce(
                func.sum(case((Posting.amount_fen < 0, -Posting.amount_fen), else_=0)), 0
            ),
            func.coalesce(func.sum(case((Posting.amount_fen > 0, Posting.amount_fen), else_=0)), 0),
            func.count(Posting.id),
        )
    ).one()
    report.total_debits_fen, report.total_credits_fen, report.postings = (
        int(debits),
        int(credits),
        int(count),
    )
    if report.total_debits_fen != report.total_credits_fen:
        report.mismatches.append(
            f"total debits {format_yuan(report.total_debits_fen)} != total credits "
            f"{format_yuan(report.total_credits_fen)}"
        )

    sums = (
        select(
            Posting.transaction_id.label("txn_id"),
            func.sum(Posting.amount_fen).label("total"),
            func.count(Posting.id).label("legs"),
        )
        .group_by(Posting.transaction_id)
        .subquery()
    )
    rows = db.execute(
        select(
            LedgerTransaction.id,
            LedgerTransaction.status,
            LedgerTransaction.amount_fen,
            func.coalesce(sums.c.total, 0),
            func.coalesce(sums.c.legs, 0),
        ).outerjoin(sums, sums.c.txn_id == LedgerTransaction.id)
    ).all()
    report.transactions = len(rows)
    for txn_id, status, amount, total, legs in rows:
        if int(total) != 0:
            report.mismatches.append(f"transaction {txn_id}: postings sum to {int(total)} fen")
        if status == POSTED and int(legs) != 2:
            report.mismatches.append(f"transaction {txn_id}: posted with {int(legs)} postings")
        if status != POSTED and int(legs) != 0:
            report.mismatches.append(f"transaction {txn_id}: {status} but has postings")
        if amount <= 0:
            report.mismatches.append(f"transaction {txn_id}: amount {amount} fen is not positive")

    posted_sums = (
        select(Posting.account_id.label("account_id"), func.sum(Posting.amount_fen).label("total"))
        .group_by(Posting.account_id)
        .subquery()
    )
    hold_sums = (
        select(
            LedgerTransaction.hold_account_id.label("account_id"),
            func.sum(LedgerTransaction.amount_fen).label("total"),
        )
        .where(  # the partial index of pending movements (``repository.expired_pending``)
            one_of(_TXNS.c.status, [PENDING]),
            LedgerTransaction.hold_account_id.is_not(None),
        )
        .group_by(LedgerTransaction.hold_account_id)
        .subquery()
    )
    accounts = db.execute(
        select(
            LedgerAccount.code,
            LedgerAccount.balance_fen,
            LedgerAccount.pending_fen,
            LedgerAccount.allow_negative,
            func.coalesce(posted_sums.c.total, 0),
            func.coalesce(hold_sums.c.total, 0),
        )
        .outerjoin(posted_sums, posted_sums.c.account_id == LedgerAccount.id)
        .outerjoin(hold_sums, hold_sums.c.account_id == LedgerAccount.id)
        .order_by(LedgerAccount.code)
    ).all()
    for code, balance, pending, allow_negative, posted, held in accounts:
        if balance != int(posted):
            report.mismatches.append(
                f"account {code}: cached balance {balance} fen != postings {int(posted)} fen"
            )
        if pending != int(held):
            report.mismatches.append(
                f"account {code}: cached pending {pending} fen != holds {int(held)} fen"
            )
        if not allow_negative and balance - pending < 0:
            report.mismatches.append(f"account {code}: available {balance - pending} fen < 0")

    refund = aliased(LedgerTransaction)
    refunds = db.execute(
        select(
            LedgerTransaction.id,
            LedgerTransaction.amount_fen,
            LedgerTransaction.refunded_fen,
            func.coalesce(
                select(func.sum(refund.amount_fen))
                .where(refund.reverses_id == LedgerTransaction.id, refund.status == POSTED)
                .scalar_subquery(),
                0,
            ),
        )
    ).all()
    for txn_id, amount, refunded, actual in refunds:
        if refunded != int(actual):
            report.mismatches.append(
                f"transaction {txn_id}: refunded_fen {refunded} != its refunds {int(actual)}"
            )
        if refunded > amount:
            report.mismatches.append(f"transaction {txn_id}: refunded {refunded} > {amount} fen")
    return report
