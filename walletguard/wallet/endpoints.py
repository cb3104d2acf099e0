"""HTTP: the wallet, cards, money movements, limits, history and its CSV export.

Every money POST (top-ups, withdrawals, payments, transfers, confirm, cancel) needs an
``Idempotency-Key`` header: a retry with the same key gets the first response again (with
``Idempotent-Replayed: true``) and moves nothing; the same key with another request is a 409.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from walletguard.bootstrap import Container, Env
from walletguard.identity.auth import CurrentHolder, HolderCredentials, SessionCredentials
from walletguard.identity.service import Principal
from walletguard.kit.errors import WalletguardError
from walletguard.kit.http import DbSession, Lang, in_one_unit_of_work
from walletguard.kit.i18n import Language, text
from walletguard.kit.money import format_yuan_plain
from walletguard.kit.pagination import PageParams, Pagination, page_params
from walletguard.wallet import schemas
from walletguard.wallet.bins import issuer_by_code, mask_card
from walletguard.wallet.limits import CHINA_TIME, DAILY, PER_TRANSACTION, LimitState
from walletguard.wallet.models import Card, LedgerTransaction
from walletguard.wallet.repository import MovementFilter
from walletguard.wallet.service import (
    IdempotentRequest,
    StoredResponse,
    WalletService,
    direction_for,
)

router = APIRouter(prefix="/api/v1", tags=["wallet"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Required on every money POST: a unique string per intended movement "
        "(a UUID is fine). Send the same key again to retry safely.",
    ),
]

# -- rendering -------------------------------------------------------------------------------


def card_out(card: Card, lang: Language) -> schemas.CardOut:
    issuer = issuer_by_code(card.bank_code)
    bank_name = card.bank_code
    if issuer is not None:
        bank_name = issuer.name_zh if lang == "zh-CN" else issuer.name_en
    return schemas.CardOut(
        id=card.id,
        last4=card.last4,
        masked_number=mask_card(card.last4),
        bank_code=card.bank_code,
        bank_name=bank_name,
        card_type=card.card_type,
        status=card.status,
        created_at=card.created_at,
        bound_at=card.bound_at,
        blocked_at=card.blocked_at,
    )


def movement_out(
    txn: LedgerTransaction, viewer: uuid.UUID, last4: dict[uuid.UUID, str]
) -> schemas.MovementOut:
    started_it = viewer == txn.holder_id
    card = None
    if started_it and txn.card_id is not None:
        card = schemas.CardRef(id=txn.card_id, last4=last4.get(txn.card_id, ""))
    return schemas.MovementOut(
        id=txn.id,
        kind=txn.kind,
        status=txn.status,
        status_reason=txn.status_reason,
        direction=direction_for(txn, viewer),
        amount=format_yuan_plain(txn.amount_fen),
        refunded=format_yuan_plain(txn.refunded_fen),
        source=txn.source,
        card=card,
        counterparty=txn.payee if started_it else txn.payer_label,
        risk_decision=txn.risk_decision,
        created_at=txn.created_at,
        posted_at=txn.posted_at,
        voided_at=txn.voided_at,
        expires_at=txn.expires_at,
        reverses_id=txn.reverses_id,
        device_id=txn.device_id if started_it else None,
        ip=txn.ip if started_it else None,
    )


# What a movement's run gives (a movement, or the stored response of an earlier one), and how
# the movement is answered (status, body).
Outcome = LedgerTransaction | StoredResponse
Render = Callable[[LedgerTransaction], tuple[int, dict[str, Any]]]


def _last4_of(service: WalletService, txns: list[LedgerTransaction]) -> dict[uuid.UUID, str]:
    return service.card_last4({t.card_id for t in txns if t.card_id is not None})


def _rendered_movement(service: WalletService, principal: Principal, lang: Language) -> Render:
    def render(txn: LedgerTransaction) -> tuple[int, dict[str, Any]]:
        last4 = _last4_of(service, [txn])
        out = movement_out(txn, principal.holder_id, last4)
        if txn.status == "pending" and txn.bank_challenge_id is not None:
            assert txn.expires_at is not None
            assert txn.card_id is not None
            accepted = schemas.MovementAccepted(
                movement_id=txn.id,
                status="awaiting_bank_confirmation",
                expires_at=txn.expires_at,
                card_last4=last4.get(txn.card_id, ""),
                message=text("wallet.movement.awaiting_bank", lang),
                movement=out,
            )
            return status.HTTP_202_ACCEPTED, accepted.model_dump(mode="json")
        return status.HTTP_201_CREATED, out.model_dump(mode="json")

    return render


def _replayed(stored: StoredResponse) -> JSONResponse:
    return JSONResponse(
        stored.body, status_code=stored.status, headers={"Idempotent-Replayed": "true"}
    )


def _idempotent(
    call: IdempotentRequest,
    run: Callable[[IdempotentRequest], Outcome],
    render: Render,
) -> JSONResponse:
    # The key first: a retry gets the first response (nothing else checked or written), and
    # a concurrent request with the same key waits here for the first one to finish.
    stored = call.claim()
    if stored is not None:
        return _replayed(stored)
    try:
        outcome = run(call)
    except WalletguardError as exc:
        # A refusal whose own record is committed (a wrong dynamic password) must not commit
        # the key with it: the client may try again with the same key.
        if exc.keep_writes:
            call.release()
        raise
    if isinstance(outcome, StoredResponse):
        return _replayed(outcome)
    status_code, body = render(outcome)
    call.complete(status_code, body)
    return JSONResponse(body, status_code=status_code)


_MOVEMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": schemas.MovementAccepted,
        "description": "From a card: waiting for the bank's dynamic password "
        "(POST /movements/{id}/confirm).",
    }
}

# -- wallet ----------------------------------------------------------------------------------


def _wallet_out(service: WalletService, holder_id: uuid.UUID) -> schemas.WalletOut:
    summary = service.summary(holder_id)
    return schemas.WalletOut(
        balance=format_yuan_plain(summary.balance_fen),
        pending=format_yuan_plain(summary.pending_fen),
        available=format_yuan_plain(summary.available_fen),
        transactions_closed=summary.transactions_closed,
        closed_at=summary.closed_at,
        reopens_at=summary.reopens_at,
    )


@router.get("/wallet", response_model=schemas.WalletOut, summary="My balance and wallet state")
def get_wallet(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.WalletOut:
    return _wallet_out(WalletService(db, env), principal.holder_id)


@router.post(
    "/wallet/close",
    response_model=schemas.WalletOut,
    summary="Close all transaction functions now (kill switch); pending movements are voided",
)
def close_wallet(
    principal: CurrentHolder, db: DbSession, env: Env, body: schemas.WalletClose | None = None
) -> schemas.WalletOut:
    service = WalletService(db, env)
    service.close_all_transactions(
        principal.holder_id,
        reason=body.reason if body else "holder",
        device_id=principal.device_id,
        ip=principal.ip,
    )
    return _wallet_out(service, principal.holder_id)


@router.post(
    "/wallet/reopen",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.WalletOut,
    summary="Ask to reopen transaction functions; takes effect after a delay",
)
def reopen_wallet(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.WalletOut:
    service = WalletService(db, env)
    service.reopen_transactions(principal)
    return _wallet_out(service, principal.holder_id)


# -- cards -----------------------------------------------------------------------------------


@router.get("/cards", response_model=list[schemas.CardOut], summary="My bank cards")
def list_cards(
    principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> list[schemas.CardOut]:
    return [card_out(c, lang) for c in WalletService(db, env).cards(principal.holder_id)]


@router.post(
    "/cards",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.CardBindingStarted,
    summary="Bind a bank card: the bank sends a code to the card's reserved phone",
)
def bind_card(
    body: schemas.CardBind, principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> schemas.CardBindingStarted:
    card, expires_at = WalletService(db, env).start_binding(
        principal, number=body.number, reserved_phone=body.reserved_phone
    )
    return schemas.CardBindingStarted(
        card_id=card.id,
        status="pending_verification",
        last4=card.last4,
        bank_code=card.bank_code,
        code_expires_at=expires_at,
        message=text("wallet.card.code_sent", lang),
    )


@router.get("/cards/{card_id}", response_model=schemas.CardOut, summary="One of my cards")
def get_card(
    card_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> schemas.CardOut:
    return card_out(WalletService(db, env).card(principal.holder_id, card_id), lang)


@router.post(
    "/cards/{card_id}/verify",
    response_model=schemas.CardOut,
    summary="Finish binding with the code the bank sent to the reserved phone",
)
def verify_card(
    card_id: uuid.UUID,
    body: schemas.CardVerify,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
) -> schemas.CardOut:
    return card_out(WalletService(db, env).confirm_binding(principal, card_id, body.code), lang)


@router.delete(
    "/cards/{card_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Unbind a card, now"
)
def unbind_card(card_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env) -> Response:
    WalletService(db, env).unbind_card(principal, card_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- movements -------------------------------------------------------------------------------


async def _movement(
    env: Container,
    holder: SessionCredentials,
    key: str | None,
    operation: str,
    request: dict[str, Any],
    run: Callable[[WalletService, Principal, IdempotentRequest], Outcome],
    rendered: Callable[[WalletService, Principal], Render],
) -> JSONResponse:
    """A money request, authenticated, run and committed in one unit of work on one worker
    thread (``kit.http.in_one_unit_of_work``): every movement endpoint is this."""

    def work(db: Session) -> JSONResponse:
        principal, call = IdempotentRequest.authenticated(db, env, holder, key, operation, request)
        service = WalletService(db, env)
        return _idempotent(
            call, lambda idem: run(service, principal, idem), rendered(service, principal)
        )

    return await in_one_unit_of_work(env.sessions, work, limit=env.money_requests)


def _rendered_as_is(service: WalletService, principal: Principal) -> Render:
    """A movement confirmed or cancelled: 200 and the movement as it now is."""

    def render(txn: LedgerTransaction) -> tuple[int, dict[str, Any]]:
        out = movement_out(txn, principal.holder_id, _last4_of(service, [txn]))
        return status.HTTP_200_OK, out.model_dump(mode="json")

    return render


@router.post(
    "/top-ups",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.MovementAccepted,
    summary="Top up the balance from a bound card (confirmed by the bank's dynamic password)",
)
async def top_up(
    body: schemas.TopUpIn,
    holder: HolderCredentials,
    env: Env,
    lang: Lang,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _movement(
        env,
        holder,
        idempotency_key,
        "top_up",
        schemas.movement_request(body),
        lambda service, principal, idem: service.top_up(
            principal,
            card_id=body.card_id,
            amount_fen=body.amount,
            payment_password=body.payment_password,
            idem=idem,
        ),
        lambda service, principal: _rendered_movement(service, principal, lang),
    )


@router.post(
    "/withdrawals",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.MovementOut,
    summary="Withdraw from the balance to a bound card",
)
async def withdraw(
    body: schemas.WithdrawalIn,
    holder: HolderCredentials,
    env: Env,
    lang: Lang,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _movement(
        env,
        holder,
        idempotency_key,
        "withdraw",
        schemas.movement_request(body),
        lambda service, principal, idem: service.withdraw(
            principal,
            card_id=body.card_id,
            amount_fen=body.amount,
            payment_password=body.payment_password,
            idem=idem,
        ),
        lambda service, principal: _rendered_movement(service, principal, lang),
    )


@router.post(
    "/payments",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.MovementOut,
    responses=_MOVEMENT_RESPONSES,
    summary="Pay a merchant from the balance, or from a card",
)
async def pay(
    body: schemas.PaymentIn,
    holder: HolderCredentials,
    env: Env,
    lang: Lang,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _movement(
        env,
        holder,
        idempotency_key,
        "payment",
        schemas.movement_request(body),
        lambda service, principal, idem: service.pay(
            principal,
            merchant=body.merchant,
            amount_fen=body.amount,
            payment_password=body.payment_password,
            card_id=body.card_id,
            idem=idem,
        ),
        lambda service, principal: _rendered_movement(service, principal, lang),
    )


@router.post(
    "/transfers",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.MovementOut,
    responses=_MOVEMENT_RESPONSES,
    summary="Transfer to another holder's balance, from the balance or from a card",
)
async def transfer(
    body: schemas.TransferIn,
    holder: HolderCredentials,
    env: Env,
    lang: Lang,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _movement(
        env,
        holder,
        idempotency_key,
        "transfer",
        schemas.movement_request(body),
        lambda service, principal, idem: service.transfer(
            principal,
            to_phone=body.to_phone,
            amount_fen=body.amount,
            payment_password=body.payment_password,
            card_id=body.card_id,
            idem=idem,
        ),
        lambda service, principal: _rendered_movement(service, principal, lang),
    )


@router.post(
    "/movements/{movement_id}/confirm",
    response_model=schemas.MovementOut,
    summary="Confirm a pending card debit with the bank's dynamic password",
)
async def confirm_movement(
    movement_id: uuid.UUID,
    body: schemas.MovementConfirm,
    holder: HolderCredentials,
    env: Env,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _movement(
        env,
        holder,
        idempotency_key,
        "confirm",
        {"movement_id": str(movement_id)},
        lambda service, principal, idem: service.confirm_movement(
            principal, movement_id, dynamic_password=body.dynamic_password, idem=idem
        ),
        _rendered_as_is,
    )


@router.post(
    "/movements/{movement_id}/cancel",
    response_model=schemas.MovementOut,
    summary="Cancel a pending movement",
)
async def cancel_movement(
    movement_id: uuid.UUID,
    holder: HolderCredentials,
    env: Env,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return await _movement(
        env,
        holder,
        idempotency_key,
        "cancel",
        {"movement_id": str(movement_id)},
        lambda service, principal, idem: service.cancel_movement(principal, movement_id, idem=idem),
        _rendered_as_is,
    )


# -- history ---------------------------------------------------------------------------------


def _local_day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=CHINA_TIME).astimezone(UTC)


def movement_filter(
    date_from: Annotated[
        date | None, Query(alias="from", description="First day (China time), inclusive")
    ] = None,
    date_to: Annotated[
        date | None, Query(alias="to", description="Last day (China time), inclusive")
    ] = None,
    card_id: uuid.UUID | None = None,
    kind: schemas.Kind | None = None,
    status: schemas.Status | None = None,
) -> MovementFilter:
    return MovementFilter(
        created_from=_local_day_start(date_from) if date_from else None,
        created_before=_local_day_start(date_to + timedelta(days=1)) if date_to else None,
        card_id=card_id,
        kind=kind,
        status=status,
    )


Filters = Annotated[MovementFilter, Depends(movement_filter)]


@router.get("/movements", response_model=schemas.MovementPage, summary="My money movements")
def list_movements(
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    filters: Filters,
    params: PageParams = Depends(page_params),
) -> schemas.MovementPage:
    service = WalletService(db, env)
    rows, total = service.movements(
        principal.holder_id, filters, offset=params.offset, limit=params.limit
    )
    last4 = _last4_of(service, rows)
    return schemas.MovementPage(
        items=[movement_out(t, principal.holder_id, last4) for t in rows],
        pagination=Pagination.of(params, total),
    )


CSV_COLUMNS = (
    "id",
    "created_at",
    "posted_at",
    "kind",
    "direction",
    "status",
    "status_reason",
    "amount",
    "refunded",
    "source",
    "card_last4",
    "counterparty",
    "risk_decision",
    "reverses_id",
    "device_id",
    "ip",
)


def _csv_cell(value: object) -> str:
    cell = "" if value is None else str(value)
    # A merchant name like "=HYPERLINK(...)" must stay text in a spreadsheet (CSV injection).
    if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        cell = "'" + cell
    return cell


@router.get(
    "/movements.csv",
    summary="My money movements as CSV (same filters; card numbers as last 4 only)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def export_movements(
    principal: CurrentHolder, db: DbSession, env: Env, filters: Filters
) -> Response:
    service = WalletService(db, env)
    rows, _ = service.movements(principal.holder_id, filters)
    last4 = _last4_of(service, rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for txn in rows:
        out = movement_out(txn, principal.holder_id, last4)
        writer.writerow(
            [
                _csv_cell(v)
                for v in (
                    out.id,
                    out.created_at.isoformat(),
                    out.posted_at.isoformat() if out.posted_at else None,
                    out.kind,
                    out.direction,
                    out.status,
                    out.status_reason,
                    out.amount,
                    out.refunded,
                    out.source,
                    out.card.last4 if out.card else None,
                    out.counterparty,
                    out.risk_decision,
                    out.reverses_id,
                    out.device_id,
                    out.ip,
                )
            ]
        )
    # A BOM so that spreadsheet programs read the Chinese merchant names as UTF-8.
    return Response(
        "\ufeff" + buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="movements.csv"'},
    )


@router.get("/movements/{movement_id}", response_model=schemas.MovementOut, summary="One movement")
def get_movement(
    movement_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.MovementOut:
    service = WalletService(db, env)
    txn = service.movement(principal.holder_id, movement_id)
    return movement_out(txn, principal.holder_id, _last4_of(service, [txn]))


# -- limits ----------------------------------------------------------------------------------


def _limit_out(state: LimitState) -> schemas.LimitOut:
    return schemas.LimitOut(
        amount=format_yuan_plain(state.amount_fen),
        pending_amount=(
            format_yuan_plain(state.pending_amount_fen)
            if state.pending_amount_fen is not None
            else None
        ),
        pending_effective_at=state.pending_effective_at,
    )


def _scope_out(
    service: WalletService, holder_id: uuid.UUID, card: Card | None
) -> schemas.LimitScopeOut:
    card_id = card.id if card else None
    daily = service.limits.state(holder_id, card_id, DAILY)
    used = service.limits.used_today(holder_id, card_id)
    return schemas.LimitScopeOut(
        card_id=card_id,
        card_last4=card.last4 if card else None,
        per_transaction=_limit_out(service.limits.state(holder_id, card_id, PER_TRANSACTION)),
        daily=_limit_out(daily),
        used_today=format_yuan_plain(used),
        remaining_today=format_yuan_plain(max(0, daily.amount_fen - used)),
    )


def _limits_out(service: WalletService, holder_id: uuid.UUID) -> schemas.LimitsOut:
    return schemas.LimitsOut(
        holder=_scope_out(service, holder_id, None),
        cards=[_scope_out(service, holder_id, c) for c in service.cards(holder_id)],
    )


@router.get("/limits", response_model=schemas.LimitsOut, summary="My limits and today's use")
def get_limits(principal: CurrentHolder, db: DbSession, env: Env) -> schemas.LimitsOut:
    return _limits_out(WalletService(db, env), principal.holder_id)


@router.put(
    "/limits",
    response_model=schemas.LimitsOut,
    summary="Change my limits or a card's: lowering is instant, raising waits 24 h",
)
def put_limits(
    body: schemas.LimitsUpdate, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.LimitsOut:
    service = WalletService(db, env)
    changes = ((PER_TRANSACTION, body.per_transaction), (DAILY, body.daily))
    for period, amount in changes:
        if amount is not None:
            service.set_limit(principal, card_id=body.card_id, period=period, amount_fen=amount)
    return _limits_out(service, principal.holder_id)
