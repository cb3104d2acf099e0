"""HTTP: what a device sees of the holder's SMS, cloud sync, the SIM device; sandbox carrier."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from walletguard.bootstrap import Env
from walletguard.identity.auth import CurrentHolder
from walletguard.identity.phone import parse_mobile
from walletguard.identity.schemas import InboxMessageOut
from walletguard.kit.http import DbSession, Lang
from walletguard.kit.i18n import text
from walletguard.messages import schemas
from walletguard.messages.service import PhoneInbox
from walletguard.messages.sync import CloudSync

router = APIRouter(prefix="/api/v1/messages", tags=["messages"])
sandbox_router = APIRouter(prefix="/api/v1/sandbox", tags=["sandbox"])


@router.get("", response_model=list[schemas.MessageOut], summary="The SMS this device may see")
def list_messages(
    principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> list[schemas.MessageOut]:
    return [
        schemas.MessageOut.model_validate(m, from_attributes=True)
        for m in CloudSync(db, env).visible_messages(principal, lang)
    ]


@router.get("/sync", response_model=schemas.SyncState, summary="Sync and SIM state of this device")
def sync_state(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.SyncState:
    sync = CloudSync(db, env)
    return schemas.SyncState(
        sync_enabled=sync.sync_enabled(principal), holds_sim=sync.holds_sim(principal)
    )


@router.post(
    "/sync",
    response_model=schemas.SyncState,
    summary="Turn cloud message sync on for this device (step-up; not while cooling off)",
)
def enable_sync(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.SyncState:
    sync = CloudSync(db, env)
    sync.enable_sync(principal)
    return schemas.SyncState(sync_enabled=True, holds_sim=sync.holds_sim(principal))


@router.delete(
    "/sync", status_code=status.HTTP_204_NO_CONTENT, summary="Turn sync off for this device"
)
def disable_sync(principal: CurrentHolder, db: DbSession, env: Env) -> Response:
    CloudSync(db, env).disable_sync(
        principal.holder_id, device_id=principal.device_id, reason="holder"
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/sim-claim",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Prove this device holds the SIM: a code is sent to the bound number",
)
def start_sim_claim(
    principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> dict[str, str]:
    CloudSync(db, env).start_sim_claim(principal)
    return {"message": text("identity.registration.code_sent", lang)}


@router.post(
    "/sim-claim/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Confirm with the code read on this device",
)
def confirm_sim_claim(
    body: schemas.SimClaimConfirm, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    CloudSync(db, env).confirm_sim_claim(principal, body.code)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- sandbox carrier (WALLETGUARD_SANDBOX=true only) ------------------------------------------


@sandbox_router.get(
    "/phones/{phone}/messages",
    response_model=list[InboxMessageOut],
    summary="The SMS inbox of the phone holding this number's SIM",
)
def phone_messages(phone: str, db: DbSession, env: Env) -> list[InboxMessageOut]:
    e164 = parse_mobile(phone)
    return [
        InboxMessageOut(sender=m.sender, body=m.body, received_at=m.received_at, purpose=m.purpose)
        for m in PhoneInbox(db, env.cipher, env.clock).messages(e164)
    ]


@sandbox_router.post(
    "/phones/{phone}/messages",
    status_code=status.HTTP_201_CREATED,
    summary="Deliver an SMS from the outside world (a bank, a scammer) to this number",
)
def deliver_sms(phone: str, body: schemas.IncomingSms, db: DbSession, env: Env) -> Response:
    PhoneInbox(db, env.cipher, env.clock).send_sms(
        parse_mobile(phone), sender=body.sender, body=body.body, purpose="external"
    )
    return Response(status_code=status.HTTP_201_CREATED)


@sandbox_router.post(
    "/phones/{phone}/sim-swap",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="The carrier moves this number to a new SIM",
)
def sim_swap(phone: str, db: DbSession, env: Env) -> Response:
    # No SMS notice: after the swap the number's messages reach the new SIM, not the victim.
    CloudSync(db, env).record_sim_swap(parse_mobile(phone))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
