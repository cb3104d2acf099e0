"""The wallet's tables: bound cards, the double-entry ledger, idempotency keys, limits, and each
holder's wallet state (the kill switch).

Money is integer fen. A ledger transaction is a movement; its postings sum to zero, and an
account's cached ``balance_fen`` is the sum of its postings. ``pending_fen`` is the sum of the
holds (pending outgoing movements) on it; ``walletguard ledger check`` proves both.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
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


class Card(Base):
    """A bank card a holder bound (or tried to). Only ``last4`` ever leaves the server."""

    __tablename__ = "cards"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    number_enc: Mapped[str] = mapped_column(Text)
    # Blind index, context ``card_number``: finds the same card bound twice without decrypting.
    number_index: Mapped[str] = mapped_column(String(64), index=True)
    last4: Mapped[str] = mapped_column(String(4))
    bank_code: Mapped[str] = mapped_column(String(16))
    card_type: Mapped[str] = mapped_column(String(16))
    # pending (waiting for the bank's code) | bound | unbound | blocked
    status: Mapped[str] = mapped_column(String(16))
    # Blind index (context ``phone``) of the phone number reserved at the bank for this card.
    reserved_phone_index: Mapped[str] = mapped_column(String(64), index=True)
    binding_challenge_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime]
    bound_at: Mapped[datetime | None]
    unbound_at: Mapped[datetime | None]
    blocked_at: Mapped[datetime | None]


class LedgerAccount(Base):
    """One balance: a holder's wallet, a bank's settlement account, a merchant, the outside."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (
        # The database's own backstop under the conditional UPDATEs that keep balances whole.
        CheckConstraint(
            "allow_negative OR balance_fen - pending_fen >= 0", name="balance_covers_holds"
        ),
        CheckConstraint("pending_fen >= 0", name="pending_not_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    # holder:<uuid> | settlement:<bank code> | merchant:<name> | external:<name>
    code: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    holder_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("holders.id"), index=True)
    balance_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    pending_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    allow_negative: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]


class LedgerTransaction(Base):
    """One money movement: who, from which device and IP, how much, and where it stands."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        # A holder's movements since a moment (the day's, for the limits; the history, newest
        # first) and a holder's pending ones: ranges of the holder's rows, however many the
        # holder has (migration 0011).
        Index("ix_ledger_transactions_holder_id_created_at", "holder_id", "created_at"),
        Index(
            "ix_ledger_transactions_holder_id_pending",
            "holder_id",
            "expires_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # A transfer's recipient, a refund's original, a card: most movements (payments from
        # the balance) have none, and these indexes hold only the rows that have one; every
        # read by them asks for one value, which implies it is there (migration 0013).
        *(
            Index(
                f"ix_ledger_transactions_{name}",
                name,
                postgresql_where=text(f"{name} IS NOT NULL"),
                sqlite_where=text(f"{name} IS NOT NULL"),
            )
            for name in ("counterparty_holder_id", "card_id", "reverses_id")
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    # top_up | withdraw | payment | transfer | refund
    kind: Mapped[str] = mapped_column(String(16))
    # pending | posted | voided | failed
    status: Mapped[str] = mapped_column(String(16))
    # Why it was voided or failed: expired, cancelled, tries_exhausted, transactions_closed,
    # card_unbound, card_blocked, card_funds_insufficient.
    status_reason: Mapped[str | None] = mapped_column(String(32))
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"))
    # The receiving holder of a transfer (and of its refund's money back).
    counterparty_holder_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("holders.id"))
    device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ip: Mapped[str | None] = mapped_column(String(64))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    # Sum of the posted refunds of this movement; never more than amount_fen.
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    # balance | card: where the money comes from.
    source: Mapped[str] = mapped_column(String(8))
    card_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("cards.id"))
    # What the payer sees: merchant name, masked phone of a transfer's recipient, "top-up".
    payee: Mapped[str | None] = mapped_column(String(100))
    # What a transfer's recipient sees: the sender's masked phone.
    payer_label: Mapped[str | None] = mapped_column(String(100))
    risk_decision: Mapped[str] = mapped_column(String(16))
    # The bank challenge whose dynamic password confirms a card debit.
    bank_challenge_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Money goes from this account to that one (every movement is two legs of one amount).
    from_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"))
    to_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"))
    # The account whose pending_fen holds this movement's amount while it is pending.
    hold_account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_accounts.id"))
    reverses_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_transactions.id"))
    created_at: Mapped[datetime]
    posted_at: Mapped[datetime | None]
    voided_at: Mapped[datetime | None]
    # A pending movement not confirmed by then is voided.
    expires_at: Mapped[datetime | None]


class Posting(Base):
    """One leg of a transaction: a signed amount on one account. Never updated or deleted."""

    __tablename__ = "ledger_postings"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    transaction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ledger_transactions.id"), index=True
    )
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"), index=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class IdempotencyRecord(Base):
    """A client's Idempotency-Key for one money request and the first response it got."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("holder_id", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"))
    key: Mapped[str] = mapped_column(String(128))
    # SHA-256 of the operation and its canonical request, secrets left out.
    request_hash: Mapped[str] = mapped_column(String(64))
    # Empty while the first request is still running (its transaction holds the row).
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class WalletState(Base):
    """Per holder: whether all transaction functions are closed (the kill switch).

    Its row is also the holder's movement lock: every movement locks it first, so limits and the
    kill switch are checked against a consistent picture.
    """

    __tablename__ = "wallet_states"

    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), primary_key=True)
    closed_at: Mapped[datetime | None]
    closed_reason: Mapped[str | None] = mapped_column(String(64))
    # When a requested reopening takes effect (None: none requested).
    reopens_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class WalletLimit(Base):
    """One setting of a limit. The newest row already in effect is the limit; a raise waits
    for its ``effective_at``, and a later lowering supersedes it."""

    __tablename__ = "wallet_limits"

    # Ordered: settings made in the same instant still have a newest one.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    # None: the holder's own limit; otherwise the limit of that card.
    card_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("cards.id"))
    period: Mapped[str] = mapped_column(String(16))  # transaction | daily
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    effective_at: Mapped[datetime]
