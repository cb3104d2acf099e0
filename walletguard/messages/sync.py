"""Cloud message sync and the OTP guard (SPEC C6).

Messages land on the device that holds the SIM. Sync mirrors them to the holder's other devices
and the web — except one-time codes: with the OTP guard on, a synced copy of a code message says
the code is hidden and where to read it. That one rule is what would have kept the 88,130 yuan
of the source case in the victim's cards.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.identity.service import Principal
from walletguard.kit.errors import TooManyAttempts, WalletguardError
from walletguard.kit.i18n import Language, text
from walletguard.kit.ratelimit import AttemptCounters
from walletguard.messages.models import MessageSync, PhoneMessage, SimBinding, SimSwap
from walletguard.messages.service import BODY_CONTEXT, PhoneInbox

SIM_CLAIM_MINUTES = 10


class SyncNotEnabled(WalletguardError):
    status = 409
    slug = "sync-not-enabled"
    title_key = "messages.sync.not_enabled_title"


class SimClaimRefused(WalletguardError):
    status = 400
    slug = "sim-claim-refused"
    title_key = "messages.sim.claim_refused_title"
    keep_writes = True


@dataclass(frozen=True)
class VisibleMessage:
    id: int
    sender: str
    body: str
    received_at: datetime
    hidden_code: bool
    on_sim_device: bool


class CloudSync:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock
        self.inbox = PhoneInbox(db, env.cipher, env.clock)
        self.counters = AttemptCounters(db, env.clock)

    def _holder_phone(self, holder_id: uuid.UUID) -> str:
        from walletguard.identity.service import IdentityService

        return IdentityService(self.db, self.env).profile(holder_id).phone

    # -- which device holds the SIM ------------------------------------------------------

    def _claim_key(self, principal: Principal) -> bytes:
        return f"sim-claim:{principal.session_id}".encode()

    def _claim_code(self, principal: Principal, slot: int) -> str:
        digest = hmac.new(
            self.env.cipher.index_key, self._claim_key(principal) + str(slot).encode(), "sha256"
        ).digest()
        return f"{int.from_bytes(digest[:4], 'big') % 1_000_000:06d}"

    def start_sim_claim(self, principal: Principal) -> None:
        """Send a code to the holder's number; reading it on this device proves the SIM is here."""
        phone = self._holder_phone(principal.holder_id)
        slot = int(self.clock.now().timestamp()) // (SIM_CLAIM_MINUTES * 60)
        body = text("messages.sms.sim_claim", code=self._claim_code(principal, slot))
        self.inbox.send_sms(phone, sender="walletguard", body=body, purpose="sim_claim")

    def confirm_sim_claim(self, principal: Principal, code: str) -> None:
        key = f"sim-claim:{principal.holder_id}"
        tries = self.counters.reserve(key, lambda n: timedelta(hours=1) if n >= 5 else None)
        if not tries.allowed:
            raise TooManyAttempts("messages.sim.too_many", retry_after_s=tries.retry_after_s)
        slot = int(self.clock.now().timestamp()) // (SIM_CLAIM_MINUTES * 60)
        # The code of this window or the previous one, so a code sent just before a boundary works.
        valid = any(
            hmac.compare_digest(self._claim_code(principal, s), code.strip())
            for s in (slot, slot - 1)
        )
        if not valid:
            raise SimClaimRefused("messages.sim.claim_refused")
        self.counters.reset(key)
        phone_index = self.inbox.phone_index(self._holder_phone(principal.holder_id))
        now = self.clock.now()
        self.db.execute(
            update(SimBinding)
            .where(SimBinding.holder_id == principal.holder_id, SimBinding.ended_at.is_(None))
            .values(ended_at=now)
            .execution_options(synchronize_session=False)
        )
        self.db.add(
            SimBinding(
                holder_id=principal.holder_id,
                device_id=principal.device_id,
                phone_index=phone_index,
                verified_at=now,
            )
        )
        audit.record(
            self.db,
            self.clock,
            "messages.sim_claimed",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
        )

    def holds_sim(self, principal: Principal) -> bool:
        return (
            self.db.scalar(
                select(SimBinding.id).where(
                    SimBinding.device_id == principal.device_id, SimBinding.ended_at.is_(None)
                )
            )
            is not None
        )

    def record_sim_swap(self, phone_e164: str) -> None:
        """Sandbox carrier: the number moved to a new SIM; the old SIM's device loses it."""
        phone_index = self.inbox.phone_index(phone_e164)
        now = self.clock.now()
        self.db.add(SimSwap(phone_index=phone_index, swapped_at=now))
        self.db.execute(
            update(SimBinding)
            .where(SimBinding.phone_index == phone_index, SimBinding.ended_at.is_(None))
            .values(ended_at=now)
            .execution_options(synchronize_session=False)
        )
        audit.record(
            self.db, self.clock, "carrier.sim_swapped", data={"phone_index": phone_index[:12]}
        )

    def last_sim_swap(self, phone_e164: str) -> datetime | None:
        return self.db.scalar(
            select(SimSwap.swapped_at)
            .where(SimSwap.phone_index == self.inbox.phone_index(phone_e164))
            .order_by(SimSwap.swapped_at.desc())
            .limit(1)
        )

    # -- sync ----------------------------------------------------------------------------

    def _active_sync(self, device_id: uuid.UUID) -> MessageSync | None:
        return self.db.scalar(
            select(MessageSync).where(
                MessageSync.device_id == device_id, MessageSync.disabled_at.is_(None)
            )
        )

    def sync_enabled(self, principal: Principal) -> bool:
        return self._active_sync(principal.device_id) is not None

    def enable_sync(self, principal: Principal) -> bool:
        """Mirror messages to this device. Guarded: past cooling-off and a fresh step-up."""
        from walletguard.identity.guards import (
            SensitiveAction,
            require_past_cooling_off,
            require_step_up,
        )

        if self._active_sync(principal.device_id) is not None:
            return False
        require_past_cooling_off(self.db, self.env, principal, SensitiveAction.ENABLE_SYNC)
        # The risk engine is asked in there, before the grant is spent.
        require_step_up(self.db, self.env, principal, SensitiveAction.ENABLE_SYNC)
        self.db.add(
            MessageSync(
                holder_id=principal.holder_id,
                device_id=principal.device_id,
                enabled_at=self.clock.now(),
            )
        )
        # Announced on every other device and channel, with a "this was not me" link that
        # revokes the device that turned sync on.
        from walletguard.identity.links import announce

        announce(
            self.db,
            self.env,
            "security.sync_enabled",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=principal.device_id,
        )
        return True

    def disable_sync(
        self, holder_id: uuid.UUID, *, device_id: uuid.UUID | None, reason: str
    ) -> int:
        """Stop sync on one device, or on all of the holder's devices (device_id None)."""
        stmt = update(MessageSync).where(
            MessageSync.holder_id == holder_id, MessageSync.disabled_at.is_(None)
        )
        if device_id is not None:
            stmt = stmt.where(MessageSync.device_id == device_id)
        result = self.db.execute(
            stmt.values(disabled_at=self.clock.now(), disabled_reason=reason).execution_options(
                synchronize_session=False
            )
        )
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            audit.record(
                self.db,
                self.clock,
                "messages.sync_disabled",
                holder_id=holder_id,
                device_id=device_id,
                data={"devices": count, "reason": reason},
            )
        return count

    def visible_messages(
        self, principal: Principal, lang: Language, *, limit: int = 50
    ) -> list[VisibleMessage]:
        """What this device sees: everything on the SIM device; a guarded mirror elsewhere."""
        on_sim = self.holds_sim(principal)
        if not on_sim and not self.sync_enabled(principal):
            raise SyncNotEnabled("messages.sync.not_enabled")
        phone = self._holder_phone(principal.holder_id)
        rows = self.db.scalars(
            select(PhoneMessage)
            .where(PhoneMessage.phone_index == self.inbox.phone_index(phone))
            .order_by(PhoneMessage.received_at.desc(), PhoneMessage.id.desc())
            .limit(limit)
        ).all()
        # Imported here so the inbox works while the recogniser module is being replaced.
        from walletguard.messages.otp_guard import recognise_otp

        guard = self.env.settings.controls.otp_guard and not on_sim
        visible = []
        codes_shown = 0
        for row in rows:
            body = self.env.cipher.decrypt(row.body_enc, context=BODY_CONTEXT)
            is_code = recognise_otp(body) is not None
            hidden = guard and is_code
            codes_shown += is_code and not hidden
            visible.append(
                VisibleMessage(
                    id=row.id,
                    sender=row.sender,
                    body=text("otp_guard.hidden", lang) if hidden else body,
                    received_at=row.received_at,
                    hidden_code=hidden,
                    on_sim_device=on_sim,
                )
            )
        if not on_sim:
            audit.record(
                self.db,
                self.clock,
                "messages.synced_read",
                holder_id=principal.holder_id,
                device_id=principal.device_id,
                ip=principal.ip,
                data={
                    "messages": len(visible),
                    "codes_hidden": sum(m.hidden_code for m in visible),
                    # Evidence for the incident desk: one-time codes shown off the SIM device.
                    "codes_shown": codes_shown,
                },
            )
        return visible
