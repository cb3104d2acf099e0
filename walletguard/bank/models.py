"""The sandbox bank's own tables: card accounts and the challenges it sends codes for.

These stand in for a bank's systems, not for anything walletguard keeps: the wallet reaches them
only through the ``BankGateway`` port, and the money in them is not in walletguard's ledger.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.kit.db import Base, new_id


class BankCardAccount(Base):
    """A card the sandbox bank issued, with its balance and the phone number reserved for it."""

    __tablename__ = "bank_card_accounts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    bank_code: Mapped[str] = mapped_column(String(16))
    # Blind index (context ``card_number``) to find a card by its number; one account per number.
    number_index: Mapped[str] = mapped_column(String(64), unique=True)
    number_enc: Mapped[str] = mapped_column(Text)
    last4: Mapped[str] = mapped_column(String(4))
    holder_name_enc: Mapped[str] = mapped_column(Text)
    # 预留手机号: where the bank sends its dynamic passwords.
    reserved_phone_enc: Mapped[str] = mapped_column(Text)
    reserved_phone_index: Mapped[str] = mapped_column(String(64), index=True)
    balance_fen: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    blocked_at: Mapped[datetime | None]


class BankChallenge(Base):
    """A code the bank sent to a card's reserved phone, approving one binding or one debit."""

    __tablename__ = "bank_challenges"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    card_account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("bank_card_accounts.id"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(8))  # bind | debit
    # What a debit code approves; the code's hash covers them, so it approves nothing else.
    amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    payee: Mapped[str | None] = mapped_column(String(100))
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    tries: Mapped[int] = mapped_column(default=0)
    used_at: Mapped[datetime | None]
    # Set when the code can no longer be used for another reason: tries exhausted, cancelled.
    closed_at: Mapped[datetime | None]
