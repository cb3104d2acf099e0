"""Changing the bound phone number: binding a new authenticator (NIST SP 800-63B-4 4.1.2).

A fresh step-up, proof of the new SIM (a code sent to it), then a delay during which the change
is announced — on the old number too, by SMS, whatever the alert settings — and can be cancelled
from any signed-in device. Only then does the new number become the account's.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walletguard.bootstrap import Container
from walletguard.identity.guards import SensitiveAction, require_past_cooling_off, require_step_up
from walletguard.identity.links import announce
from walletguard.identity.mfa import MfaService, language_of
from walletguard.identity.models import Holder, PhoneChange
from walletguard.identity.phone import mask_phone, parse_mobile
from walletguard.identity.service import IdentityService, Principal
from walletguard.kit.errors import Conflict, InvalidInput, NotFound, WalletguardError
from walletguard.kit.i18n import text
from walletguard.messages.service import PHONE_CONTEXT, PhoneInbox

SENDER = "walletguard"
CODE_MINUTES = 10


class PhoneChangeNotReady(WalletguardError):
    status = 409
    slug = "phone-change-not-ready"
    title_key = "mfa.phone_change.not_ready_title"


class PhoneChangeService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock
        self.cipher = env.cipher
        self.mfa = MfaService(db, env)
        self.inbox = PhoneInbox(db, env.cipher, env.clock)

    def _holder(self, holder_id: uuid.UUID) -> Holder:
        holder = self.db.get(Holder, holder_id)
        if holder is None:
            raise NotFound("identity.holder.not_found")
        return holder

    def _change(self, principal: Principal, change_id: uuid.UUID) -> PhoneChange:
        change = self.db.get(PhoneChange, change_id)
        if (
            change is None
            or change.holder_id != principal.holder_id
            or change.cancelled_at is not None
            or change.completed_at is not None
        ):
            raise NotFound("mfa.phone_change.not_found")
        return change

    def pending(self, holder_id: uuid.UUID) -> PhoneChange | None:
        return self.db.scalar(
            select(PhoneChange)
            .where(
                PhoneChange.holder_id == holder_id,
                PhoneChange.cancelled_at.is_(None),
                PhoneChange.completed_at.is_(None),
            )
            .order_by(PhoneChange.requested_at.desc())
            .limit(1)
        )

    def request(self, principal: Principal, new_phone: str) -> PhoneChange:
        e164 = parse_mobile(new_phone)
        holder = self._holder(principal.holder_id)
        index = self.cipher.blind_index(e164, context=PHONE_CONTEXT)
        if index == holder.phone_index:
            raise InvalidInput("mfa.phone_change.same_number", extensions={"field": "new_phone"})
        require_past_cooling_off(self.db, self.env, principal, SensitiveAction.CHANGE_PHONE)
        if self.db.scalar(select(Holder.id).where(Holder.phone_index == index)) is not None:
            # Saying so reveals the number has an account, but only to a signed-in holder who
            # just passed a cooling-off check and is about to pass a step-up: acceptable.
            raise Conflict("mfa.phone_change.number_taken")
        require_step_up(self.db, self.env, principal, SensitiveAction.CHANGE_PHONE)
        now = self.clock.now()
        earlier = self.pending(holder.id)
        if earlier is not None:
            # One change at a time: a new request replaces an unfinished one.
            earlier.cancelled_at = now
        change_id = uuid.uuid4()
        code = f"{secrets.randbelow(10**6):06d}"
        change = PhoneChange(
            id=change_id,
            holder_id=holder.id,
            new_phone_index=index,
            new_phone_enc=self.cipher.encrypt(e164, context="phone_changes.new_phone"),
            code_hash=self.mfa.keyed_hash(f"phone-change:{change_id}", code),
            requested_by_device_id=principal.device_id,
            requested_at=now,
            code_expires_at=now + timedelta(minutes=CODE_MINUTES),
        )
        self.db.add(change)
        lang = language_of(holder)
        self.inbox.send_sms(
            e164,
            sender=SENDER,
            body=text("mfa.sms.new_phone_code", lang, code=code, minutes=CODE_MINUTES),
            purpose="phone_change_code",
        )
        self.db.flush()
        return change

    def confirm(self, principal: Principal, change_id: uuid.UUID, code: str) -> PhoneChange:
        """The code from the new SIM; the change is then scheduled and announced."""
        change = self._change(principal, change_id)
        if change.confirmed_at is not None:
            raise Conflict("mfa.phone_change.already_confirmed")
        key = self.mfa.reserve_attempt(principal.holder_id, "phone_change")
        expected = self.mfa.keyed_hash(f"phone-change:{change.id}", code.strip())
        if change.code_expires_at <= self.clock.now() or not hmac.compare_digest(
            expected, change.code_hash
        ):
            raise self.mfa.refusal(principal.holder_id, "phone_change", principal, "wrong_code")
        self.mfa.counters.reset(key)
        holder = self._holder(principal.holder_id)
        now = self.clock.now()
        change.confirmed_at = now
        change.effective_at = now + timedelta(hours=self.env.settings.phone_change_delay_hours)
        new_e164 = self.cipher.decrypt(change.new_phone_enc, context="phone_changes.new_phone")
        old_e164 = self.cipher.decrypt(holder.phone_enc, context="holders.phone")
        lang = language_of(holder)
        # On the old number directly, not only through the alert channels the holder chose.
        self.inbox.send_sms(
            old_e164,
            sender=SENDER,
            body=text(
                "mfa.sms.phone_change_notice",
                lang,
                new_phone=mask_phone(new_e164),
                effective_at=change.effective_at.strftime("%Y-%m-%d %H:%M UTC"),
            ),
            purpose="phone_change_notice",
        )
        announce(
            self.db,
            self.env,
            "security.phone_change_requested",
            holder_id=holder.id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=principal.device_id,
            data={
                "change_id": str(change.id),
                "new_phone_masked": mask_phone(new_e164),
                "effective_at": change.effective_at.isoformat(),
            },
        )
        return change

    def cancel(self, principal: Principal, change_id: uuid.UUID) -> None:
        change = self._change(principal, change_id)
        change.cancelled_at = self.clock.now()
        announce(
            self.db,
            self.env,
            "security.phone_change_cancelled",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=principal.device_id,
            data={"change_id": str(change.id)},
        )

    def complete(self, principal: Principal, change_id: uuid.UUID) -> int:
        """After the delay: the new number becomes the account's; other sessions end."""
        change = self._change(principal, change_id)
        now = self.clock.now()
        if change.effective_at is None:
            raise PhoneChangeNotReady("mfa.phone_change.not_confirmed")
        if now < change.effective_at:
            raise PhoneChangeNotReady(
                "mfa.phone_change.not_ready",
                extensions={"effective_at": change.effective_at.isoformat()},
            )
        holder = self._holder(principal.holder_id)
        old_e164 = self.cipher.decrypt(holder.phone_enc, context="holders.phone")
        new_e164 = self.cipher.decrypt(change.new_phone_enc, context="phone_changes.new_phone")
        try:
            with self.db.begin_nested():
                holder.phone_index = change.new_phone_index
                holder.phone_enc = self.cipher.encrypt(new_e164, context="holders.phone")
                self.db.flush()
        except IntegrityError as exc:
            # Someone registered the number during the delay.
            raise Conflict("mfa.phone_change.number_taken") from exc
        change.completed_at = now
        lang = language_of(holder)
        self.inbox.send_sms(
            old_e164,
            sender=SENDER,
            body=text("mfa.sms.phone_changed", lang, new_phone=mask_phone(new_e164)),
            purpose="phone_change_notice",
        )
        announce(
            self.db,
            self.env,
            "security.phone_changed",
            holder_id=holder.id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=principal.device_id,
            data={"change_id": str(change.id), "new_phone_masked": mask_phone(new_e164)},
        )
        # A new authenticator is bound: end every other session (ASVS 7.4.3).
        return IdentityService(self.db, self.env).revoke_other_sessions(
            principal, reason="phone_changed"
        )
