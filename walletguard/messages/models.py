"""Phone inboxes: every SMS the platform (or a bank) sends lands here, on the number it was sent to.

The foundation uses it as the sandbox SMS carrier; cloud sync and the OTP guard build on it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.kit.db import Base, new_id


class PhoneMessage(Base):
    __tablename__ = "phone_messages"

    # Arrival order, even for messages that arrive in the same instant.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    # Blind index of the E.164 number (the number itself is personal data).
    phone_index: Mapped[str] = mapped_column(String(64), index=True)
    phone_enc: Mapped[str] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(String(64))
    # The body can carry one-time codes and names: encrypted at rest.
    body_enc: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]
    purpose: Mapped[str] = mapped_column(String(64))


class SimBinding(Base):
    """A device proved it holds the SIM of its holder's number (it read a code sent there)."""

    __tablename__ = "sim_bindings"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id"), index=True)
    phone_index: Mapped[str] = mapped_column(String(64), index=True)
    verified_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class MessageSync(Base):
    """Cloud message sync switched on for one device of a holder."""

    __tablename__ = "message_sync"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id"), index=True)
    enabled_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(64))


class SimSwap(Base):
    """The carrier moved a number to a new SIM (sandbox carrier signal; risk reads it)."""

    __tablename__ = "sim_swaps"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    phone_index: Mapped[str] = mapped_column(String(64), index=True)
    swapped_at: Mapped[datetime]
