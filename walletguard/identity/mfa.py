"""Second factors and step-up (SPEC C3): TOTP, passkeys, recovery codes, SMS; device trust (C2).

Every check of a guessable factor first reserves an attempt on an atomic counter
(``AttemptCounters``), so parallel guesses cannot exceed the limit however they interleave, and a
wrong guess is a ``keep_writes`` refusal: its count survives the rolled-back request. Accepting a
factor is itself a conditional UPDATE (a TOTP step only forwards, a recovery code only once, a
passkey counter only upwards), so a code cannot be spent twice by two racing requests either.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pyotp
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.identity.guards import (
    DeviceNotVerified,
    DeviceState,
    Factor,
    SensitiveAction,
    consume_grant,
    cooling_off_end,
    device_state,
    require_past_cooling_off,
    require_step_up,
    usable_factors,
)
from walletguard.identity.links import announce
from walletguard.identity.models import (
    Device,
    Holder,
    Passkey,
    RecoveryCode,
    StepUpChallenge,
    StepUpGrant,
    TotpFactor,
)
from walletguard.identity.phone import mask_phone
from walletguard.identity.service import Principal
from walletguard.kit.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TooManyAttempts,
    WalletguardError,
)
from walletguard.kit.i18n import Language, text
from walletguard.kit.ratelimit import AttemptCounters, LockSchedule
from walletguard.messages.service import PhoneInbox

SENDER = "walletguard"
TOTP_STEP_SECONDS = 30
RECOVERY_CODE_COUNT = 10
# Recovery codes: 10 characters of an alphabet without look-alikes (0/O, 1/I/L), ~50 bits each.
RECOVERY_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
SMS_CODE_MINUTES = 5
PASSKEY_TIMEOUT_MS = 120_000


class StepUpFailed(WalletguardError):
    """A wrong code or assertion; kept so the failure counts even though the request fails."""

    status = 403
    slug = "step-up-failed"
    title_key = "mfa.step_up.failed_title"
    keep_writes = True


class FactorNotAllowed(WalletguardError):
    status = 403
    slug = "factor-not-allowed"
    title_key = "mfa.factor.not_allowed_title"

    def __init__(self, action: SensitiveAction, factor: str, factors: list[str]) -> None:
        super().__init__(
            "mfa.factor.not_allowed",
            extensions={"action": action.value, "factor": factor, "factors": factors},
        )


class FactorNotEnrolled(WalletguardError):
    status = 409
    slug = "factor-not-enrolled"
    title_key = "mfa.factor.not_enrolled_title"


@dataclass(frozen=True)
class ChallengeIssued:
    challenge_id: uuid.UUID
    factor: str
    action: str
    expires_at: datetime
    # For a passkey: the options for navigator.credentials.get() / .create().
    public_key: dict[str, Any] | None


@dataclass(frozen=True)
class StepUpOutcome:
    action: str
    factor: str
    grant_id: uuid.UUID | None
    expires_at: datetime | None
    device_state: str


@dataclass(frozen=True)
class TotpEnrolment:
    factor_id: uuid.UUID
    secret: str
    otpauth_uri: str


@dataclass(frozen=True)
class FactorInfo:
    id: uuid.UUID | None
    kind: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    remaining: int | None


def relying_party(env: Container) -> tuple[str, str]:
    """(RP id, origin) of WebAuthn, both from ``WALLETGUARD_PUBLIC_BASE_URL``."""
    parts = urlsplit(env.settings.public_base_url)
    return parts.hostname or "localhost", f"{parts.scheme}://{parts.netloc}"


def language_of(holder: Holder) -> Language:
    return "en" if holder.language == "en" else "zh-CN"


def normalise_recovery_code(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


class MfaService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.settings = env.settings
        self.clock = env.clock
        self.counters = AttemptCounters(db, env.clock)

    # -- shared --------------------------------------------------------------------------

    def keyed_hash(self, purpose: str, value: str) -> str:
        message = f"{purpose}\x00{value}".encode()
        return hmac.new(self.env.cipher.index_key, message, "sha256").hexdigest()

    def _schedule(self, key: str) -> LockSchedule:
        max_failures = self.settings.step_up_max_failures
        base = timedelta(minutes=self.settings.step_up_lock_minutes)
        previous_locks = self.counters.lock_count(key)

        def schedule(failures: int) -> timedelta | None:
            if failures < max_failures:
                return None
            # Each lock twice the last: 5 guesses per quarter hour, then fewer and fewer.
            return min(base * (1 << min(previous_locks, 10)), timedelta(days=7))

        return schedule

    def reserve_attempt(self, holder_id: uuid.UUID, factor: str) -> str:
        """Count one attempt at ``factor`` before checking it; refuse while it is locked."""
        key = f"factor:{factor}:{holder_id}"
        tries = self.counters.reserve(key, self._schedule(key))
        if not tries.allowed:
            raise TooManyAttempts("mfa.factor.too_many", retry_after_s=tries.retry_after_s)
        return key

    def refusal(
        self, holder_id: uuid.UUID, factor: str, principal: Principal | None, reason: str
    ) -> StepUpFailed:
        audit.record(
            self.db,
            self.clock,
            "step_up.failed",
            holder_id=holder_id,
            device_id=principal.device_id if principal else None,
            ip=principal.ip if principal else None,
            data={"factor": factor, "reason": reason},
        )
        return StepUpFailed("mfa.step_up.failed", extensions={"factor": factor})

    def _holder(self, holder_id: uuid.UUID) -> Holder:
        holder = self.db.get(Holder, holder_id)
        if holder is None:
            raise NotFound("identity.holder.not_found")
        return holder

    def _phone(self, holder: Holder) -> str:
        return self.env.cipher.decrypt(holder.phone_enc, context="holders.phone")

    def _state(self, principal: Principal) -> str:
        device = self.db.get(Device, principal.device_id)
        if device is None:
            raise DeviceNotVerified()
        return device_state(
            device, self.clock.now(), self.settings.controls, self.settings.cooling_off_hours
        )

    def _end_other_sessions(self, principal: Principal, reason: str) -> int:
        from walletguard.identity.service import IdentityService

        # ASVS 7.4.3: a changed factor ends every other session.
        return IdentityService(self.db, self.env).revoke_other_sessions(principal, reason=reason)

    def _guard_factor_change(self, principal: Principal, action: SensitiveAction) -> None:
        require_past_cooling_off(self.db, self.env, principal, action)
        require_step_up(self.db, self.env, principal, action)

    # -- TOTP ----------------------------------------------------------------------------

    def _totp(self, factor: TotpFactor) -> pyotp.TOTP:
        secret = self.env.cipher.decrypt(factor.secret_enc, context="totp_factors.secret")
        return pyotp.TOTP(secret, interval=TOTP_STEP_SECONDS)

    def _active_totp(self, holder_id: uuid.UUID) -> TotpFactor | None:
        return self.db.scalar(
            select(TotpFactor).where(
                TotpFactor.holder_id == holder_id,
                TotpFactor.confirmed_at.is_not(None),
                TotpFactor.removed_at.is_(None),
            )
        )

    def _matching_step(self, factor: TotpFactor, code: str) -> int | None:
        """The time step (now ±1, RFC 6238 5.2) whose code this is, if any."""
        totp = self._totp(factor)
        now_step = int(self.clock.now().timestamp()) // TOTP_STEP_SECONDS
        code = code.strip()
        for step in (now_step - 1, now_step, now_step + 1):
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    def _spend_totp_step(self, factor: TotpFactor, step: int) -> bool:
        """Accept the code of ``step`` once: the stored step only ever moves forward."""
        result = self.db.execute(
            update(TotpFactor)
            .where(
                TotpFactor.id == factor.id,
                (TotpFactor.last_used_step.is_(None)) | (TotpFactor.last_used_step < step),
            )
            .values(last_used_step=step, last_used_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )
        self.db.expire(factor)
        return getattr(result, "rowcount", 0) == 1

    def start_totp(self, principal: Principal, label: str) -> TotpEnrolment:
        self._guard_factor_change(principal, SensitiveAction.ENROL_FACTOR)
        if self._active_totp(principal.holder_id) is not None:
            raise Conflict("mfa.totp.already_enrolled")
        holder = self._holder(principal.holder_id)
        secret = pyotp.random_base32(32)
        factor = TotpFactor(
            id=uuid.uuid4(),
            holder_id=holder.id,
            label=label,
            secret_enc=self.env.cipher.encrypt(secret, context="totp_factors.secret"),
            created_at=self.clock.now(),
        )
        self.db.add(factor)
        self.db.flush()
        uri = pyotp.TOTP(secret).provisioning_uri(
            name=mask_phone(self._phone(holder)), issuer_name="walletguard"
        )
        return TotpEnrolment(factor_id=factor.id, secret=secret, otpauth_uri=uri)

    def confirm_totp(self, principal: Principal, factor_id: uuid.UUID, code: str) -> int:
        """The first code proves the app holds the seed; then the factor counts. Returns the
        number of other sessions ended."""
        factor = self.db.get(TotpFactor, factor_id)
        if (
            factor is None
            or factor.holder_id != principal.holder_id
            or factor.removed_at is not None
            or factor.confirmed_at is not None
        ):
            raise NotFound("mfa.factor.not_found")
        key = self.reserve_attempt(principal.holder_id, Factor.TOTP)
        step = self._matching_step(factor, code)
        if step is None or not self._spend_totp_step(factor, step):
            raise self.refusal(principal.holder_id, Factor.TOTP, principal, "wrong_code")
        self.counters.reset(key)
        if self._active_totp(principal.holder_id) is not None:
            raise Conflict("mfa.totp.already_enrolled")
        factor.confirmed_at = self.clock.now()
        self._announce_factor(principal, "security.factor_enrolled", Factor.TOTP, factor.id)
        return self._end_other_sessions(principal, "factor_enrolled")

    def check_totp(self, holder_id: uuid.UUID, code: str, principal: Principal | None) -> None:
        key = self.reserve_attempt(holder_id, Factor.TOTP)
        factor = self._active_totp(holder_id)
        step = self._matching_step(factor, code) if factor else None
        if factor is None or step is None:
            raise self.refusal(holder_id, Factor.TOTP, principal, "wrong_code")
        if not self._spend_totp_step(factor, step):
            # The right code, already spent: someone replays what they saw over a shoulder.
            raise self.refusal(holder_id, Factor.TOTP, principal, "replayed_code")
        self.counters.reset(key)

    # -- passkeys ------------------------------------------------------------------------

    def _passkeys(self, holder_id: uuid.UUID) -> list[Passkey]:
        return list(
            self.db.scalars(
                select(Passkey)
                .where(Passkey.holder_id == holder_id, Passkey.removed_at.is_(None))
                .order_by(Passkey.created_at)
            ).all()
        )

    def _challenge(
        self,
        principal: Principal,
        action: str,
        factor: str,
        secret: str,
        minutes: int,
        challenge_id: uuid.UUID | None = None,
    ) -> StepUpChallenge:
        now = self.clock.now()
        challenge = StepUpChallenge(
            id=challenge_id or uuid.uuid4(),
            holder_id=principal.holder_id,
            session_id=principal.session_id,
            action=action,
            factor=factor,
            secret=secret,
            created_at=now,
            expires_at=now + timedelta(minutes=minutes),
        )
        self.db.add(challenge)
        self.db.flush()
        return challenge

    def _open_challenge(
        self, principal: Principal, challenge_id: uuid.UUID | None, action: str, factor: str
    ) -> StepUpChallenge | None:
        if challenge_id is None:
            return None
        challenge = self.db.get(StepUpChallenge, challenge_id)
        if (
            challenge is None
            or challenge.session_id != principal.session_id
            or challenge.action != action
            or challenge.factor != factor
            or challenge.used_at is not None
            or challenge.expires_at <= self.clock.now()
        ):
            return None
        return challenge

    def _spend_challenge(self, challenge: StepUpChallenge) -> bool:
        result = self.db.execute(
            update(StepUpChallenge)
            .where(StepUpChallenge.id == challenge.id, StepUpChallenge.used_at.is_(None))
            .values(used_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )
        return getattr(result, "rowcount", 0) == 1

    def passkey_registration_options(self, principal: Principal) -> ChallengeIssued:
        self._guard_factor_change(principal, SensitiveAction.ENROL_FACTOR)
        holder = self._holder(principal.holder_id)
        rp_id, _ = relying_party(self.env)
        options = generate_registration_options(
            rp_id=rp_id,
            rp_name="walletguard",
            user_id=holder.id.bytes,
            user_name=mask_phone(self._phone(holder)),
            timeout=PASSKEY_TIMEOUT_MS,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id))
                for p in self._passkeys(holder.id)
            ],
        )
        # The step-up was spent on these options; the challenge carries it to the answer.
        challenge = self._challenge(
            principal,
            SensitiveAction.ENROL_FACTOR.value,
            "passkey_registration",
            bytes_to_base64url(options.challenge),
            minutes=self.settings.step_up_fresh_minutes,
        )
        public_key: dict[str, Any] = json.loads(options_to_json(options))
        return ChallengeIssued(
            challenge_id=challenge.id,
            factor=Factor.PASSKEY.value,
            action=challenge.action,
            expires_at=challenge.expires_at,
            public_key=public_key,
        )

    def register_passkey(
        self,
        principal: Principal,
        challenge_id: uuid.UUID,
        credential: dict[str, Any],
        label: str,
    ) -> tuple[Passkey, int]:
        challenge = self._open_challenge(
            principal, challenge_id, SensitiveAction.ENROL_FACTOR.value, "passkey_registration"
        )
        if challenge is None:
            raise NotFound("mfa.challenge.not_found")
        rp_id, origin = relying_party(self.env)
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=base64url_to_bytes(challenge.secret),
                expected_rp_id=rp_id,
                expected_origin=origin,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(
                "mfa.passkey.registration_refused", extensions={"field": "credential"}
            ) from exc
        if not self._spend_challenge(challenge):
            raise NotFound("mfa.challenge.not_found")
        credential_id = bytes_to_base64url(verified.credential_id)
        if self.db.scalar(select(Passkey.id).where(Passkey.credential_id == credential_id)):
            raise Conflict("mfa.passkey.already_registered")
        passkey = Passkey(
            id=uuid.uuid4(),
            holder_id=principal.holder_id,
            label=label,
            credential_id=credential_id,
            public_key=bytes_to_base64url(verified.credential_public_key),
            sign_count=verified.sign_count,
            aaguid=str(verified.aaguid),
            created_at=self.clock.now(),
        )
        self.db.add(passkey)
        self.db.flush()
        self._announce_factor(principal, "security.factor_enrolled", Factor.PASSKEY, passkey.id)
        return passkey, self._end_other_sessions(principal, "factor_enrolled")

    def passkey_request_options(self, holder_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
        """A fresh challenge (base64url) and the options for navigator.credentials.get()."""
        passkeys = self._passkeys(holder_id)
        if not passkeys:
            raise FactorNotEnrolled("mfa.passkey.none")
        rp_id, _ = relying_party(self.env)
        options = generate_authentication_options(
            rp_id=rp_id,
            timeout=PASSKEY_TIMEOUT_MS,
            allow_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id))
                for p in passkeys
            ],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        public_key: dict[str, Any] = json.loads(options_to_json(options))
        return bytes_to_base64url(options.challenge), public_key

    def check_passkey(
        self,
        holder_id: uuid.UUID,
        expected_challenge: str,
        assertion: dict[str, Any],
        principal: Principal | None,
    ) -> None:
        key = self.reserve_attempt(holder_id, Factor.PASSKEY)
        raw_id = str(assertion.get("rawId") or assertion.get("id") or "")
        passkey = self.db.scalar(
            select(Passkey).where(
                Passkey.credential_id == raw_id.rstrip("="),
                Passkey.holder_id == holder_id,
                Passkey.removed_at.is_(None),
            )
        )
        if passkey is None:
            raise self.refusal(holder_id, Factor.PASSKEY, principal, "unknown_credential")
        rp_id, origin = relying_party(self.env)
        try:
            verified = verify_authentication_response(
                credential=assertion,
                expected_challenge=base64url_to_bytes(expected_challenge),
                expected_rp_id=rp_id,
                expected_origin=origin,
                credential_public_key=base64url_to_bytes(passkey.public_key),
                credential_current_sign_count=passkey.sign_count,
                require_user_verification=True,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            reason = "counter_not_increased" if "sign count" in str(exc) else "bad_assertion"
            if reason == "counter_not_increased":
                # A counter that does not grow means a second copy of the key: say so loudly.
                announce(
                    self.db,
                    self.env,
                    "security.passkey_clone_suspected",
                    holder_id=holder_id,
                    device_id=principal.device_id if principal else None,
                    ip=principal.ip if principal else None,
                    suspect_device_id=principal.device_id if principal else None,
                    data={"passkey_id": str(passkey.id)},
                )
            raise self.refusal(holder_id, Factor.PASSKEY, principal, reason) from exc
        # Move the counter only forwards, also against a racing request with the same count.
        moved = self.db.execute(
            update(Passkey)
            .where(Passkey.id == passkey.id, Passkey.sign_count == passkey.sign_count)
            .values(sign_count=verified.new_sign_count, last_used_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )
        if getattr(moved, "rowcount", 0) != 1:
            raise self.refusal(holder_id, Factor.PASSKEY, principal, "counter_not_increased")
        self.counters.reset(key)

    # -- recovery codes ------------------------------------------------------------------

    def _recovery_hash(self, holder_id: uuid.UUID, code: str) -> str:
        return self.keyed_hash(f"recovery-code:{holder_id}", normalise_recovery_code(code))

    def new_recovery_codes(self, principal: Principal) -> tuple[list[str], int]:
        """Ten fresh codes, shown this once; any earlier unused ones stop working."""
        self._guard_factor_change(principal, SensitiveAction.ENROL_FACTOR)
        now = self.clock.now()
        self.db.execute(
            update(RecoveryCode)
            .where(RecoveryCode.holder_id == principal.holder_id, RecoveryCode.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        codes = []
        for _ in range(RECOVERY_CODE_COUNT):
            raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
            codes.append(f"{raw[:5]}-{raw[5:]}")
            self.db.add(
                RecoveryCode(
                    id=uuid.uuid4(),
                    holder_id=principal.holder_id,
                    code_hash=self._recovery_hash(principal.holder_id, raw),
                    created_at=now,
                )
            )
        self.db.flush()
        self._announce_factor(principal, "security.factor_enrolled", Factor.RECOVERY_CODE, None)
        return codes, self._end_other_sessions(principal, "factor_enrolled")

    def check_recovery_code(
        self, holder_id: uuid.UUID, code: str, principal: Principal | None
    ) -> None:
        key = self.reserve_attempt(holder_id, Factor.RECOVERY_CODE)
        spent = self.db.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.holder_id == holder_id,
                RecoveryCode.code_hash == self._recovery_hash(holder_id, code),
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )
        if getattr(spent, "rowcount", 0) != 1:
            raise self.refusal(holder_id, Factor.RECOVERY_CODE, principal, "wrong_code")
        self.counters.reset(key)

    # -- SMS -----------------------------------------------------------------------------

    def send_sms_code(
        self, holder: Holder, *, purpose_key: str, bound_to: str, action: SensitiveAction
    ) -> str:
        """Text a code to the bound phone; the message names the action it approves.

        Returns the HMAC to store, bound to ``bound_to`` (a challenge or reset id).
        """
        sms = self.counters.reserve(
            f"sms-codes:{holder.id}",
            lambda n: timedelta(hours=1) if n >= self.settings.step_up_sms_per_hour else None,
            window=timedelta(hours=1),
        )
        if not sms.allowed:
            raise TooManyAttempts("mfa.sms.too_many", retry_after_s=sms.retry_after_s)
        code = f"{secrets.randbelow(10**6):06d}"
        lang = language_of(holder)
        body = text(
            "mfa.sms.step_up_code",
            lang,
            code=code,
            action=text(f"mfa.action.{action.value}", lang),
            minutes=SMS_CODE_MINUTES,
        )
        PhoneInbox(self.db, self.env.cipher, self.clock).send_sms(
            self._phone(holder), sender=SENDER, body=body, purpose=purpose_key
        )
        return self.keyed_hash(f"sms:{bound_to}", code)

    def sms_code_matches(self, stored: str, bound_to: str, code: str) -> bool:
        return hmac.compare_digest(stored, self.keyed_hash(f"sms:{bound_to}", code.strip()))

    # -- step-up -------------------------------------------------------------------------

    def _allowed(self, principal: Principal, action: SensitiveAction, factor: str) -> None:
        state = self._state(principal)
        if state == DeviceState.NEW and action != SensitiveAction.ADD_DEVICE:
            raise DeviceNotVerified()
        factors = usable_factors(
            self.db, self.env, principal.holder_id, action, new_device=state == DeviceState.NEW
        )
        if factor not in factors:
            raise FactorNotAllowed(action, factor, factors)

    def start_challenge(
        self, principal: Principal, action: SensitiveAction, factor: str
    ) -> ChallengeIssued:
        """Send an SMS code, or issue a passkey challenge, for one action of this session."""
        self._allowed(principal, action, factor)
        if factor == Factor.SMS:
            holder = self._holder(principal.holder_id)
            challenge_id = uuid.uuid4()
            secret = self.send_sms_code(
                holder, purpose_key="step_up_code", bound_to=str(challenge_id), action=action
            )
            challenge = self._challenge(
                principal, action.value, factor, secret, SMS_CODE_MINUTES, challenge_id
            )
            audit.record(
                self.db,
                self.clock,
                "step_up.sms_sent",
                holder_id=principal.holder_id,
                device_id=principal.device_id,
                ip=principal.ip,
                data={"action": action.value},
            )
            return ChallengeIssued(challenge_id, factor, action.value, challenge.expires_at, None)
        if factor == Factor.PASSKEY:
            secret, public_key = self.passkey_request_options(principal.holder_id)
            challenge = self._challenge(
                principal, action.value, factor, secret, self.settings.step_up_fresh_minutes
            )
            return ChallengeIssued(
                challenge.id, factor, action.value, challenge.expires_at, public_key
            )
        raise InvalidInput("mfa.challenge.not_needed", extensions={"field": "factor"})

    def step_up(
        self,
        principal: Principal,
        action: SensitiveAction,
        factor: str,
        *,
        code: str | None = None,
        challenge_id: uuid.UUID | None = None,
        assertion: dict[str, Any] | None = None,
    ) -> StepUpOutcome:
        """Check a fresh factor; grant the action to this session (or verify this new device)."""
        self._allowed(principal, action, factor)
        holder_id = principal.holder_id
        if factor == Factor.TOTP:
            self.check_totp(holder_id, code or "", principal)
        elif factor == Factor.RECOVERY_CODE:
            self.check_recovery_code(holder_id, code or "", principal)
        elif factor == Factor.SMS:
            key = self.reserve_attempt(holder_id, Factor.SMS)
            challenge = self._open_challenge(principal, challenge_id, action.value, factor)
            if (
                challenge is None
                or not self.sms_code_matches(challenge.secret, str(challenge.id), code or "")
                or not self._spend_challenge(challenge)
            ):
                raise self.refusal(holder_id, Factor.SMS, principal, "wrong_code")
            self.counters.reset(key)
        elif factor == Factor.PASSKEY:
            challenge = self._open_challenge(principal, challenge_id, action.value, factor)
            if challenge is None or assertion is None:
                raise self.refusal(holder_id, Factor.PASSKEY, principal, "no_challenge")
            self.check_passkey(holder_id, challenge.secret, assertion, principal)
            if not self._spend_challenge(challenge):
                raise self.refusal(holder_id, Factor.PASSKEY, principal, "challenge_spent")
        else:  # pragma: no cover - the schema admits only the four factors
            raise InvalidInput("mfa.factor.unknown", extensions={"field": "factor"})

        if action == SensitiveAction.ADD_DEVICE and self._state(principal) == DeviceState.NEW:
            return self._verify_new_device(principal, factor)
        now = self.clock.now()
        grant = StepUpGrant(
            id=uuid.uuid4(),
            holder_id=holder_id,
            session_id=principal.session_id,
            action=action.value,
            factor=factor,
            granted_at=now,
            expires_at=now + timedelta(minutes=self.settings.step_up_fresh_minutes),
        )
        self.db.add(grant)
        audit.record(
            self.db,
            self.clock,
            "step_up.granted",
            holder_id=holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"action": action.value, "factor": factor},
        )
        return StepUpOutcome(
            action.value, factor, grant.id, grant.expires_at, self._state(principal)
        )

    def spend_grant(
        self, principal: Principal, action: SensitiveAction, factors: frozenset[str]
    ) -> bool:
        return consume_grant(self.db, self.env, principal, action, factors) is not None

    # -- devices -------------------------------------------------------------------------

    def _verify_new_device(self, principal: Principal, factor: str) -> StepUpOutcome:
        device = self.db.get(Device, principal.device_id)
        assert device is not None
        now = self.clock.now()
        device.trust = "verified"
        device.verified_at = now
        device.verified_by = factor
        device.cooling_off_until = device.first_seen_at + timedelta(
            hours=self.settings.cooling_off_hours
        )
        announce(
            self.db,
            self.env,
            "security.device_verified",
            holder_id=principal.holder_id,
            device_id=device.id,
            ip=principal.ip,
            suspect_device_id=device.id,
            data={
                "device_id": str(device.id),
                "device_label": device.label,
                "factor": factor,
                "cooling_off_until": device.cooling_off_until.isoformat(),
            },
        )
        return StepUpOutcome(
            SensitiveAction.ADD_DEVICE.value, factor, None, None, self._state(principal)
        )

    def approve_device(self, principal: Principal, device_id: uuid.UUID) -> Device:
        """A trusted device vouches for another: it is verified and its cooling-off ends."""
        device = self.db.get(Device, device_id)
        if (
            device is None
            or device.holder_id != principal.holder_id
            or device.revoked_at is not None
            or device.id == principal.device_id
        ):
            raise NotFound("identity.device.not_found")
        # A device still cooling off must not be able to vouch for a second one (an attacker
        # with two phones would otherwise skip the wait).
        require_past_cooling_off(self.db, self.env, principal, SensitiveAction.ADD_DEVICE)
        require_step_up(self.db, self.env, principal, SensitiveAction.ADD_DEVICE)
        now = self.clock.now()
        device.trust = "trusted"
        device.verified_at = device.verified_at or now
        device.verified_by = device.verified_by or "device_approval"
        device.cooling_off_until = now
        announce(
            self.db,
            self.env,
            "security.device_approved",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=device.id,
            data={"device_id": str(device.id), "device_label": device.label},
        )
        return device

    def request_approval(self, principal: Principal) -> None:
        """A new or cooling-off device asks the holder's trusted devices to vouch for it."""
        device = self.db.get(Device, principal.device_id)
        assert device is not None
        state = self._state(principal)
        if state == DeviceState.TRUSTED:
            raise Conflict("mfa.device.already_trusted")
        asked = self.counters.reserve(
            f"approval-request:{device.id}",
            lambda n: timedelta(hours=1) if n >= 3 else None,
            window=timedelta(hours=1),
        )
        if not asked.allowed:
            raise TooManyAttempts("mfa.device.too_many_requests", retry_after_s=asked.retry_after_s)
        announce(
            self.db,
            self.env,
            "security.device_approval_requested",
            holder_id=principal.holder_id,
            device_id=device.id,
            ip=principal.ip,
            suspect_device_id=device.id,
            data={"device_id": str(device.id), "device_label": device.label, "state": state},
        )

    def device_status(self, principal: Principal) -> tuple[Device, str, datetime | None]:
        device = self.db.get(Device, principal.device_id)
        assert device is not None
        state = self._state(principal)
        until = (
            cooling_off_end(device, self.settings.cooling_off_hours)
            if state == DeviceState.COOLING_OFF
            else None
        )
        return device, state, until

    # -- listing and removal -------------------------------------------------------------

    def list_factors(self, holder_id: uuid.UUID) -> list[FactorInfo]:
        items: list[FactorInfo] = [
            FactorInfo(p.id, Factor.PASSKEY.value, p.label, p.created_at, p.last_used_at, None)
            for p in self._passkeys(holder_id)
        ]
        totp = self._active_totp(holder_id)
        if totp is not None:
            items.append(
                FactorInfo(
                    totp.id, Factor.TOTP.value, totp.label, totp.created_at, totp.last_used_at, None
                )
            )
        remaining, created = self.db.execute(
            select(func.count(RecoveryCode.id), func.max(RecoveryCode.created_at)).where(
                RecoveryCode.holder_id == holder_id, RecoveryCode.used_at.is_(None)
            )
        ).one()
        if remaining:
            items.append(
                FactorInfo(None, Factor.RECOVERY_CODE.value, "", created, None, int(remaining))
            )
        return items

    def remove_factor(self, principal: Principal, factor_id: uuid.UUID) -> int:
        row: TotpFactor | Passkey | None = self.db.get(TotpFactor, factor_id) or self.db.get(
            Passkey, factor_id
        )
        if row is None or row.holder_id != principal.holder_id or row.removed_at is not None:
            raise NotFound("mfa.factor.not_found")
        self._guard_factor_change(principal, SensitiveAction.REMOVE_FACTOR)
        row.removed_at = self.clock.now()
        kind = Factor.TOTP if isinstance(row, TotpFactor) else Factor.PASSKEY
        self._announce_factor(principal, "security.factor_removed", kind, row.id)
        return self._end_other_sessions(principal, "factor_removed")

    def remove_all_factors(self, holder_id: uuid.UUID) -> None:
        """Account recovery: the holder lost them all; whoever holds them now must not use them."""
        now = self.clock.now()
        for model in (TotpFactor, Passkey):
            self.db.execute(
                update(model)
                .where(model.holder_id == holder_id, model.removed_at.is_(None))
                .values(removed_at=now)
                .execution_options(synchronize_session=False)
            )
        self.db.execute(
            update(RecoveryCode)
            .where(RecoveryCode.holder_id == holder_id, RecoveryCode.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )

    def _announce_factor(
        self, principal: Principal, event: str, kind: str, factor_id: uuid.UUID | None
    ) -> None:
        announce(
            self.db,
            self.env,
            event,
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=principal.device_id,
            data={"factor": kind, "factor_id": str(factor_id) if factor_id else None},
        )
