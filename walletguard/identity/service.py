"""Accounts, credentials, devices and sessions (SPEC C1, C2).

Refusals that an attacker could learn from are shaped alike: a login for a number without an
account costs an Argon2 verification against a dummy hash and fails with the same problem as a
wrong password, and registration always "sends a code".
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Select, and_, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walletguard.alerts import service as alerts
from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.identity import guards
from walletguard.identity.guards import DeviceState, SensitiveAction
from walletguard.identity.links import announce, recipient_from
from walletguard.identity.models import Device, Holder, LoginSession, PendingRegistration
from walletguard.identity.password_policy import PersonalContext, check_login_password
from walletguard.identity.phone import parse_mobile
from walletguard.identity.pin_policy import check_payment_pin
from walletguard.identity.resident_id import InvalidResidentId, parse_resident_id
from walletguard.kit.crypto import hash_token
from walletguard.kit.db import core, is_postgres
from walletguard.kit.errors import (
    InvalidInput,
    NotAuthenticated,
    NotFound,
    TooManyAttempts,
    WalletguardError,
)
from walletguard.kit.i18n import text
from walletguard.kit.ratelimit import AttemptCounters, Held, LockSchedule, held_counter
from walletguard.messages.service import PHONE_CONTEXT, PhoneInbox

SENDER = "walletguard"

# Every authenticated request runs it: built once (its cache key is not worked out anew), and
# read as columns (``kit.db.core``), not as entities: loading a LoginSession and a Device into
# the ORM cost more than the rest of authentication. A step that needs the entities loads them.
# A session token's session and its device (``token_hash``), the columns of ``_SessionDevice``;
# public for a statement of another capability that authenticates in its own round trip
# (``principal_of`` then checks the row): its columns, in order, are ``SESSION_COLUMNS`` many.
SESSION_BY_TOKEN = (
    select(
        LoginSession.id,
        LoginSession.holder_id,
        LoginSession.revoked_at,
        LoginSession.expires_at,
        LoginSession.last_used_at,
        Device.id,
        *guards.DEVICE_COLUMNS,
    )
    .join(Device, Device.id == LoginSession.device_id)
    .where(LoginSession.token_hash == bindparam("token_hash"))
)
_TOUCH_SESSION = (
    update(LoginSession)
    .where(LoginSession.id == bindparam("session_id"))
    .values(last_used_at=bindparam("now"))
)
_TOUCH_DEVICE = (
    update(Device)
    .where(Device.id == bindparam("device_id"))
    .values(last_seen_at=bindparam("now"), last_seen_ip=bindparam("ip"))
)
SESSION_COLUMNS = len(SESSION_BY_TOKEN.selected_columns)
_CHANNEL_COLUMNS, _CHANNEL_JOINS = alerts.channel_setting_columns(Holder.id)


def _with_channels(statement: Select[Any]) -> Select[Any]:
    """The statement with the holder's alert channels joined (``_CHANNEL_COLUMNS``)."""
    for table, on in _CHANNEL_JOINS:
        statement = statement.outerjoin(table, on)
    return statement


# What a movement's payment password is checked against, in one read: the PIN hash, whom the
# movement's alert goes to and on which channels (``Payer.recipient.channels``: the alert does
# not read them again), and what its cooling-off cap is computed from (the holder's payment
# hold, the paying device's state columns: ``guards.daily_cap_of``).
_PAYER = _with_channels(
    select(
        Holder.payment_pin_hash,
        Holder.phone_enc,
        Holder.language,
        Holder.payments_hold_until,
        Device.id,
        *guards.DEVICE_COLUMNS,
        *_CHANNEL_COLUMNS,
    )
    .select_from(Holder)
    .outerjoin(Device, and_(Device.id == bindparam("device_id"), Device.holder_id == Holder.id))
).where(Holder.id == bindparam("holder_id"))

# On PostgreSQL with the PIN's attempt counter held in the same statement (``held_counter``:
# created or locked as ``AttemptCounters.hold`` does), its three columns first. Public for a
# statement of another capability that reads it beside its own (the wallet's lock before a
# movement: ``wallet.repository.lock_wallet_with_payer``): its parameters are
# ``payer_params``'s; ``verify_payment_password(read=PayerRead(...))`` takes the row.
_HELD_PIN = held_counter()
PAYER_HELD = _with_channels(
    select(
        _HELD_PIN.c.failures,
        _HELD_PIN.c.locked_until,
        _HELD_PIN.c.lock_count,
        *_PAYER.selected_columns,
    )
    .select_from(_HELD_PIN)
    .join(Holder, Holder.id == bindparam("holder_id"))
    .outerjoin(Device, and_(Device.id == bindparam("device_id"), Device.holder_id == Holder.id))
)


class PayerRead(NamedTuple):
    """``PAYER_HELD``'s row as a caller's own statement read it (None: no such holder), with
    the ``at`` it was read with (``payer_params``)."""

    row: Sequence[Any] | None
    at: datetime


def payer_params(principal: Principal, at: datetime) -> dict[str, Any]:
    """The parameters of ``PAYER_HELD`` (and of the SQLite ``_PAYER``) for ``principal``."""
    return {
        "holder_id": principal.holder_id,
        "device_id": principal.device_id,
        "counter_key": f"pin:{principal.holder_id}",
        "at": at,
    }


class _PayerRow(NamedTuple):
    """The first columns of a row of ``_PAYER`` (or of the holder's part of ``PAYER_HELD``);
    the alert channels' follow (``_CHANNELS_AT``)."""

    payment_pin_hash: str | None
    phone_enc: str
    language: str
    payments_hold_until: datetime | None
    device_id: uuid.UUID | None
    trust: str | None
    revoked_at: datetime | None
    first_seen_at: datetime | None
    cooling_off_until: datetime | None


_CHANNELS_AT = len(_PayerRow._fields)


@dataclass(frozen=True)
class Payer:
    """The holder a payment password authorised: whom the movement's alert goes to, and what
    its cooling-off cap is computed from (``guards.PayerFacts``)."""

    recipient: alerts.Recipient
    payments_hold_until: datetime | None
    device: guards.DeviceFacts | None  # None: not a device of the holder's


class _SessionDevice(NamedTuple):
    """The authenticating session and its device, the columns authentication decides on."""

    session_id: uuid.UUID
    holder_id: uuid.UUID
    session_revoked_at: datetime | None
    expires_at: datetime
    last_used_at: datetime
    device_id: uuid.UUID
    trust: str  # the device's guards.DEVICE_COLUMNS, in their order
    revoked_at: datetime | None
    first_seen_at: datetime
    cooling_off_until: datetime | None


class InvalidCredentials(WalletguardError):
    status = 401
    slug = "invalid-credentials"
    title_key = "identity.login.invalid_title"
    keep_writes = True


class WeakSecret(WalletguardError):
    status = 422
    slug = "weak-secret"
    title_key = "identity.weak_secret_title"


class RegistrationCodeRefused(WalletguardError):
    status = 400
    slug = "registration-code-refused"
    title_key = "identity.registration.code_refused_title"
    keep_writes = True


class PaymentPasswordWrong(WalletguardError):
    status = 403
    slug = "payment-password-wrong"
    title_key = "identity.pin.wrong_title"
    keep_writes = True


class PaymentsLocked(WalletguardError):
    status = 423
    slug = "payments-locked"
    title_key = "identity.pin.locked_title"
    keep_writes = True


class PaymentPasswordNotSet(WalletguardError):
    status = 409
    slug = "payment-password-not-set"
    title_key = "identity.pin.not_set_title"


@dataclass(frozen=True)
class DeviceInfo:
    client_device_id: str
    label: str
    user_agent: str
    ip: str | None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the authenticated holder, from which session and device."""

    holder_id: uuid.UUID
    session_id: uuid.UUID
    device_id: uuid.UUID
    device_trust: str
    ip: str | None


@dataclass(frozen=True)
class IssuedSession:
    holder_id: uuid.UUID
    session_id: uuid.UUID
    session_token: str
    device_id: uuid.UUID
    device_token: str | None
    device_trust: str
    new_device: bool
    expires_at: datetime


@dataclass(frozen=True)
class HolderProfile:
    holder_id: uuid.UUID
    phone: str
    name: str
    birthday: date
    id_number: str | None
    created_at: datetime
    payment_password_set: bool


def _login_lock_schedule(free: int, cap: int) -> LockSchedule:
    def schedule(failures: int) -> timedelta | None:
        if failures >= cap:
            # NIST SP 800-63B: no more than 100 consecutive failures; then a long lock.
            return timedelta(hours=24)
        if failures < free:
            return None
        return timedelta(seconds=min(30 * (1 << min(failures - free, 12)), 3600))

    return schedule


class IdentityService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.settings = env.settings
        self.cipher = env.cipher
        self.clock = env.clock
        self.counters = AttemptCounters(db, env.clock)
        self.inbox = PhoneInbox(db, env.cipher, env.clock)

    # -- helpers -------------------------------------------------------------------------

    def _phone_index(self, e164: str) -> str:
        return self.cipher.blind_index(e164, context=PHONE_CONTEXT)

    def _holder_by_phone(self, e164: str) -> Holder | None:
        return self.db.scalar(select(Holder).where(Holder.phone_index == self._phone_index(e164)))

    def _holder(self, holder_id: uuid.UUID) -> Holder:
        holder = self.db.get(Holder, holder_id)
        if holder is None:
            raise NotFound("identity.holder.not_found")
        return holder

    def _code_hash(self, registration_id: uuid.UUID, code: str) -> str:
        key = self.cipher.index_key
        message = f"registration:{registration_id}:{code}".encode()
        return hmac.new(key, message, "sha256").hexdigest()

    def _verify_password(self, stored_hash: str, password: str) -> bool:
        try:
            return self.env.hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def context_of(self, holder: Holder) -> PersonalContext:
        return PersonalContext(
            phone_e164=self.cipher.decrypt(holder.phone_enc, context="holders.phone"),
            name=self.cipher.decrypt(holder.name_enc, context="holders.name"),
            birthday=date.fromisoformat(
                self.cipher.decrypt(holder.birthday_enc, context="holders.birthday")
            ),
            id_number=self.cipher.decrypt_optional(
                holder.id_number_enc, context="holders.id_number"
            ),
        )

    # -- registration --------------------------------------------------------------------

    def start_registration(self, phone: str, *, ip: str | None) -> PendingRegistration:
        """Send a code to the number (or, when it already has an account, a notice instead)."""
        e164 = parse_mobile(phone)
        phone_index = self._phone_index(e164)
        # Limits SMS to one number; the same for numbers with and without accounts.
        sms = self.counters.reserve(
            f"register-sms:{phone_index}",
            lambda n: timedelta(hours=1) if n >= self.settings.registration_sms_per_hour else None,
            window=timedelta(hours=1),
        )
        if not sms.allowed:
            raise TooManyAttempts(
                "identity.registration.too_many_sms", retry_after_s=sms.retry_after_s
            )
        now = self.clock.now()
        pending = PendingRegistration(
            id=uuid.uuid4(),
            phone_index=phone_index,
            phone_enc=self.cipher.encrypt(e164, context="pending_registrations.phone"),
            created_at=now,
            expires_at=now + timedelta(minutes=self.settings.registration_code_minutes),
        )
        existing = self._holder_by_phone(e164)
        if existing is None:
            code = f"{secrets.randbelow(10**6):06d}"
            pending.code_hash = self._code_hash(pending.id, code)
            body = text(
                "identity.sms.registration_code",
                code=code,
                minutes=self.settings.registration_code_minutes,
            )
            purpose = "registration_code"
        else:
            body = text("identity.sms.registration_attempt")
            purpose = "registration_attempt_notice"
        self.db.add(pending)
        self.inbox.send_sms(e164, sender=SENDER, body=body, purpose=purpose)
        audit.record(
            self.db,
            self.clock,
            "registration.started",
            holder_id=existing.id if existing else None,
            ip=ip,
            data={"registration_id": str(pending.id)},
        )
        return pending

    def complete_registration(
        self,
        registration_id: uuid.UUID,
        *,
        code: str,
        name: str,
        birthday: date,
        password: str,
        id_number: str | None,
        device: DeviceInfo,
    ) -> IssuedSession:
        pending = self.db.get(PendingRegistration, registration_id)
        now = self.clock.now()
        if pending is None:
            raise RegistrationCodeRefused("identity.registration.code_refused")
        tries = self.counters.reserve(
            f"register-code:{registration_id}",
            lambda n: timedelta(days=1) if n >= self.settings.registration_code_max_tries else None,
        )
        if not tries.allowed:
            raise TooManyAttempts(
                "identity.registration.too_many_codes", retry_after_s=tries.retry_after_s
            )
        expected = pending.code_hash or self._code_hash(registration_id, secrets.token_hex(8))
        if (
            pending.code_hash is None
            or pending.completed_at is not None
            or pending.expires_at <= now
            or not hmac.compare_digest(expected, self._code_hash(registration_id, code.strip()))
        ):
            raise RegistrationCodeRefused("identity.registration.code_refused")

        e164 = self.cipher.decrypt(pending.phone_enc, context="pending_registrations.phone")
        resident = None
        if id_number:
            try:
                resident = parse_resident_id(id_number, today=now.date())
            except InvalidResidentId as exc:
                raise InvalidInput(exc.code, extensions={"field": "id_number"}) from exc
            if resident.birthday != birthday:
                raise InvalidInput(
                    "identity.registration.birthday_mismatch", extensions={"field": "birthday"}
                )
        if birthday > now.date() or birthday.year < 1900:
            raise InvalidInput(
                "identity.registration.birthday_invalid", extensions={"field": "birthday"}
            )
        context = PersonalContext(
            phone_e164=e164,
            name=name,
            birthday=birthday,
            id_number=resident.number if resident else None,
        )
        self._refuse_weak_password(password, context)

        holder = Holder(
            id=uuid.uuid4(),
            phone_index=pending.phone_index,
            phone_enc=self.cipher.encrypt(e164, context="holders.phone"),
            name_enc=self.cipher.encrypt(name, context="holders.name"),
            birthday_enc=self.cipher.encrypt(birthday.isoformat(), context="holders.birthday"),
            id_number_enc=self.cipher.encrypt_optional(
                resident.number if resident else None, context="holders.id_number"
            ),
            id_number_index=(
                self.cipher.blind_index(resident.number, context="id_number") if resident else None
            ),
            password_hash=self.env.hasher.hash(password),
            password_changed_at=now,
            created_at=now,
        )
        pending.completed_at = now
        try:
            with self.db.begin_nested():
                self.db.add(holder)
                self.db.flush()
        except IntegrityError as exc:
            # Two completions for one number raced; the other one won.
            raise RegistrationCodeRefused("identity.registration.code_refused") from exc
        audit.record(self.db, self.clock, "holder.registered", holder_id=holder.id, ip=device.ip)
        self.counters.reset(f"register-code:{registration_id}")
        return self._issue_session(holder, device, trust="trusted", known_device=None)

    def _refuse_weak_password(self, password: str, context: PersonalContext) -> None:
        violations = check_login_password(password, context)
        if violations:
            raise WeakSecret(
                "identity.password.refused",
                extensions={
                    "field": "password",
                    "violations": [{"code": v.code, "params": dict(v.params)} for v in violations],
                },
            )

    # -- login ---------------------------------------------------------------------------

    def _known_device(self, device_token: str | None, holder: Holder | None) -> Device | None:
        if not device_token or holder is None:
            return None
        device = self.db.scalar(select(Device).where(Device.token_hash == hash_token(device_token)))
        if device is None or device.holder_id != holder.id or device.revoked_at is not None:
            return None
        return device

    def login(
        self, phone: str, password: str, device: DeviceInfo, *, device_token: str | None
    ) -> IssuedSession:
        e164 = parse_mobile(phone)
        phone_index = self._phone_index(e164)
        holder = self._holder_by_phone(e164)
        known = self._known_device(device_token, holder)
        schedule = _login_lock_schedule(
            self.settings.login_free_failures, self.settings.login_max_consecutive_failures
        )
        ip_key = f"login-ip:{device.ip}" if device.ip and known is None else None
        if ip_key:
            limit = self.settings.login_ip_failures_per_window
            window = timedelta(minutes=self.settings.login_ip_window_minutes)
            by_ip = self.counters.reserve(
                ip_key, lambda n: window if n >= limit else None, window=window
            )
            if not by_ip.allowed:
                audit.record(
                    self.db, self.clock, "login.throttled", ip=device.ip, data={"by": "ip"}
                )
                raise TooManyAttempts("identity.login.throttled", retry_after_s=by_ip.retry_after_s)
        # A known device has its own allowance: a flood of guesses from elsewhere never locks
        # the holder out of their own phone.
        account_key = (
            f"login:{phone_index}:device:{known.id}" if known else f"login:{phone_index}:unknown"
        )
        by_account = self.counters.reserve(account_key, schedule)
        if not by_account.allowed:
            audit.record(
                self.db,
                self.clock,
                "login.throttled",
                holder_id=holder.id if holder else None,
                ip=device.ip,
                data={"by": "account", "known_device": known is not None},
            )
            raise TooManyAttempts(
                "identity.login.throttled", retry_after_s=by_account.retry_after_s
            )
        stored = holder.password_hash if holder else self.env.dummy_password_hash
        password_ok = self._verify_password(stored, password)
        if holder is None or not password_ok:
            audit.record(
                self.db,
                self.clock,
                "login.failed",
                holder_id=holder.id if holder else None,
                device_id=known.id if known else None,
                ip=device.ip,
                data={"consecutive_failures": by_account.failures},
            )
            raise InvalidCredentials("identity.login.invalid")
        self.counters.reset(account_key)
        if ip_key:
            self.counters.refund(ip_key)
        if self.env.hasher.check_needs_rehash(holder.password_hash):
            holder.password_hash = self.env.hasher.hash(password)
            audit.record(self.db, self.clock, "password.rehashed", holder_id=holder.id)
        issued = self._issue_session(holder, device, trust="new", known_device=known)
        if self.settings.controls.risk_engine:
            # A risky sign-in is let in but its decision marks the session: the risk engine
            # challenges that session's payments and sensitive actions (rule flagged-session).
            from walletguard.risk.service import RiskEvent, RiskService

            RiskService(self.db, self.env).decide(
                RiskEvent(
                    kind="login",
                    holder_id=holder.id,
                    action="login",
                    device_id=issued.device_id,
                    session_id=issued.session_id,
                    ip=device.ip,
                )
            )
        return issued

    def _issue_session(
        self, holder: Holder, info: DeviceInfo, *, trust: str, known_device: Device | None
    ) -> IssuedSession:
        now = self.clock.now()
        device_token: str | None = None
        if known_device is None:
            device_token = secrets.token_urlsafe(32)
            device = Device(
                id=uuid.uuid4(),
                holder_id=holder.id,
                client_device_id=info.client_device_id,
                label=info.label,
                user_agent=info.user_agent,
                first_seen_ip=info.ip,
                last_seen_ip=info.ip,
                first_seen_at=now,
                last_seen_at=now,
                trust=trust,
                token_hash=hash_token(device_token),
            )
            if trust == "new" and not self.settings.controls.new_device_step_up:
                # The original product: a password alone makes a device usable (cooling-off,
                # its own switch, may still hold it back).
                device.trust = "verified"
                device.verified_at = now
                device.verified_by = "none"
                device.cooling_off_until = now + timedelta(hours=self.settings.cooling_off_hours)
            elif trust == "verified":
                # A device that completed an account recovery: the delay was its proof.
                device.verified_at = now
                device.verified_by = "recovery"
                device.cooling_off_until = now + timedelta(hours=self.settings.cooling_off_hours)
            self.db.add(device)
        else:
            device = known_device
            device.last_seen_at = now
            device.last_seen_ip = info.ip
            device.user_agent = info.user_agent
        state = self.state_of_device(device)
        session_token = secrets.token_urlsafe(32)
        session = LoginSession(
            id=uuid.uuid4(),
            holder_id=holder.id,
            device_id=device.id,
            token_hash=hash_token(session_token),
            ip=info.ip,
            user_agent=info.user_agent,
            created_at=now,
            last_used_at=now,
            expires_at=now + timedelta(days=self.settings.session_lifetime_days),
        )
        self.db.add(session)
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "login.succeeded",
            holder_id=holder.id,
            device_id=device.id,
            ip=info.ip,
            data={
                "session_id": str(session.id),
                "new_device": known_device is None,
                "device_trust": state,
                "device_label": device.label,
            },
        )
        if known_device is None and trust == "new":
            # Announced on every other device and channel, with "this was not me".
            announce(
                self.db,
                self.env,
                "security.device_added",
                holder_id=holder.id,
                device_id=device.id,
                ip=info.ip,
                suspect_device_id=device.id,
                data={"device_id": str(device.id), "device_label": device.label, "state": state},
            )
        return IssuedSession(
            holder_id=holder.id,
            session_id=session.id,
            session_token=session_token,
            device_id=device.id,
            device_token=device_token,
            device_trust=state,
            new_device=known_device is None,
            expires_at=session.expires_at,
        )

    # -- sessions ------------------------------------------------------------------------

    def authenticate(self, session_token: str, ip: str | None) -> Principal:
        self.db.flush()  # a Core read: what this unit of work changed so far is written first
        rows = core(self.db).execute(SESSION_BY_TOKEN, {"token_hash": hash_token(session_token)})
        return self.principal_of(rows.first(), ip)

    def principal_of(self, found: Sequence[Any] | None, ip: str | None) -> Principal:
        """Authentication's checks on the row ``SESSION_BY_TOKEN`` found for the token (None:
        none): the session live and not idle too long, its device not revoked; the session
        touched at most once a minute. ``authenticate`` reads the row alone; a money request
        reads it in the statement that claims its idempotency key
        (``wallet.repository.authenticate_and_claim``)."""
        now = self.clock.now()
        if found is None:
            raise NotAuthenticated()
        row = _SessionDevice._make(found)
        idle_limit = timedelta(days=self.settings.session_idle_days)
        if (
            row.session_revoked_at is not None
            or row.revoked_at is not None
            or row.expires_at <= now
            or row.last_used_at + idle_limit <= now
        ):
            raise NotAuthenticated()
        # Touch at most once a minute: a write per request would serialise every reader.
        if now - row.last_used_at > timedelta(minutes=1):
            touch = core(self.db)
            touch.execute(_TOUCH_SESSION, {"session_id": row.session_id, "now": now})
            touch.execute(_TOUCH_DEVICE, {"device_id": row.device_id, "now": now, "ip": ip})
        return Principal(
            holder_id=row.holder_id,
            session_id=row.session_id,
            device_id=row.device_id,
            device_trust=self.state_of_device(row),
            ip=ip,
        )

    def state_of_device(self, device: guards.DeviceFacts) -> str:
        return guards.device_state(
            device, self.clock.now(), self.settings.controls, self.settings.cooling_off_hours
        )

    def _refuse_unless_trusted(self, principal: Principal, target: Device | None) -> None:
        """A device not yet trusted may not sign a trusted one out: an attacker's fresh device
        would otherwise cut the holder's phone off from the alerts about it."""
        if target is not None and target.id == principal.device_id:
            return
        if target is not None and self.state_of_device(target) != DeviceState.TRUSTED:
            return
        guards.require_past_cooling_off(self.db, self.env, principal, SensitiveAction.ADD_DEVICE)

    def list_sessions(
        self, holder_id: uuid.UUID, *, offset: int, limit: int
    ) -> tuple[list[LoginSession], int]:
        now = self.clock.now()
        active = (
            LoginSession.holder_id == holder_id,
            LoginSession.revoked_at.is_(None),
            LoginSession.expires_at > now,
        )
        total = self.db.scalar(select(func.count()).select_from(LoginSession).where(*active)) or 0
        rows = self.db.scalars(
            select(LoginSession)
            .where(*active)
            .order_by(LoginSession.created_at.desc(), LoginSession.id)
            .offset(offset)
            .limit(limit)
        ).all()
        return list(rows), total

    def revoke_session(self, principal: Principal, session_id: uuid.UUID, *, reason: str) -> None:
        session = self.db.get(LoginSession, session_id)
        # Another holder's session is "not found", never "forbidden".
        if session is None or session.holder_id != principal.holder_id or session.revoked_at:
            raise NotFound("identity.session.not_found")
        self._refuse_unless_trusted(principal, self.db.get(Device, session.device_id))
        session.revoked_at = self.clock.now()
        session.revoked_reason = reason
        audit.record(
            self.db,
            self.clock,
            "session.revoked",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"session_id": str(session_id), "reason": reason},
        )

    def revoke_other_sessions(
        self, principal: Principal, *, reason: str, check_trust: bool = False
    ) -> int:
        if check_trust:
            self._refuse_unless_trusted(principal, None)
        return self._revoke_sessions_except(
            principal.holder_id, principal.session_id, reason, principal
        )

    def revoke_all_sessions(self, holder_id: uuid.UUID, *, reason: str) -> int:
        """End every session of the holder (an operator froze the account on their behalf)."""
        return self._revoke_sessions_except(holder_id, None, reason, None)

    def _revoke_sessions_except(
        self, holder_id: uuid.UUID, keep: uuid.UUID | None, reason: str, principal: Principal | None
    ) -> int:
        now = self.clock.now()
        stmt = update(LoginSession).where(
            LoginSession.holder_id == holder_id, LoginSession.revoked_at.is_(None)
        )
        if keep is not None:
            stmt = stmt.where(LoginSession.id != keep)
        result = self.db.execute(
            stmt.values(revoked_at=now, revoked_reason=reason).execution_options(
                synchronize_session=False
            )
        )
        count = int(getattr(result, "rowcount", 0) or 0)
        audit.record(
            self.db,
            self.clock,
            "sessions.revoked",
            holder_id=holder_id,
            device_id=principal.device_id if principal else None,
            ip=principal.ip if principal else None,
            data={"count": count, "reason": reason},
        )
        return count

    def list_devices(self, holder_id: uuid.UUID) -> list[Device]:
        return list(
            self.db.scalars(
                select(Device)
                .where(Device.holder_id == holder_id, Device.revoked_at.is_(None))
                .order_by(Device.first_seen_at, Device.id)
            ).all()
        )

    def revoke_device(self, principal: Principal, device_id: uuid.UUID) -> None:
        device = self.db.get(Device, device_id)
        if device is None or device.holder_id != principal.holder_id or device.revoked_at:
            raise NotFound("identity.device.not_found")
        self._refuse_unless_trusted(principal, device)
        self._end_device(device, "device_revoked")
        audit.record(
            self.db,
            self.clock,
            "device.revoked",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"revoked_device_id": str(device_id)},
        )

    def _end_device(self, device: Device, reason: str) -> int:
        now = self.clock.now()
        device.revoked_at = now
        device.trust = "revoked"
        result = self.db.execute(
            update(LoginSession)
            .where(LoginSession.device_id == device.id, LoginSession.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def revoke_device_by_report(self, device: Device) -> int:
        """A "this was not me" report names this device: it and its sessions end now."""
        sessions = self._end_device(device, "not_me")
        audit.record(
            self.db,
            self.clock,
            "device.revoked",
            holder_id=device.holder_id,
            data={"revoked_device_id": str(device.id), "reason": "not_me"},
        )
        return sessions

    def issue_recovered_session(self, holder: Holder, info: DeviceInfo) -> IssuedSession:
        """The device that completed an account recovery: verified by the delay, cooling off."""
        return self._issue_session(holder, info, trust="verified", known_device=None)

    # -- profile and credentials ---------------------------------------------------------

    def profile(self, holder_id: uuid.UUID) -> HolderProfile:
        holder = self._holder(holder_id)
        decrypt = self.cipher.decrypt
        return HolderProfile(
            holder_id=holder.id,
            phone=decrypt(holder.phone_enc, context="holders.phone"),
            name=decrypt(holder.name_enc, context="holders.name"),
            birthday=date.fromisoformat(decrypt(holder.birthday_enc, context="holders.birthday")),
            id_number=self.cipher.decrypt_optional(
                holder.id_number_enc, context="holders.id_number"
            ),
            created_at=holder.created_at,
            payment_password_set=holder.payment_pin_hash is not None,
        )

    def _require_login_password(self, principal: Principal, holder: Holder, password: str) -> None:
        key = f"reauth:{holder.id}"
        tries = self.counters.reserve(
            key, _login_lock_schedule(self.settings.login_free_failures, 100)
        )
        if not tries.allowed:
            raise TooManyAttempts("identity.login.throttled", retry_after_s=tries.retry_after_s)
        if not self._verify_password(holder.password_hash, password):
            audit.record(
                self.db,
                self.clock,
                "reauth.failed",
                holder_id=holder.id,
                device_id=principal.device_id,
                ip=principal.ip,
            )
            raise InvalidCredentials("identity.reauth.invalid")
        self.counters.reset(key)

    def change_password(self, principal: Principal, current: str, new: str) -> int:
        holder = self._holder(principal.holder_id)
        guards.require_past_cooling_off(
            self.db, self.env, principal, SensitiveAction.CHANGE_PASSWORD
        )
        self._require_login_password(principal, holder, current)
        self._refuse_weak_password(new, self.context_of(holder))
        if self._verify_password(holder.password_hash, new):
            raise WeakSecret(
                "identity.password.same_as_current",
                extensions={
                    "field": "new_password",
                    "violations": [{"code": "password.same_as_current", "params": {}}],
                },
            )
        guards.require_step_up(self.db, self.env, principal, SensitiveAction.CHANGE_PASSWORD)
        holder.password_hash = self.env.hasher.hash(new)
        holder.password_changed_at = self.clock.now()
        audit.record(
            self.db,
            self.clock,
            "password.changed",
            holder_id=holder.id,
            device_id=principal.device_id,
            ip=principal.ip,
        )
        self._announce_credential(principal, "password")
        # ASVS 7.4.3: a credential change ends every other session.
        return self._revoke_sessions_except(
            holder.id, principal.session_id, "password_changed", principal
        )

    def set_payment_password(self, principal: Principal, login_password: str, pin: str) -> None:
        """Set the first payment password, or change it (then with a fresh step-up)."""
        holder = self._holder(principal.holder_id)
        action = SensitiveAction.CHANGE_PAYMENT_PASSWORD
        guards.require_past_cooling_off(self.db, self.env, principal, action)
        self._require_login_password(principal, holder, login_password)
        self.check_new_pin(holder, pin)
        if holder.payment_pin_hash is not None:
            guards.require_step_up(self.db, self.env, principal, action)
        self.store_pin(principal, holder, pin, event_via="change")

    def check_new_pin(self, holder: Holder, pin: str) -> None:
        violations = check_payment_pin(
            pin,
            self.context_of(holder),
            lambda candidate: self._verify_password(holder.password_hash, candidate),
        )
        if violations:
            raise WeakSecret(
                "identity.pin.refused",
                extensions={
                    "field": "payment_password",
                    "violations": [{"code": v.code, "params": dict(v.params)} for v in violations],
                },
            )

    def store_pin(self, principal: Principal, holder: Holder, pin: str, *, event_via: str) -> None:
        first_time = holder.payment_pin_hash is None
        holder.payment_pin_hash = self.env.pin_hasher.hash(pin)
        holder.payment_pin_changed_at = self.clock.now()
        # A new payment password also lifts a lock from the old one's wrong tries.
        self.counters.reset(f"pin:{holder.id}")
        audit.record(
            self.db,
            self.clock,
            "payment_password.set"
            if first_time
            else (
                "payment_password.changed" if event_via == "change" else "payment_password.reset"
            ),
            holder_id=holder.id,
            device_id=principal.device_id,
            ip=principal.ip,
        )
        if not first_time:
            self._announce_credential(principal, "payment_password", via=event_via)

    def _announce_credential(
        self, principal: Principal, credential: str, via: str = "change"
    ) -> None:
        announce(
            self.db,
            self.env,
            "security.credential_changed",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            suspect_device_id=principal.device_id,
            data={"credential": credential, "via": via},
        )

    def verify_payment_password(
        self, principal: Principal, pin: str, *, read: PayerRead | None = None
    ) -> Payer:
        """Authorise a payment: 5 wrong tries lock payments, each lock twice the last.

        The holder's PIN counter is locked before the PIN is checked (``AttemptCounters.hold``):
        parallel guesses wait for each other, and each sees the count the one before it left. A
        wrong PIN is counted before its refusal commits. A PIN still stored as Argon2id (set
        before payment passwords became keyed hashes) is checked as such and, when right,
        stored again in the current format. Returns the ``Payer``, read with the PIN: the
        movement it authorises does not read the holder or the device again. ``read``: the
        row ``PAYER_HELD`` gave a caller's own statement (PostgreSQL), instead of reading it
        here."""
        holder_id = principal.holder_id
        now = read.at if read is not None else self.clock.now()
        params = payer_params(principal, now)
        key: str = params["counter_key"]
        held: Held | None = None
        if read is None and not is_postgres(self.db):
            self.db.flush()  # a Core read (see authenticate)
            found = core(self.db).execute(_PAYER, params).first()
        else:
            if read is not None:
                found = read.row
            else:
                self.db.flush()
                # The PIN counter held and the holder read in one statement; a holder without
                # a PIN (or none at all) is refused below and the hold rolled back with it.
                found = core(self.db).execute(PAYER_HELD, params).first()
            if found is not None:
                held = self.counters.held(key, now, found[0], found[1], found[2])
                found = found[3:]
        if found is None:
            raise NotFound("identity.holder.not_found")
        holder = _PayerRow._make(found[:_CHANNELS_AT])
        stored = holder.payment_pin_hash
        if stored is None:
            raise PaymentPasswordNotSet("identity.pin.not_set")
        max_failures = self.settings.pin_max_failures
        base = timedelta(minutes=self.settings.pin_lock_minutes)

        def schedule(failures: int, previous_locks: int) -> timedelta | None:
            if failures < max_failures:
                return None
            return min(base * (1 << min(previous_locks, 12)), timedelta(days=7))

        if held is None:
            held = self.counters.hold(key)
        if (wait := held.retry_after_s) > 0:
            raise PaymentsLocked(
                "identity.pin.locked",
                extensions={"retry_after_s": wait},
                headers={"Retry-After": str(wait)},
                minutes=max(1, -(-wait // 60)),
            )
        pins = self.env.pin_hasher
        legacy = not pins.is_current(stored)
        right = self._verify_password(stored, pin) if legacy else pins.verify(stored, pin)
        if not right:
            failures = self.counters.count_failure(held, schedule)
            audit.record(
                self.db,
                self.clock,
                "payment_password.failed",
                holder_id=holder_id,
                device_id=principal.device_id,
                ip=principal.ip,
                data={"consecutive_failures": failures},
            )
            raise PaymentPasswordWrong(
                "identity.pin.wrong", remaining=max(0, max_failures - failures)
            )
        if legacy:
            self.db.execute(
                update(Holder).where(Holder.id == holder_id).values(payment_pin_hash=pins.hash(pin))
            )
        if held.failures or held.locked_until is not None:
            self.counters.reset(key)
        device = None if holder.device_id is None else guards.DeviceColumns._make(holder[5:])
        recipient = recipient_from(self.env, holder_id, holder.phone_enc, holder.language)
        channels = alerts.channel_settings_of(found[_CHANNELS_AT:])
        return Payer(replace(recipient, channels=channels), holder.payments_hold_until, device)
