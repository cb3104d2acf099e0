"""The audit log: append-only, hash-chained. Rows are never updated or deleted (triggers refuse)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.kit.db import Base


class AuditEntry(Base):
    __tablename__ = "audit_log"
    # A holder's events of some kinds since a moment (every risk decision reads them): short
    # ranges of the index, however long the holder's history (migration 0011).
    __table_args__ = (Index("ix_audit_log_holder_id_event_at", "holder_id", "event", "at"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(64))
    holder_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ip: Mapped[str | None] = mapped_column(String(64))
    # Canonical JSON (sorted keys, no spaces) exactly as hashed; never holds raw PII.
    data: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """The chain's tip: one row, locked while an entry is appended so the chain stays linear."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
