"""Getting back in without weakening anything (SPEC C1–C3).

- A **forgotten login password** is reset with an SMS code to the bound phone *and* any second
  factor the holder has enrolled: the reset never bypasses the second factor (ASVS 6.4.3).
- A **forgotten payment password** is reset with an SMS code plus another factor or a trusted
  device; only in the vulnerable profile (``sms_restricted`` off) does the SMS code suffice —
  the original product's hole.
- **Account recovery** when every factor is lost: identity check (bound phone, name, ID number),
  then a delay announced on every old channel and cancellable from any of them; the recovered
  account starts with every device untrusted and payments closed.
- **"This was not me"**: one signed link freezes payments and revokes the device it names.
"""

from __future__ import annotations

import hmac
import importlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.identity.guards import (
    STRONG_FACTORS,
    DeviceState,
    Factor,
    SensitiveAction,
    StepUpRequired,
    consume_grant,
    enrolled_factors,
    require_past_cooling_off,
    state_of,
)
from walletguard.identity.links import (
    CANCEL_RECOVERY,
    NOT_ME,
    LinkUsed,
    announce,
    read_link,
    sign_link,
)
from walletguard.identity.mfa import MfaService, StepUpFailed
from walletguard.identity.models import (
    Device,
    Holder,
    NotMeReport,
    PasswordReset,
    PhoneChange,
    RecoveryRequest,
)
from walletguard.identity.phone import parse_mobile
from walletguard.identity.service import (
    DeviceInfo,
    IdentityService,
    IssuedSession,
    Principal,
)
from walletguard.kit.crypto import hash_token
from walletguard.kit.errors import NotFound, TooManyAttempts, WalletguardError
from walletguard.messages.service import PHONE_CONTEXT

RESET_MINUTES = 15


class RecoveryNotReady(WalletguardError):
    status = 409
    slug = "recovery-not-ready"
    title_key = "mfa.recovery.not_ready_title"


class ResetRefused(WalletguardError):
    status = 400
    slug = "reset-refused"
    title_key = "mfa.reset.refused_title"
    keep_writes = True


@dataclass(frozen=True)
class RecoveryStarted:
    recovery_id: uuid.UUID
    recovery_token: str
    completes_at: datetime


@dataclass(frozen=True)
class ResetNeeds:
    """After the SMS code: which second factor the reset still needs (empty: none enrolled)."""

    factors: list[str]
    passkey_options: dict[str, Any] | None


@dataclass(frozen=True)
class NotMeOutcome:
    holder_id: uuid.UUID
    device_revoked: bool
    sessions_revoked: int
    payments_frozen: bool
    # The incident case the report opened or joined (None in a build without the incident desk).
    case_id: uuid.UUID | None = None


def freeze_payments(
    db: Session, env: Container, holder_id: uuid.UUID, reason: str, ip: str | None
) -> bool:
    """Close every transaction function through the wallet, when the wallet capability exists.

    Imported lazily by name: identity must not depend on the wallet at import time (the wallet
    depends on identity's guards), and a build without the wallet still records the report.
    """
    try:
        module = importlib.import_module("walletguard.wallet.service")
    except ImportError:
        return False
    wallet_service = getattr(module, "WalletService", None)
    if wallet_service is None:
        return False
    wallet_service(db, env).close_all_transactions(holder_id, reason=reason, device_id=None, ip=ip)
    return True


def open_incident_case(
    db: Session,
    env: Container,
    holder_id: uuid.UUID,
    *,
    suspect_device_id: uuid.UUID | None,
    reported_event: str,
    ip: str | None,
    payments_frozen: bool,
    device_revoked: bool,
) -> uuid.UUID | None:
    """Open (or join) the holder's incident case, when the incident desk exists.

    Imported lazily by name like ``freeze_payments``: the incident desk depends on identity.
    """
    try:
        module = importlib.import_module("walletguard.incidents.service")
    except ImportError:
        return None
    open_case = getattr(module, "open_case_for_not_me", None)
    if open_case is None:
        return None
    case_id: uuid.UUID = open_case(
        db,
        env,
        holder_id,
        suspect_device_id=suspect_device_id,
        reported_event=reported_event,
        ip=ip,
        payments_frozen=payments_frozen,
        device_revoked=device_revoked,
    )
    return case_id


class RecoveryService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.settings = env.settings
        self.clock = env.clock
        self.cipher = env.cipher
        self.identity = IdentityService(db, env)
        self.mfa = MfaService(db, env)

    def _holder_by_phone(self, e164: str) -> Holder | None:
        index = self.cipher.blind_index(e164, context=PHONE_CONTEXT)
        return self.db.scalar(select(Holder).where(Holder.phone_index == index))

    # -- forgotten login password --------------------------------------------------------

    def start_password_reset(self, phone: str, *, ip: str | None) -> PasswordReset:
        """Text a code to the number if it has an account; answer alike either way."""
        e164 = parse_mobile(phone)
        index = self.cipher.blind_index(e164, context=PHONE_CONTEXT)
        holder = self._holder_by_phone(e164)
        now = self.clock.now()
        reset = PasswordReset(
            id=uuid.uuid4(),
            holder_id=holder.id if holder else None,
            phone_index=index,
            created_at=now,
            expires_at=now + timedelta(minutes=RESET_MINUTES),
        )
        if holder is not None:
            reset.code_hash = self.mfa.send_sms_code(
                holder,
                purpose_key="password_reset_code",
                bound_to=str(reset.id),
                action=SensitiveAction.CHANGE_PASSWORD,
            )
        self.db.add(reset)
        audit.record(
            self.db,
            self.clock,
            "password_reset.started",
            holder_id=holder.id if holder else None,
            ip=ip,
            data={"reset_id": str(reset.id)},
        )
        return reset

    def _open_reset(self, reset_id: uuid.UUID) -> tuple[PasswordReset, Holder]:
        reset = self.db.get(PasswordReset, reset_id)
        if reset is None:
            raise ResetRefused("mfa.reset.refused")
        # Guesses at the SMS code count per reset and per holder; the first locks one reset,
        # the second a holder whose resets an attacker keeps restarting.
        tries = self.mfa.counters.reserve(
            f"password-reset:{reset_id}",
            lambda n: timedelta(days=1) if n >= self.settings.step_up_max_failures else None,
        )
        if not tries.allowed:
            raise TooManyAttempts("mfa.factor.too_many", retry_after_s=tries.retry_after_s)
        holder = self.db.get(Holder, reset.holder_id) if reset.holder_id else None
        if (
            holder is None
            or reset.code_hash is None
            or reset.completed_at is not None
            or reset.expires_at <= self.clock.now()
        ):
            raise ResetRefused("mfa.reset.refused")
        return reset, holder

    def _check_reset_sms(self, reset: PasswordReset, holder: Holder, code: str) -> None:
        key = self.mfa.reserve_attempt(holder.id, Factor.SMS)
        assert reset.code_hash is not None
        if not self.mfa.sms_code_matches(reset.code_hash, str(reset.id), code):
            audit.record(
                self.db,
                self.clock,
                "password_reset.failed",
                holder_id=holder.id,
                data={"reset_id": str(reset.id), "reason": "wrong_sms_code"},
            )
            raise ResetRefused("mfa.reset.refused")
        self.mfa.counters.reset(key)

    def password_reset_needs(self, reset_id: uuid.UUID, sms_code: str) -> ResetNeeds:
        """Check the SMS code; say which second factor completes the reset."""
        reset, holder = self._open_reset(reset_id)
        self._check_reset_sms(reset, holder, sms_code)
        reset.sms_verified_at = reset.sms_verified_at or self.clock.now()
        factors = [f.value for f in enrolled_factors(self.db, holder.id)]
        options = None
        if Factor.PASSKEY.value in factors:
            reset.passkey_challenge, options = self.mfa.passkey_request_options(holder.id)
        return ResetNeeds(factors=factors, passkey_options=options)

    def complete_password_reset(
        self,
        reset_id: uuid.UUID,
        *,
        sms_code: str,
        new_password: str,
        factor: str | None,
        code: str | None,
        assertion: dict[str, Any] | None,
        ip: str | None,
    ) -> int:
        reset, holder = self._open_reset(reset_id)
        self._check_reset_sms(reset, holder, sms_code)
        enrolled = [f.value for f in enrolled_factors(self.db, holder.id)]
        self.identity._refuse_weak_password(new_password, self.identity.context_of(holder))
        if enrolled:
            # ASVS 6.4.3: the SMS code proves the phone, not the holder; a second factor the
            # holder enrolled is still required.
            if factor not in enrolled:
                raise StepUpRequired(SensitiveAction.CHANGE_PASSWORD, enrolled)
            if factor == Factor.TOTP:
                self.mfa.check_totp(holder.id, code or "", None)
            elif factor == Factor.RECOVERY_CODE:
                self.mfa.check_recovery_code(holder.id, code or "", None)
            elif factor == Factor.PASSKEY:
                if reset.passkey_challenge is None or assertion is None:
                    raise StepUpFailed("mfa.step_up.failed", extensions={"factor": factor})
                self.mfa.check_passkey(holder.id, reset.passkey_challenge, assertion, None)
                reset.passkey_challenge = None
        now = self.clock.now()
        reset.completed_at = now
        holder.password_hash = self.env.hasher.hash(new_password)
        holder.password_changed_at = now
        revoked = self.identity._revoke_sessions_except(holder.id, None, "password_reset", None)
        announce(
            self.db,
            self.env,
            "security.credential_changed",
            holder_id=holder.id,
            device_id=None,
            ip=ip,
            suspect_device_id=None,
            data={"credential": "password", "via": "reset", "second_factor": factor},
        )
        return revoked

    # -- forgotten payment password ------------------------------------------------------

    def reset_payment_password(self, principal: Principal, pin: str) -> None:
        """SMS code plus a strong factor when one is enrolled, else plus a trusted device;
        SMS alone only when unrestricted.

        A trusted device is not enough once the holder has a passkey, an authenticator app or
        recovery codes: a phone stolen unlocked is a trusted device that also receives the SMS,
        so the SMS and the device would be one proof, in the thief's hand. The fingerprint is not.
        """
        action = SensitiveAction.RESET_PAYMENT_PASSWORD
        require_past_cooling_off(self.db, self.env, principal, action)
        holder = self.identity._holder(principal.holder_id)
        self.identity.check_new_pin(holder, pin)
        # The risk engine before any grant is spent: a refusal it keeps must not spend them.
        from walletguard.risk.service import ask_about_sensitive_action

        ask_about_sensitive_action(self.db, self.env, principal, action)
        controls = self.settings.controls
        strong = frozenset(f.value for f in STRONG_FACTORS)
        if controls.sms_restricted:
            enrolled = [f.value for f in enrolled_factors(self.db, principal.holder_id)]
            trusted_device = state_of(self.db, self.env, principal) == DeviceState.TRUSTED
            device_suffices = trusted_device and not enrolled
            if not device_suffices and not self.mfa.spend_grant(principal, action, strong):
                raise StepUpRequired(action, enrolled)
        # The SMS code to the bound phone is the reset itself, whatever the profile.
        if (
            consume_grant(self.db, self.env, principal, action, frozenset({Factor.SMS.value}))
            is None
        ):
            raise StepUpRequired(action, [Factor.SMS.value])
        self.identity.store_pin(principal, holder, pin, event_via="reset")

    # -- account recovery ----------------------------------------------------------------

    def start_recovery(
        self, *, phone: str, name: str, id_number: str, device: DeviceInfo
    ) -> RecoveryStarted:
        """Identity check, then a recovery that completes after the delay unless cancelled.

        The answer is the same whether or not the check passed, so it never confirms whose
        phone, name and ID number belong together.
        """
        e164 = parse_mobile(phone)
        by_ip = self.mfa.counters.reserve(
            f"recovery-ip:{device.ip}",
            lambda n: timedelta(hours=1) if n >= 10 else None,
            window=timedelta(hours=1),
        )
        by_phone = self.mfa.counters.reserve(
            f"recovery:{self.cipher.blind_index(e164, context=PHONE_CONTEXT)}",
            lambda n: timedelta(days=1) if n >= 3 else None,
            window=timedelta(days=1),
        )
        if not by_ip.allowed or not by_phone.allowed:
            raise TooManyAttempts(
                "mfa.recovery.too_many",
                retry_after_s=max(by_ip.retry_after_s, by_phone.retry_after_s),
            )
        holder = self._holder_by_phone(e164)
        matches = False
        if holder is not None and holder.id_number_index is not None:
            stored_name = self.cipher.decrypt(holder.name_enc, context="holders.name")
            id_index = self.cipher.blind_index(id_number.strip().upper(), context="id_number")
            matches = hmac.compare_digest(
                stored_name.encode("utf-8"), name.strip().encode("utf-8")
            ) and hmac.compare_digest(holder.id_number_index, id_index)
        pending = (
            self.db.scalar(
                select(RecoveryRequest.id).where(
                    RecoveryRequest.holder_id == holder.id,
                    RecoveryRequest.cancelled_at.is_(None),
                    RecoveryRequest.completed_at.is_(None),
                )
            )
            if holder is not None and matches
            else None
        )
        now = self.clock.now()
        token = secrets.token_urlsafe(32)
        request = RecoveryRequest(
            id=uuid.uuid4(),
            holder_id=holder.id if holder is not None and matches and not pending else None,
            token_hash=hash_token(token),
            client_device_id=device.client_device_id,
            device_label=device.label,
            user_agent=device.user_agent,
            ip=device.ip,
            started_at=now,
            completes_at=now + timedelta(hours=self.settings.recovery_delay_hours),
        )
        self.db.add(request)
        self.db.flush()
        if request.holder_id is not None:
            cancel_token = sign_link(
                self.env,
                CANCEL_RECOVERY,
                holder_id=request.holder_id,
                device_id=None,
                event="security.recovery_started",
                valid_for=timedelta(hours=self.settings.recovery_delay_hours),
                subject_id=request.id,
            )
            announce(
                self.db,
                self.env,
                "security.recovery_started",
                holder_id=request.holder_id,
                device_id=None,
                ip=device.ip,
                suspect_device_id=None,
                data={
                    "recovery_id": str(request.id),
                    "device_label": device.label,
                    "completes_at": request.completes_at.isoformat(),
                    "cancel_url": f"{self.settings.public_base_url.rstrip('/')}"
                    f"/recovery/cancel/{cancel_token}",
                },
            )
        else:
            audit.record(
                self.db,
                self.clock,
                "recovery.refused",
                holder_id=holder.id if holder else None,
                ip=device.ip,
                data={
                    "recovery_id": str(request.id),
                    "reason": "already_pending" if pending else "identity_mismatch",
                },
            )
        return RecoveryStarted(request.id, token, request.completes_at)

    def _cancel(
        self, request: RecoveryRequest, by: str, device_id: uuid.UUID | None, ip: str | None
    ) -> None:
        if request.holder_id is None or request.cancelled_at or request.completed_at:
            raise NotFound("mfa.recovery.not_found")
        request.cancelled_at = self.clock.now()
        request.cancelled_by = by
        announce(
            self.db,
            self.env,
            "security.recovery_cancelled",
            holder_id=request.holder_id,
            device_id=device_id,
            ip=ip,
            suspect_device_id=device_id,
            data={"recovery_id": str(request.id), "cancelled_by": by},
        )

    def cancel_recovery(self, principal: Principal, recovery_id: uuid.UUID) -> None:
        """From any signed-in device of the holder: the real holder still has one."""
        request = self.db.get(RecoveryRequest, recovery_id)
        if request is None or request.holder_id != principal.holder_id:
            raise NotFound("mfa.recovery.not_found")
        self._cancel(request, "device", principal.device_id, principal.ip)

    def cancel_recovery_by_link(self, token: str, ip: str | None) -> None:
        """From the signed link in the announcement (email, SMS): no login needed."""
        claims = read_link(self.env, token, CANCEL_RECOVERY)
        request = self.db.get(RecoveryRequest, claims.subject_id) if claims.subject_id else None
        if request is None or request.holder_id != claims.holder_id:
            raise NotFound("mfa.recovery.not_found")
        self._cancel(request, "link", None, ip)

    def pending_recoveries(self, holder_id: uuid.UUID) -> list[RecoveryRequest]:
        return list(
            self.db.scalars(
                select(RecoveryRequest)
                .where(
                    RecoveryRequest.holder_id == holder_id,
                    RecoveryRequest.cancelled_at.is_(None),
                    RecoveryRequest.completed_at.is_(None),
                )
                .order_by(RecoveryRequest.started_at)
            ).all()
        )

    def complete_recovery(
        self, recovery_id: uuid.UUID, *, token: str, new_password: str, device: DeviceInfo
    ) -> IssuedSession:
        tries = self.mfa.counters.reserve(
            f"recovery-complete:{recovery_id}",
            lambda n: timedelta(days=1) if n >= self.settings.step_up_max_failures else None,
        )
        if not tries.allowed:
            raise TooManyAttempts("mfa.factor.too_many", retry_after_s=tries.retry_after_s)
        request = self.db.get(RecoveryRequest, recovery_id)
        if (
            request is None
            or request.holder_id is None
            or request.cancelled_at is not None
            or request.completed_at is not None
            or not hmac.compare_digest(request.token_hash, hash_token(token))
        ):
            raise NotFound("mfa.recovery.not_found")
        now = self.clock.now()
        if now < request.completes_at:
            raise RecoveryNotReady(
                "mfa.recovery.not_ready",
                extensions={"completes_at": request.completes_at.isoformat()},
            )
        holder = self.identity._holder(request.holder_id)
        self.identity._refuse_weak_password(new_password, self.identity.context_of(holder))
        request.completed_at = now
        holder.password_hash = self.env.hasher.hash(new_password)
        holder.password_changed_at = now
        holder.payments_hold_until = now + timedelta(
            hours=self.settings.recovery_payment_hold_hours
        )
        # Every old device starts over as new; every session ends; the lost factors are void.
        self.identity._revoke_sessions_except(holder.id, None, "account_recovered", None)
        self.db.execute(
            update(Device)
            .where(Device.holder_id == holder.id, Device.revoked_at.is_(None))
            .values(trust="new", verified_at=None, verified_by=None, cooling_off_until=None)
            .execution_options(synchronize_session=False)
        )
        self.mfa.remove_all_factors(holder.id)
        payments_frozen = freeze_payments(self.db, self.env, holder.id, "recovery", device.ip)
        issued = self.identity.issue_recovered_session(holder, device)
        announce(
            self.db,
            self.env,
            "security.recovery_completed",
            holder_id=holder.id,
            device_id=issued.device_id,
            ip=device.ip,
            suspect_device_id=issued.device_id,
            data={
                "recovery_id": str(request.id),
                "device_label": device.label,
                "payments_hold_until": holder.payments_hold_until.isoformat(),
                "payments_frozen": payments_frozen,
            },
        )
        return issued

    # -- "this was not me" ---------------------------------------------------------------

    def describe_not_me(self, token: str) -> tuple[str, datetime, str | None]:
        """What a link is about, for the confirmation page (changes nothing)."""
        claims = read_link(self.env, token, NOT_ME)
        label = None
        if claims.device_id is not None:
            device = self.db.get(Device, claims.device_id)
            label = device.label if device is not None else None
        return claims.event, claims.expires_at, label

    def report_not_me(self, token: str, ip: str | None) -> NotMeOutcome:
        claims = read_link(self.env, token, NOT_ME)
        try:
            with self.db.begin_nested():
                self.db.add(
                    NotMeReport(
                        token_id=claims.link_id,
                        holder_id=claims.holder_id,
                        device_id=claims.device_id,
                        event=claims.event,
                        reported_at=self.clock.now(),
                        ip=ip,
                    )
                )
                self.db.flush()
        except IntegrityError as exc:
            raise LinkUsed("mfa.link.used") from exc
        holder_id = claims.holder_id
        payments_frozen = freeze_payments(self.db, self.env, holder_id, "not_me", ip)
        device_revoked, sessions = False, 0
        device = self.db.get(Device, claims.device_id) if claims.device_id else None
        if device is not None and device.holder_id == holder_id and device.revoked_at is None:
            sessions = self.identity.revoke_device_by_report(device)
            device_revoked = True
        # Whatever else is under way in the holder's name stops too.
        now = self.clock.now()
        for request in self.pending_recoveries(holder_id):
            request.cancelled_at = now
            request.cancelled_by = "not_me"
        self.db.execute(
            update(PhoneChange)
            .where(
                PhoneChange.holder_id == holder_id,
                PhoneChange.completed_at.is_(None),
                PhoneChange.cancelled_at.is_(None),
            )
            .values(cancelled_at=now)
            .execution_options(synchronize_session=False)
        )
        case_id = open_incident_case(
            self.db,
            self.env,
            holder_id,
            suspect_device_id=claims.device_id,
            reported_event=claims.event,
            ip=ip,
            payments_frozen=payments_frozen,
            device_revoked=device_revoked,
        )
        audit.record(
            self.db,
            self.clock,
            "security.not_me_reported",
            holder_id=holder_id,
            device_id=claims.device_id,
            ip=ip,
            data={
                "reported_event": claims.event,
                "device_revoked": device_revoked,
                "sessions_revoked": sessions,
                "payments_frozen": payments_frozen,
                "case_id": str(case_id) if case_id else None,
            },
        )
        return NotMeOutcome(holder_id, device_revoked, sessions, payments_frozen, case_id)
