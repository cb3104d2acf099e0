"""Holders, their devices and sessions, pending registrations; second factors, step-up grants,
recovery, phone-number changes and "this was not me" reports."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.kit.db import Base, new_id


class Holder(Base):
    __tablename__ = "holders"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    # Blind index of the E.164 phone number; unique so one number is one account.
    phone_index: Mapped[str] = mapped_column(String(64), unique=True)
    phone_enc: Mapped[str] = mapped_column(Text)
    name_enc: Mapped[str] = mapped_column(Text)
    birthday_enc: Mapped[str] = mapped_column(Text)
    id_number_enc: Mapped[str | None] = mapped_column(Text)
    id_number_index: Mapped[str | None] = mapped_column(String(64), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    password_changed_at: Mapped[datetime]
    payment_pin_hash: Mapped[str | None] = mapped_column(String(255))
    payment_pin_changed_at: Mapped[datetime | None]
    language: Mapped[str] = mapped_column(String(8), default="zh-CN")
    created_at: Mapped[datetime]
    # After an account recovery payments stay closed until then (the recovered account may be
    # the attacker's: the real holder gets a day to notice).
    payments_hold_until: Mapped[datetime | None]


class Device(Base):
    """A phone, tablet or browser a holder signs in from.

    ``trust`` is ``trusted`` for the device the account was opened on (and devices a trusted
    one approves), ``new`` for any other until it passes a step-up with a factor it does not
    hold itself, then ``verified`` — cooling off until ``cooling_off_until`` —, ``revoked`` once
    the holder removes it. ``walletguard.identity.guards.device_state`` says what that means now.
    """

    __tablename__ = "devices"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    client_device_id: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(100))
    user_agent: Mapped[str] = mapped_column(String(512))
    first_seen_ip: Mapped[str | None] = mapped_column(String(64))
    last_seen_ip: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    trust: Mapped[str] = mapped_column(String(16))
    # The device cookie (OWASP "device cookies"): a known device keeps its own login allowance.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]
    verified_at: Mapped[datetime | None]
    # The factor that verified it: totp, passkey, recovery_code, sms, device_approval, recovery,
    # or "none" when new-device step-up was switched off.
    verified_by: Mapped[str | None] = mapped_column(String(32))
    cooling_off_until: Mapped[datetime | None]


class LoginSession(Base):
    __tablename__ = "login_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class PendingRegistration(Base):
    """Step one of registration. A row exists whether or not the number is taken, so the
    answer (and its timing) never tells a stranger which numbers have accounts."""

    __tablename__ = "pending_registrations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    phone_index: Mapped[str] = mapped_column(String(64), index=True)
    phone_enc: Mapped[str] = mapped_column(Text)
    # Null when the number already has an account: no code was sent, none can match.
    code_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


# -- second factors ------------------------------------------------------------------------


class TotpFactor(Base):
    """An authenticator app (RFC 6238). Pending until a first code confirms the holder has it."""

    __tablename__ = "totp_factors"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    # The base32 seed, field-encrypted: whoever reads it can mint codes.
    secret_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    # The 30-second step of the last accepted code: a code is accepted once, never again.
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)
    last_used_at: Mapped[datetime | None]
    removed_at: Mapped[datetime | None]


class Passkey(Base):
    """A WebAuthn credential: the wallet's fingerprint / face."""

    __tablename__ = "passkeys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    # base64url, as the browser reports it.
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    public_key: Mapped[str] = mapped_column(Text)
    # The authenticator's signature counter: a value that does not grow means a cloned key.
    sign_count: Mapped[int] = mapped_column(BigInteger)
    aaguid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    removed_at: Mapped[datetime | None]


class RecoveryCode(Base):
    """One of ten one-time codes, stored only as its HMAC."""

    __tablename__ = "recovery_codes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


# -- step-up -------------------------------------------------------------------------------


class StepUpChallenge(Base):
    """An SMS code or a WebAuthn challenge issued to one session for one named action."""

    __tablename__ = "step_up_challenges"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("login_sessions.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    # sms | passkey | passkey_registration
    factor: Mapped[str] = mapped_column(String(32))
    # HMAC of the SMS code, or the WebAuthn challenge (base64url).
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class StepUpGrant(Base):
    """A fresh second factor, good once for one action from one session."""

    __tablename__ = "step_up_grants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("login_sessions.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    factor: Mapped[str] = mapped_column(String(32))
    granted_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    consumed_at: Mapped[datetime | None]


# -- "this was not me", recovery, resets, phone changes ------------------------------------


class NotMeReport(Base):
    """A used "this was not me" link: the primary key makes each link single-use."""

    __tablename__ = "not_me_reports"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    event: Mapped[str] = mapped_column(String(64))
    reported_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64))


class RecoveryRequest(Base):
    """Account recovery when every factor is lost: identity check, then a long, loud delay.

    A row is written whether or not the identity check passed (``holder_id`` is null when it
    did not), so the answer never confirms whose phone, name and ID number belong together.
    """

    __tablename__ = "recovery_requests"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("holders.id"), index=True)
    # The requesting device proves it is the one that started it with this token.
    token_hash: Mapped[str] = mapped_column(String(64))
    client_device_id: Mapped[str] = mapped_column(String(128))
    device_label: Mapped[str] = mapped_column(String(100))
    user_agent: Mapped[str] = mapped_column(String(512))
    ip: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    completes_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]
    cancelled_by: Mapped[str | None] = mapped_column(String(32))
    completed_at: Mapped[datetime | None]


class PasswordReset(Base):
    """A forgotten login password: an SMS code to the bound phone, then any second factor."""

    __tablename__ = "password_resets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("holders.id"), index=True)
    phone_index: Mapped[str] = mapped_column(String(64), index=True)
    # Null when the number has no account: no code was sent, none can match.
    code_hash: Mapped[str | None] = mapped_column(String(64))
    passkey_challenge: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    sms_verified_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class PhoneChange(Base):
    """Binding a new phone number: a new authenticator, so step-up, a delay, and announced."""

    __tablename__ = "phone_changes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    new_phone_index: Mapped[str] = mapped_column(String(64))
    new_phone_enc: Mapped[str] = mapped_column(Text)
    # HMAC of the code sent to the new number (proves the holder has that SIM).
    code_hash: Mapped[str] = mapped_column(String(64))
    requested_by_device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id"))
    requested_at: Mapped[datetime]
    code_expires_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    effective_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
