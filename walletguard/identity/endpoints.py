"""HTTP: registration, login, sessions, devices, profile, credentials."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request, Response, status

from walletguard.audit import service as audit
from walletguard.bootstrap import Env
from walletguard.identity import schemas
from walletguard.identity.auth import AnyDevice, CurrentHolder
from walletguard.identity.guards import DeviceState, cooling_off_end
from walletguard.identity.phone import mask_name, mask_phone
from walletguard.identity.security_endpoints import router as security_router
from walletguard.identity.service import DeviceInfo, IdentityService
from walletguard.kit.http import ClientIp, DbSession, Lang
from walletguard.kit.i18n import text
from walletguard.kit.pagination import PageParams, Pagination, page_params

router = APIRouter(prefix="/api/v1", tags=["identity"])


def _device_info(request: Request, device: schemas.DeviceIn, ip: str | None) -> DeviceInfo:
    user_agent = request.headers.get("user-agent", "")[:512]
    return DeviceInfo(client_device_id=device.id, label=device.label, user_agent=user_agent, ip=ip)


def _issued(issued: object) -> schemas.SessionIssued:
    return schemas.SessionIssued.model_validate(issued, from_attributes=True)


@router.post(
    "/registrations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.RegistrationStarted,
    summary="Start registration: a code is sent by SMS to the number",
)
def start_registration(
    body: schemas.RegistrationStart, db: DbSession, env: Env, ip: ClientIp, lang: Lang
) -> schemas.RegistrationStarted:
    pending = IdentityService(db, env).start_registration(body.phone, ip=ip)
    return schemas.RegistrationStarted(
        registration_id=pending.id,
        expires_at=pending.expires_at,
        message=text("identity.registration.code_sent", lang),
    )


@router.post(
    "/registrations/{registration_id}/complete",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.SessionIssued,
    summary="Finish registration with the SMS code; signs in on this device",
)
def complete_registration(
    registration_id: uuid.UUID,
    body: schemas.RegistrationComplete,
    request: Request,
    db: DbSession,
    env: Env,
    ip: ClientIp,
) -> schemas.SessionIssued:
    issued = IdentityService(db, env).complete_registration(
        registration_id,
        code=body.code,
        name=body.name,
        birthday=body.birthday,
        password=body.password,
        id_number=body.id_number,
        device=_device_info(request, body.device, ip),
    )
    return _issued(issued)


@router.post(
    "/sessions",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.SessionIssued,
    summary="Sign in from a device",
)
def login(
    body: schemas.LoginIn, request: Request, db: DbSession, env: Env, ip: ClientIp
) -> schemas.SessionIssued:
    issued = IdentityService(db, env).login(
        body.phone,
        body.password,
        _device_info(request, body.device, ip),
        device_token=body.device_token,
    )
    return _issued(issued)


@router.get("/sessions", response_model=schemas.SessionPage, summary="My active sessions")
def list_sessions(
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    params: PageParams = Depends(page_params),
) -> schemas.SessionPage:
    rows, total = IdentityService(db, env).list_sessions(
        principal.holder_id, offset=params.offset, limit=params.limit
    )
    items = [
        schemas.SessionOut(
            id=row.id,
            device_id=row.device_id,
            ip=row.ip,
            user_agent=row.user_agent,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            expires_at=row.expires_at,
            current=row.id == principal.session_id,
        )
        for row in rows
    ]
    return schemas.SessionPage(items=items, pagination=Pagination.of(params, total))


@router.delete("/sessions/current", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out")
def logout(principal: AnyDevice, db: DbSession, env: Env) -> Response:
    IdentityService(db, env).revoke_session(principal, principal.session_id, reason="logout")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/sessions/revoke-others",
    response_model=schemas.RevokedCount,
    summary="Sign out everywhere else",
)
def revoke_other_sessions(
    principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.RevokedCount:
    count = IdentityService(db, env).revoke_other_sessions(
        principal, reason="holder_revoked_others", check_trust=True
    )
    return schemas.RevokedCount(revoked=count)


@router.delete(
    "/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, summary="End one session"
)
def revoke_session(
    session_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    IdentityService(db, env).revoke_session(principal, session_id, reason="holder_revoked")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/devices", response_model=list[schemas.DeviceOut], summary="My devices")
def list_devices(principal: CurrentHolder, db: DbSession, env: Env) -> list[schemas.DeviceOut]:
    identity = IdentityService(db, env)
    hours = env.settings.cooling_off_hours
    devices = [(d, identity.state_of_device(d)) for d in identity.list_devices(principal.holder_id)]
    return [
        schemas.DeviceOut(
            id=d.id,
            label=d.label,
            user_agent=d.user_agent,
            trust=state,
            cooling_off_until=cooling_off_end(d, hours)
            if state == DeviceState.COOLING_OFF
            else None,
            first_seen_ip=d.first_seen_ip,
            last_seen_ip=d.last_seen_ip,
            first_seen_at=d.first_seen_at,
            last_seen_at=d.last_seen_at,
            current=d.id == principal.device_id,
        )
        for d, state in devices
    ]


@router.delete(
    "/devices/{device_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a device and end its sessions",
)
def revoke_device(
    device_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    IdentityService(db, env).revoke_device(principal, device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=schemas.ProfileOut, summary="My profile (masked)")
def me(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.ProfileOut:
    profile = IdentityService(db, env).profile(principal.holder_id)
    return schemas.ProfileOut(
        holder_id=profile.holder_id,
        phone_masked=mask_phone(profile.phone),
        name_masked=mask_name(profile.name),
        birthday=profile.birthday,
        id_number_masked=(
            profile.id_number[:1] + "*" * 16 + profile.id_number[-1:] if profile.id_number else None
        ),
        created_at=profile.created_at,
        payment_password_set=profile.payment_password_set,
    )


@router.post(
    "/me/password",
    response_model=schemas.RevokedCount,
    summary="Change the login password (ends every other session)",
)
def change_password(
    body: schemas.PasswordChange, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.RevokedCount:
    revoked = IdentityService(db, env).change_password(
        principal, body.current_password, body.new_password
    )
    return schemas.RevokedCount(revoked=revoked)


@router.put(
    "/me/payment-password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set or change the 6-digit payment password",
)
def set_payment_password(
    body: schemas.PaymentPasswordSet, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    IdentityService(db, env).set_payment_password(
        principal, body.login_password, body.payment_password
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/me/payment-password/verify",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Check the payment password (counts towards the lockout)",
)
def verify_payment_password(
    body: schemas.PaymentPasswordCheck, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    IdentityService(db, env).verify_payment_password(principal, body.payment_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me/security-events",
    response_model=schemas.AuditEventPage,
    summary="My security events from the audit log",
)
def security_events(
    principal: CurrentHolder, db: DbSession, params: PageParams = Depends(page_params)
) -> schemas.AuditEventPage:
    rows, total = audit.events_for_holder(
        db, principal.holder_id, offset=params.offset, limit=params.limit
    )
    items = [
        schemas.AuditEventOut(seq=r.seq, at=r.at, event=r.event, device_id=r.device_id, ip=r.ip)
        for r in rows
    ]
    return schemas.AuditEventPage(items=items, pagination=Pagination.of(params, total))


# Devices, factors, step-up, resets, recovery, phone changes, "this was not me".
router.include_router(security_router)
