"""Send an SMS to a number's inbox, and read an inbox (the sandbox SMS carrier)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from walletguard.kit.clock import Clock
from walletguard.kit.crypto import FieldCipher
from walletguard.messages.models import PhoneMessage

PHONE_CONTEXT = "phone"
BODY_CONTEXT = "phone_messages.body"


@dataclass(frozen=True)
class InboxMessage:
    sender: str
    body: str
    received_at: datetime
    purpose: str


class PhoneInbox:
    def __init__(self, db: Session, cipher: FieldCipher, clock: Clock) -> None:
        self.db = db
        self.cipher = cipher
        self.clock = clock

    def phone_index(self, phone_e164: str) -> str:
        return self.cipher.blind_index(phone_e164, context=PHONE_CONTEXT)

    def send_sms(self, phone_e164: str, *, sender: str, body: str, purpose: str) -> None:
        self.db.add(
            PhoneMessage(
                phone_index=self.phone_index(phone_e164),
                phone_enc=self.cipher.encrypt(phone_e164, context="phone_messages.phone"),
                sender=sender,
                body_enc=self.cipher.encrypt(body, context=BODY_CONTEXT),
                received_at=self.clock.now(),
                purpose=purpose,
            )
        )
        self.db.flush()

    def messages(self, phone_e164: str, *, limit: int = 50) -> list[InboxMessage]:
        rows = self.db.scalars(
            select(PhoneMessage)
            .where(PhoneMessage.phone_index == self.phone_index(phone_e164))
            .order_by(PhoneMessage.received_at.desc(), PhoneMessage.id.desc())
            .limit(limit)
        ).all()
        return [
            InboxMessage(
                sender=row.sender,
                body=self.cipher.decrypt(row.body_enc, context=BODY_CONTEXT),
                received_at=row.received_at,
                purpose=row.purpose,
            )
            for row in rows
        ]
