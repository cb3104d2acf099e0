"""API shapes for accounts, devices and sessions."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from walletguard.identity.guards import Factor, SensitiveAction
from walletguard.kit.pagination import Pagination

Phone = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=32)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceIn(StrictModel):
    id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class RegistrationStart(StrictModel):
    phone: Phone


class RegistrationStarted(BaseModel):
    registration_id: uuid.UUID
    expires_at: datetime
    message: str


class RegistrationComplete(StrictModel):
    code: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\d{6}$")]
    name: Name
    birthday: date
    password: Secret
    id_number: Annotated[str, StringConstraints(strip_whitespace=True, max_length=24)] | None = None
    device: DeviceIn


class LoginIn(StrictModel):
    phone: Phone
    password: Secret
    device: DeviceIn
    device_token: Annotated[str, StringConstraints(max_length=128)] | None = None


class SessionIssued(BaseModel):
    holder_id: uuid.UUID
    session_id: uuid.UUID
    session_token: str
    device_id: uuid.UUID
    device_token: str | None = Field(
        description="Returned once, for a device seen for the first time: keep it and send it "
        "with every login from this device."
    )
    device_trust: str
    new_device: bool
    expires_at: datetime


class SessionOut(BaseModel):
    id: uuid.UUID
    device_id: uuid.UUID
    ip: str | None
    user_agent: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    current: bool


class SessionPage(BaseModel):
    items: list[SessionOut]
    pagination: Pagination


class RevokedCount(BaseModel):
    revoked: int


class DeviceOut(BaseModel):
    id: uuid.UUID
    label: str
    user_agent: str
    trust: str
    first_seen_ip: str | None
    last_seen_ip: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    current: bool
    cooling_off_until: datetime | None = None


class ProfileOut(BaseModel):
    holder_id: uuid.UUID
    phone_masked: str
    name_masked: str
    birthday: date
    id_number_masked: str | None
    created_at: datetime
    payment_password_set: bool


class PasswordChange(StrictModel):
    current_password: Secret
    new_password: Secret


class PaymentPasswordSet(StrictModel):
    login_password: Secret
    payment_password: Annotated[str, StringConstraints(min_length=1, max_length=16)]


class PaymentPasswordCheck(StrictModel):
    payment_password: Annotated[str, StringConstraints(min_length=1, max_length=16)]


class AuditEventOut(BaseModel):
    seq: int
    at: datetime
    event: str
    device_id: uuid.UUID | None
    ip: str | None


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    pagination: Pagination


class InboxMessageOut(BaseModel):
    sender: str
    body: str
    received_at: datetime
    purpose: str


# -- devices, factors and step-up (SPEC C2, C3) ----------------------------------------------

Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# A WebAuthn credential as the browser's PublicKeyCredential.toJSON() gives it.
WebAuthnJson = dict[str, Any]


class FactorsForAction(BaseModel):
    action: SensitiveAction
    factors: list[str] = Field(
        description="Factors that can approve this action now, best first; empty means none is "
        "enrolled that may (ask a trusted device, or start an account recovery)."
    )


class StepUpChallengeIn(StrictModel):
    action: SensitiveAction
    factor: Factor


class StepUpChallengeOut(BaseModel):
    challenge_id: uuid.UUID
    action: str
    factor: str
    expires_at: datetime
    public_key: WebAuthnJson | None = Field(
        default=None, description="Passkey: options for navigator.credentials.get()."
    )
    message: str | None = None


class StepUpIn(StrictModel):
    action: SensitiveAction
    factor: Factor
    code: Code | None = Field(default=None, description="TOTP, recovery or SMS code.")
    challenge_id: uuid.UUID | None = Field(default=None, description="SMS and passkey.")
    assertion: WebAuthnJson | None = Field(default=None, description="Passkey assertion.")


class StepUpOut(BaseModel):
    action: str
    factor: str
    grant_id: uuid.UUID | None = Field(
        description="Null when the step-up verified this new device itself."
    )
    expires_at: datetime | None
    device_trust: str


class DeviceStatusOut(BaseModel):
    id: uuid.UUID
    label: str
    trust: str
    verified_by: str | None
    cooling_off_until: datetime | None
    first_seen_at: datetime
    factors_to_verify: list[str]


class TotpStartIn(StrictModel):
    label: Label = "authenticator"


class TotpStarted(BaseModel):
    factor_id: uuid.UUID
    secret: str = Field(description="Shown once: type it into the authenticator app.")
    otpauth_uri: str


class CodeIn(StrictModel):
    code: Code


class PasskeyOptionsOut(BaseModel):
    challenge_id: uuid.UUID
    expires_at: datetime
    public_key: WebAuthnJson


class PasskeyRegisterIn(StrictModel):
    challenge_id: uuid.UUID
    credential: WebAuthnJson
    label: Label = "passkey"


class FactorOut(BaseModel):
    id: uuid.UUID | None
    kind: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    remaining: int | None = Field(default=None, description="Recovery codes left.")


class FactorChanged(BaseModel):
    factor_id: uuid.UUID | None = None
    sessions_ended: int


class RecoveryCodesOut(BaseModel):
    codes: list[str] = Field(description="Shown once. Each works once.")
    sessions_ended: int


class PaymentPasswordReset(StrictModel):
    payment_password: Annotated[str, StringConstraints(min_length=1, max_length=16)]


class PasswordResetStart(StrictModel):
    phone: Phone


class PasswordResetStarted(BaseModel):
    reset_id: uuid.UUID
    expires_at: datetime
    message: str


class PasswordResetVerify(StrictModel):
    sms_code: Code


class PasswordResetNeeds(BaseModel):
    factors: list[str]
    passkey_options: WebAuthnJson | None


class PasswordResetComplete(StrictModel):
    sms_code: Code
    new_password: Secret
    factor: Factor | None = None
    code: Code | None = None
    assertion: WebAuthnJson | None = None


class SessionsEnded(BaseModel):
    sessions_ended: int


class PhoneChangeIn(StrictModel):
    new_phone: Phone


class PhoneChangeOut(BaseModel):
    id: uuid.UUID
    new_phone_masked: str
    requested_at: datetime
    confirmed_at: datetime | None
    effective_at: datetime | None


class RecoveryStartIn(StrictModel):
    phone: Phone
    name: Name
    id_number: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=24)]
    device: DeviceIn


class RecoveryStartedOut(BaseModel):
    recovery_id: uuid.UUID
    recovery_token: str = Field(description="Keep it: this device completes the recovery with it.")
    completes_at: datetime
    message: str


class RecoveryCompleteIn(StrictModel):
    recovery_token: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    new_password: Secret
    device: DeviceIn


class RecoveryOut(BaseModel):
    id: uuid.UUID
    device_label: str
    started_at: datetime
    completes_at: datetime


class NotMeInfo(BaseModel):
    event: str
    expires_at: datetime
    device_label: str | None


class NotMeOut(BaseModel):
    device_revoked: bool
    sessions_revoked: int
    payments_frozen: bool
    message: str
