"""HTTP: step-up, device trust, second factors, resets, account recovery, phone-number changes,
and the "this was not me" link (SPEC C2, C3). Mounted under /api/v1 by ``identity.endpoints``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from walletguard.bootstrap import Env
from walletguard.identity import schemas
from walletguard.identity.auth import AnyDevice, CurrentHolder
from walletguard.identity.guards import DeviceState, SensitiveAction, usable_factors
from walletguard.identity.mfa import MfaService
from walletguard.identity.models import PhoneChange
from walletguard.identity.phone import mask_phone
from walletguard.identity.phone_change import PhoneChangeService
from walletguard.identity.recovery import RecoveryService
from walletguard.identity.service import DeviceInfo
from walletguard.kit.http import ClientIp, DbSession, Lang
from walletguard.kit.i18n import text

router = APIRouter()


def _device_info(request: Request, device: schemas.DeviceIn, ip: str | None) -> DeviceInfo:
    user_agent = request.headers.get("user-agent", "")[:512]
    return DeviceInfo(client_device_id=device.id, label=device.label, user_agent=user_agent, ip=ip)


# -- step-up -----------------------------------------------------------------------------------


@router.get(
    "/step-up/factors",
    response_model=schemas.FactorsForAction,
    tags=["step-up"],
    summary="Which factors can approve an action (a new device may ask, for add_device)",
)
def factors_for_action(
    action: Annotated[SensitiveAction, Query()], principal: AnyDevice, db: DbSession, env: Env
) -> schemas.FactorsForAction:
    new_device = principal.device_trust == DeviceState.NEW
    return schemas.FactorsForAction(
        action=action,
        factors=usable_factors(db, env, principal.holder_id, action, new_device=new_device),
    )


@router.post(
    "/step-up/challenges",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.StepUpChallengeOut,
    tags=["step-up"],
    summary="Start a step-up: SMS sends a code naming the action; passkey returns options",
)
def start_step_up(
    body: schemas.StepUpChallengeIn, principal: AnyDevice, db: DbSession, env: Env, lang: Lang
) -> schemas.StepUpChallengeOut:
    issued = MfaService(db, env).start_challenge(principal, body.action, body.factor)
    return schemas.StepUpChallengeOut(
        challenge_id=issued.challenge_id,
        action=issued.action,
        factor=issued.factor,
        expires_at=issued.expires_at,
        public_key=issued.public_key,
        message=text("mfa.step_up.sms_sent", lang) if issued.factor == "sms" else None,
    )


@router.post(
    "/step-up",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.StepUpOut,
    tags=["step-up"],
    summary="Pass a step-up: a grant for (this session, action), single use, a few minutes",
)
def step_up(
    body: schemas.StepUpIn, principal: AnyDevice, db: DbSession, env: Env
) -> schemas.StepUpOut:
    outcome = MfaService(db, env).step_up(
        principal,
        body.action,
        body.factor,
        code=body.code,
        challenge_id=body.challenge_id,
        assertion=body.assertion,
    )
    return schemas.StepUpOut(
        action=outcome.action,
        factor=outcome.factor,
        grant_id=outcome.grant_id,
        expires_at=outcome.expires_at,
        device_trust=outcome.device_state,
    )


# -- device trust ------------------------------------------------------------------------------


@router.get(
    "/devices/current",
    response_model=schemas.DeviceStatusOut,
    tags=["identity"],
    summary="This device: new, cooling_off or trusted, and what would verify it",
)
def current_device(principal: AnyDevice, db: DbSession, env: Env) -> schemas.DeviceStatusOut:
    device, state, until = MfaService(db, env).device_status(principal)
    factors = (
        usable_factors(db, env, principal.holder_id, SensitiveAction.ADD_DEVICE, new_device=True)
        if state == DeviceState.NEW
        else []
    )
    return schemas.DeviceStatusOut(
        id=device.id,
        label=device.label,
        trust=state,
        verified_by=device.verified_by,
        cooling_off_until=until,
        first_seen_at=device.first_seen_at,
        factors_to_verify=factors,
    )


@router.post(
    "/devices/current/approval-request",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["identity"],
    summary="Ask the holder's trusted devices to approve this one",
)
def request_device_approval(
    principal: AnyDevice, db: DbSession, env: Env, lang: Lang
) -> dict[str, str]:
    MfaService(db, env).request_approval(principal)
    return {"message": text("mfa.device.approval_requested", lang)}


@router.post(
    "/devices/{device_id}/approve",
    response_model=schemas.DeviceOut,
    tags=["identity"],
    summary="From a trusted device, with its own step-up (add_device): trust another device",
)
def approve_device(
    device_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.DeviceOut:
    device = MfaService(db, env).approve_device(principal, device_id)
    return schemas.DeviceOut(
        id=device.id,
        label=device.label,
        user_agent=device.user_agent,
        trust=DeviceState.TRUSTED,
        first_seen_ip=device.first_seen_ip,
        last_seen_ip=device.last_seen_ip,
        first_seen_at=device.first_seen_at,
        last_seen_at=device.last_seen_at,
        current=False,
    )


# -- second factors ----------------------------------------------------------------------------


@router.get(
    "/me/factors",
    response_model=list[schemas.FactorOut],
    tags=["factors"],
    summary="My second factors",
)
def list_factors(principal: CurrentHolder, db: DbSession, env: Env) -> list[schemas.FactorOut]:
    return [
        schemas.FactorOut.model_validate(f, from_attributes=True)
        for f in MfaService(db, env).list_factors(principal.holder_id)
    ]


@router.post(
    "/me/factors/totp",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.TotpStarted,
    tags=["factors"],
    summary="Start enrolling an authenticator app (step-up enrol_factor; not while cooling off)",
)
def start_totp(
    body: schemas.TotpStartIn, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.TotpStarted:
    enrolment = MfaService(db, env).start_totp(principal, body.label)
    return schemas.TotpStarted(
        factor_id=enrolment.factor_id, secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri
    )


@router.post(
    "/me/factors/totp/{factor_id}/confirm",
    response_model=schemas.FactorChanged,
    tags=["factors"],
    summary="Confirm the app with its first code (ends every other session)",
)
def confirm_totp(
    factor_id: uuid.UUID,
    body: schemas.CodeIn,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
) -> schemas.FactorChanged:
    ended = MfaService(db, env).confirm_totp(principal, factor_id, body.code)
    return schemas.FactorChanged(factor_id=factor_id, sessions_ended=ended)


@router.post(
    "/me/factors/passkeys/options",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.PasskeyOptionsOut,
    tags=["factors"],
    summary="Options for navigator.credentials.create() (step-up enrol_factor)",
)
def passkey_options(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.PasskeyOptionsOut:
    issued = MfaService(db, env).passkey_registration_options(principal)
    assert issued.public_key is not None
    return schemas.PasskeyOptionsOut(
        challenge_id=issued.challenge_id,
        expires_at=issued.expires_at,
        public_key=issued.public_key,
    )


@router.post(
    "/me/factors/passkeys",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.FactorChanged,
    tags=["factors"],
    summary="Register the passkey the authenticator created (ends every other session)",
)
def register_passkey(
    body: schemas.PasskeyRegisterIn, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.FactorChanged:
    passkey, ended = MfaService(db, env).register_passkey(
        principal, body.challenge_id, body.credential, body.label
    )
    return schemas.FactorChanged(factor_id=passkey.id, sessions_ended=ended)


@router.post(
    "/me/factors/recovery-codes",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.RecoveryCodesOut,
    tags=["factors"],
    summary="Ten new one-time recovery codes, shown once (step-up enrol_factor)",
)
def new_recovery_codes(
    principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.RecoveryCodesOut:
    codes, ended = MfaService(db, env).new_recovery_codes(principal)
    return schemas.RecoveryCodesOut(codes=codes, sessions_ended=ended)


@router.delete(
    "/me/factors/{factor_id}",
    response_model=schemas.FactorChanged,
    tags=["factors"],
    summary="Remove a TOTP app or passkey (step-up remove_factor; ends every other session)",
)
def remove_factor(
    factor_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.FactorChanged:
    ended = MfaService(db, env).remove_factor(principal, factor_id)
    return schemas.FactorChanged(factor_id=factor_id, sessions_ended=ended)


# -- forgotten passwords -----------------------------------------------------------------------


@router.post(
    "/me/payment-password/reset",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["identity"],
    summary="Forgotten payment password: SMS step-up plus another factor or a trusted device",
)
def reset_payment_password(
    body: schemas.PaymentPasswordReset, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    RecoveryService(db, env).reset_payment_password(principal, body.payment_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.PasswordResetStarted,
    tags=["recovery"],
    summary="Forgotten login password: a code is sent to the bound phone",
)
def start_password_reset(
    body: schemas.PasswordResetStart, db: DbSession, env: Env, ip: ClientIp, lang: Lang
) -> schemas.PasswordResetStarted:
    reset = RecoveryService(db, env).start_password_reset(body.phone, ip=ip)
    return schemas.PasswordResetStarted(
        reset_id=reset.id,
        expires_at=reset.expires_at,
        message=text("mfa.reset.code_sent", lang),
    )


@router.post(
    "/password-reset/{reset_id}/verify",
    response_model=schemas.PasswordResetNeeds,
    tags=["recovery"],
    summary="Check the SMS code; says which second factor completes the reset",
)
def verify_password_reset(
    reset_id: uuid.UUID, body: schemas.PasswordResetVerify, db: DbSession, env: Env
) -> schemas.PasswordResetNeeds:
    needs = RecoveryService(db, env).password_reset_needs(reset_id, body.sms_code)
    return schemas.PasswordResetNeeds(factors=needs.factors, passkey_options=needs.passkey_options)


@router.post(
    "/password-reset/{reset_id}/complete",
    response_model=schemas.SessionsEnded,
    tags=["recovery"],
    summary="Set the new password: SMS code and, when enrolled, a second factor (ends sessions)",
)
def complete_password_reset(
    reset_id: uuid.UUID,
    body: schemas.PasswordResetComplete,
    db: DbSession,
    env: Env,
    ip: ClientIp,
) -> schemas.SessionsEnded:
    ended = RecoveryService(db, env).complete_password_reset(
        reset_id,
        sms_code=body.sms_code,
        new_password=body.new_password,
        factor=body.factor,
        code=body.code,
        assertion=body.assertion,
        ip=ip,
    )
    return schemas.SessionsEnded(sessions_ended=ended)


# -- phone-number change -----------------------------------------------------------------------


def _phone_change_out(env: Env, change: PhoneChange) -> schemas.PhoneChangeOut:
    e164 = env.cipher.decrypt(change.new_phone_enc, context="phone_changes.new_phone")
    return schemas.PhoneChangeOut(
        id=change.id,
        new_phone_masked=mask_phone(e164),
        requested_at=change.requested_at,
        confirmed_at=change.confirmed_at,
        effective_at=change.effective_at,
    )


@router.get(
    "/me/phone-change",
    response_model=list[schemas.PhoneChangeOut],
    tags=["identity"],
    summary="A pending change of the bound phone number (at most one)",
)
def pending_phone_change(
    principal: CurrentHolder, db: DbSession, env: Env
) -> list[schemas.PhoneChangeOut]:
    change = PhoneChangeService(db, env).pending(principal.holder_id)
    return [_phone_change_out(env, change)] if change else []


@router.post(
    "/me/phone-change",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.PhoneChangeOut,
    tags=["identity"],
    summary="Bind a new phone number (step-up change_phone): a code is sent to the new number",
)
def request_phone_change(
    body: schemas.PhoneChangeIn, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.PhoneChangeOut:
    change = PhoneChangeService(db, env).request(principal, body.new_phone)
    return _phone_change_out(env, change)


@router.post(
    "/me/phone-change/{change_id}/confirm",
    response_model=schemas.PhoneChangeOut,
    tags=["identity"],
    summary="The code from the new number; the change takes effect after the delay",
)
def confirm_phone_change(
    change_id: uuid.UUID,
    body: schemas.CodeIn,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
) -> schemas.PhoneChangeOut:
    change = PhoneChangeService(db, env).confirm(principal, change_id, body.code)
    return _phone_change_out(env, change)


@router.post(
    "/me/phone-change/{change_id}/complete",
    response_model=schemas.SessionsEnded,
    tags=["identity"],
    summary="After the delay: make the new number the account's (ends every other session)",
)
def complete_phone_change(
    change_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.SessionsEnded:
    ended = PhoneChangeService(db, env).complete(principal, change_id)
    return schemas.SessionsEnded(sessions_ended=ended)


@router.post(
    "/me/phone-change/{change_id}/cancel",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["identity"],
    summary="Cancel a pending phone-number change, from any signed-in device",
)
def cancel_phone_change(
    change_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    PhoneChangeService(db, env).cancel(principal, change_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- account recovery --------------------------------------------------------------------------


@router.post(
    "/recovery",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.RecoveryStartedOut,
    tags=["recovery"],
    summary="Every factor lost: identity check, then a delay announced on every old channel",
)
def start_recovery(
    body: schemas.RecoveryStartIn,
    request: Request,
    db: DbSession,
    env: Env,
    ip: ClientIp,
    lang: Lang,
) -> schemas.RecoveryStartedOut:
    started = RecoveryService(db, env).start_recovery(
        phone=body.phone,
        name=body.name,
        id_number=body.id_number,
        device=_device_info(request, body.device, ip),
    )
    return schemas.RecoveryStartedOut(
        recovery_id=started.recovery_id,
        recovery_token=started.recovery_token,
        completes_at=started.completes_at,
        message=text("mfa.recovery.started", lang, hours=env.settings.recovery_delay_hours),
    )


@router.get(
    "/recovery",
    response_model=list[schemas.RecoveryOut],
    tags=["recovery"],
    summary="Recoveries under way for my account (cancel any I did not start)",
)
def list_recoveries(principal: CurrentHolder, db: DbSession, env: Env) -> list[schemas.RecoveryOut]:
    return [
        schemas.RecoveryOut(
            id=r.id,
            device_label=r.device_label,
            started_at=r.started_at,
            completes_at=r.completes_at,
        )
        for r in RecoveryService(db, env).pending_recoveries(principal.holder_id)
    ]


@router.post(
    "/recovery/cancel/{token}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["recovery"],
    summary="Cancel a recovery with the signed link from its announcement (no login)",
)
def cancel_recovery_by_link(token: str, db: DbSession, env: Env, ip: ClientIp) -> Response:
    RecoveryService(db, env).cancel_recovery_by_link(token, ip)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/recovery/{recovery_id}/cancel",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["recovery"],
    summary="Cancel a recovery of my account, from any signed-in device",
)
def cancel_recovery(
    recovery_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    RecoveryService(db, env).cancel_recovery(principal, recovery_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/recovery/{recovery_id}/complete",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.SessionIssued,
    tags=["recovery"],
    summary="After the delay, from the device that started it: new password, signed in",
)
def complete_recovery(
    recovery_id: uuid.UUID,
    body: schemas.RecoveryCompleteIn,
    request: Request,
    db: DbSession,
    env: Env,
    ip: ClientIp,
) -> schemas.SessionIssued:
    issued = RecoveryService(db, env).complete_recovery(
        recovery_id,
        token=body.recovery_token,
        new_password=body.new_password,
        device=_device_info(request, body.device, ip),
    )
    return schemas.SessionIssued.model_validate(issued, from_attributes=True)


# -- "this was not me" -------------------------------------------------------------------------


@router.get(
    "/not-me/{token}",
    response_model=schemas.NotMeInfo,
    tags=["recovery"],
    summary="What a 'this was not me' link is about (changes nothing)",
)
def describe_not_me(token: str, db: DbSession, env: Env) -> schemas.NotMeInfo:
    event, expires_at, label = RecoveryService(db, env).describe_not_me(token)
    return schemas.NotMeInfo(event=event, expires_at=expires_at, device_label=label)


@router.post(
    "/not-me/{token}",
    response_model=schemas.NotMeOut,
    tags=["recovery"],
    summary="This was not me: freeze payments, revoke the device named in the link (no login)",
)
def report_not_me(
    token: str, db: DbSession, env: Env, ip: ClientIp, lang: Lang, response: Response
) -> schemas.NotMeOut:
    outcome = RecoveryService(db, env).report_not_me(token, ip)
    if outcome.case_id is not None:
        # The incident case it opened: the holder sees it there once signed in.
        response.headers["Link"] = f'</api/v1/incidents/{outcome.case_id}>; rel="incident"'
    return schemas.NotMeOut(
        device_revoked=outcome.device_revoked,
        sessions_revoked=outcome.sessions_revoked,
        payments_frozen=outcome.payments_frozen,
        message=text("mfa.not_me.done", lang),
    )
