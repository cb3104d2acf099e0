"""The guards other capabilities call before a sensitive action (SPEC C2, C3).

``require_past_cooling_off`` refuses a device that is still in its cooling-off period,
``require_step_up`` consumes a fresh second factor granted to this session for this action, and
``cooling_off_daily_cap_fen`` says how much a cooling-off device may pay today. Each is a no-op
when its control is switched off, so the simulator can take one control away at a time.

Call order at a guarded action: cooling-off first (it writes nothing), then the action's own
checks of what the caller typed, then ``require_step_up`` — it consumes the grant in the
caller's transaction, so a refusal that rolls back leaves the grant for the next try.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from walletguard.bootstrap import Container
from walletguard.identity.models import (
    Device,
    Holder,
    Passkey,
    RecoveryCode,
    StepUpGrant,
    TotpFactor,
)
from walletguard.kit.controls import Controls
from walletguard.kit.db import core
from walletguard.kit.errors import WalletguardError
from walletguard.kit.money import format_yuan

if TYPE_CHECKING:
    # The service imports this module to compute device states; only the type goes back.
    from walletguard.identity.service import Principal


class SensitiveAction(StrEnum):
    """Actions that need a fresh second factor; the value names it in the API and in SMS texts."""

    # (Action names, not secrets: S105 reads "password" in them.)

    ADD_DEVICE = "add_device"
    ENABLE_SYNC = "enable_sync"
    BIND_CARD = "bind_card"
    RAISE_LIMIT = "raise_limit"
    REOPEN_PAYMENTS = "reopen_payments"
    CHANGE_PASSWORD = "change_password"  # noqa: S105
    CHANGE_PAYMENT_PASSWORD = "change_payment_password"  # noqa: S105
    # Forgotten payment password: the SMS code is the reset, a second factor must back it.
    RESET_PAYMENT_PASSWORD = "reset_payment_password"  # noqa: S105
    CHANGE_PHONE = "change_phone"
    DISABLE_ALERT_CHANNEL = "disable_alert_channel"
    ENROL_FACTOR = "enrol_factor"
    REMOVE_FACTOR = "remove_factor"
    # The risk engine challenged a movement or action (risk-challenge): a strong factor, never
    # SMS (the code may be read through cloud sync or a swapped SIM), clears it for one request.
    RISKY_PAYMENT = "risky_payment"


class Factor(StrEnum):
    PASSKEY = "passkey"
    TOTP = "totp"
    RECOVERY_CODE = "recovery_code"
    SMS = "sms"


# Factors the holder holds apart from any one device's inbox: none is delivered to a device.
STRONG_FACTORS = (Factor.PASSKEY, Factor.TOTP, Factor.RECOVERY_CODE)


class DeviceState(StrEnum):
    NEW = "new"
    COOLING_OFF = "cooling_off"
    TRUSTED = "trusted"
    REVOKED = "revoked"


class StepUpRequired(WalletguardError):
    status = 403
    slug = "step-up-required"
    title_key = "mfa.step_up.required_title"

    def __init__(self, action: SensitiveAction, factors: list[str]) -> None:
        super().__init__(
            "mfa.step_up.required",
            extensions={"action": action.value, "factors": factors},
        )


class DeviceCoolingOff(WalletguardError):
    status = 403
    slug = "device-cooling-off"
    title_key = "mfa.cooling_off.title"

    def __init__(self, action: SensitiveAction, until: datetime) -> None:
        super().__init__(
            "mfa.cooling_off.detail",
            extensions={"action": action.value, "until": until.isoformat()},
            until=until.strftime("%Y-%m-%d %H:%M UTC"),
        )


class CoolingOffCapReached(WalletguardError):
    """A device cooling off (or any device during the post-recovery payment hold) may move only
    a small amount out of the wallet a day."""

    status = 403
    slug = "cooling-off-cap"
    title_key = "mfa.cooling_off_cap.title"

    def __init__(self, cap_fen: int, spent_fen: int) -> None:
        super().__init__(
            "mfa.cooling_off_cap.detail",
            extensions={"cap_fen": cap_fen, "spent_today_fen": spent_fen},
            cap=format_yuan(cap_fen),
            left=format_yuan(max(0, cap_fen - spent_fen)),
        )


class DeviceNotVerified(WalletguardError):
    status = 403
    slug = "device-not-verified"
    title_key = "mfa.device.not_verified_title"

    def __init__(self) -> None:
        super().__init__("mfa.device.not_verified")


class DeviceFacts(Protocol):
    """What a device's state is computed from: a ``Device``, or a row of those columns (the
    risk engine reads them with one Core query)."""

    @property
    def trust(self) -> str: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def first_seen_at(self) -> datetime: ...
    @property
    def cooling_off_until(self) -> datetime | None: ...


def cooling_off_end(device: DeviceFacts, hours: int) -> datetime:
    return device.cooling_off_until or device.first_seen_at + timedelta(hours=hours)


def device_state(
    device: DeviceFacts, now: datetime, controls: Controls, cooling_off_hours: int
) -> str:
    """What a device may do now: ``new`` (nothing but verify itself), ``cooling_off``, ``trusted``.

    A device left ``new`` while new-device step-up is switched off is treated as verified, and a
    verified one as trusted while cooling-off is switched off (the vulnerable profile).
    """
    if device.revoked_at is not None or device.trust == "revoked":
        return DeviceState.REVOKED
    if device.trust == "trusted":
        return DeviceState.TRUSTED
    if device.trust == "new" and controls.new_device_step_up:
        return DeviceState.NEW
    if controls.cooling_off and now < cooling_off_end(device, cooling_off_hours):
        return DeviceState.COOLING_OFF
    return DeviceState.TRUSTED


def _device(db: Session, principal: Principal) -> Device:
    device = db.get(Device, principal.device_id)
    if device is None or device.holder_id != principal.holder_id:
        # Authentication already proved the session's device; this is a programming error.
        raise DeviceNotVerified()
    return device


def state_of(db: Session, env: Container, principal: Principal) -> str:
    return device_state(
        _device(db, principal),
        env.clock.now(),
        env.settings.controls,
        env.settings.cooling_off_hours,
    )


def enrolled_factors(db: Session, holder_id: uuid.UUID) -> list[Factor]:
    """The holder's strong factors in the order a client should offer them."""
    factors: list[Factor] = []
    if db.scalar(
        select(Passkey.id).where(Passkey.holder_id == holder_id, Passkey.removed_at.is_(None))
    ):
        factors.append(Factor.PASSKEY)
    if db.scalar(
        select(TotpFactor.id).where(
            TotpFactor.holder_id == holder_id,
            TotpFactor.confirmed_at.is_not(None),
            TotpFactor.removed_at.is_(None),
        )
    ):
        factors.append(Factor.TOTP)
    if db.scalar(
        select(RecoveryCode.id).where(
            RecoveryCode.holder_id == holder_id, RecoveryCode.used_at.is_(None)
        )
    ):
        factors.append(Factor.RECOVERY_CODE)
    return factors


def sms_allowed(
    action: SensitiveAction, enrolled: list[Factor], controls: Controls, *, new_device: bool
) -> bool:
    """SMS is a restricted factor: only where nothing better is enrolled, never for some uses.

    A new device never verifies itself with an SMS code: the phone holding the SIM, or whoever
    reads its messages through cloud sync, could be that very device — the attack this product
    is built around. (A trusted device approving another may use one: the code then confirms
    the holder is at the trusted device.) For a payment-password reset the SMS code is always
    part of the proof; whether it may be the *whole* proof is the reset's own decision.
    """
    if action == SensitiveAction.RISKY_PAYMENT:
        # The risk engine's own requirement (control risk_engine), not sms_restricted's.
        return False
    if not controls.sms_restricted:
        return True
    if action == SensitiveAction.RESET_PAYMENT_PASSWORD:
        return True
    if action == SensitiveAction.ADD_DEVICE and new_device:
        return False
    return not enrolled


def usable_factors(
    db: Session,
    env: Container,
    holder_id: uuid.UUID,
    action: SensitiveAction,
    *,
    new_device: bool = False,
) -> list[str]:
    """The factors that may approve ``action`` for this holder now, best first."""
    enrolled = enrolled_factors(db, holder_id)
    factors = [f.value for f in enrolled]
    if sms_allowed(action, enrolled, env.settings.controls, new_device=new_device):
        factors.append(Factor.SMS.value)
    return factors


def consume_grant(
    db: Session,
    env: Container,
    principal: Principal,
    action: SensitiveAction,
    factors: frozenset[str] | None = None,
) -> str | None:
    """Spend one fresh grant of this session for this action; the factor it was earned with.

    The conditional UPDATE makes a grant single-use even when two requests race for it.
    """
    now = env.clock.now()
    query = (
        select(StepUpGrant.id, StepUpGrant.factor)
        .where(
            StepUpGrant.session_id == principal.session_id,
            StepUpGrant.action == action.value,
            StepUpGrant.consumed_at.is_(None),
            StepUpGrant.expires_at > now,
        )
        .order_by(StepUpGrant.granted_at)
    )
    if factors is not None:
        query = query.where(StepUpGrant.factor.in_(sorted(factors)))
    for grant_id, factor in db.execute(query).all():
        spent = db.execute(
            update(StepUpGrant)
            .where(StepUpGrant.id == grant_id, StepUpGrant.consumed_at.is_(None))
            .values(consumed_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(spent, "rowcount", 0) == 1:
            return str(factor)
    return None


def require_step_up(
    db: Session, env: Container, principal: Principal, action: SensitiveAction
) -> None:
    """Ask the risk engine, then consume a fresh step-up grant for ``action``; StepUpRequired
    names the usable factors.

    Every sensitive action passes here, so this is where the risk engine scores them (SPEC C7),
    before the grant is spent: a refusal it keeps (a hold, a block) must not spend the grant.
    """
    if state_of(db, env, principal) == DeviceState.NEW:
        raise DeviceNotVerified()
    # Imported here: the risk engine reads identity's models and guards at import time.
    from walletguard.risk.service import ask_about_sensitive_action

    ask_about_sensitive_action(db, env, principal, action)
    if not env.settings.controls.step_up:
        return
    if consume_grant(db, env, principal, action) is None:
        raise StepUpRequired(action, usable_factors(db, env, principal.holder_id, action))


def require_past_cooling_off(
    db: Session, env: Container, principal: Principal, action: SensitiveAction
) -> None:
    """Refuse a sensitive action from a device still in its cooling-off period."""
    device = _device(db, principal)
    settings = env.settings
    state = device_state(device, env.clock.now(), settings.controls, settings.cooling_off_hours)
    if state == DeviceState.NEW:
        raise DeviceNotVerified()
    if state == DeviceState.COOLING_OFF:
        raise DeviceCoolingOff(action, cooling_off_end(device, settings.cooling_off_hours))


class PayerFacts(Protocol):
    """What the cooling-off cap of a movement is computed from: the holder's post-recovery
    payment hold and the paying device's columns (a row of ``_HOLD_AND_DEVICE``, or of the
    payment password's read, ``IdentityService.verify_payment_password``)."""

    @property
    def payments_hold_until(self) -> datetime | None: ...
    @property
    def device(self) -> DeviceFacts | None: ...


class _HoldAndDevice(NamedTuple):
    payments_hold_until: datetime | None
    device: DeviceFacts | None


class DeviceColumns(NamedTuple):
    """A device's state columns read alone (``DeviceFacts``)."""

    trust: str
    revoked_at: datetime | None
    first_seen_at: datetime
    cooling_off_until: datetime | None


# The device's columns in ``DeviceColumns``' order, for a statement that reads them beside others.
DEVICE_COLUMNS = (Device.trust, Device.revoked_at, Device.first_seen_at, Device.cooling_off_until)

_HOLD_AND_DEVICE = (
    select(Holder.payments_hold_until, *DEVICE_COLUMNS)
    .select_from(Device)
    .join(Holder, Holder.id == Device.holder_id)
    .where(Device.id == bindparam("device_id"), Device.holder_id == bindparam("holder_id"))
)


def cooling_off_daily_cap_fen(db: Session, env: Container, principal: Principal) -> int | None:
    """The most this device may pay today, in fen, or None for no cooling-off cap.

    0 while the account is in its post-recovery payment hold, whichever device pays.
    """
    db.flush()  # a Core read: what this unit of work changed so far is written first
    found = core(db).execute(
        _HOLD_AND_DEVICE, {"holder_id": principal.holder_id, "device_id": principal.device_id}
    )
    row = found.first()
    if row is None:
        return daily_cap_of(env, _HoldAndDevice(None, None))
    return daily_cap_of(env, _HoldAndDevice(row[0], DeviceColumns._make(row[1:])))


def daily_cap_of(env: Container, payer: PayerFacts) -> int | None:
    """``cooling_off_daily_cap_fen`` of facts already read (the movement's payment password
    read them, one statement fewer before every movement)."""
    device = payer.device
    if device is None:
        # Authentication already proved the session's device; this is a programming error.
        raise DeviceNotVerified()
    now = env.clock.now()
    settings = env.settings
    hold_until = payer.payments_hold_until
    if settings.controls.cooling_off and hold_until is not None and hold_until > now:
        return 0
    state = device_state(device, now, settings.controls, settings.cooling_off_hours)
    if state == DeviceState.NEW:
        return 0
    if state == DeviceState.COOLING_OFF:
        return settings.cooling_off_daily_cap_fen
    return None
