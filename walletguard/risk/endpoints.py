"""HTTP: the holder answers holds; operators work the review queue and reload the rules."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from walletguard.bootstrap import Env
from walletguard.identity.auth import CurrentHolder
from walletguard.identity.operators import Operator, require_role
from walletguard.identity.phone import parse_mobile
from walletguard.kit.errors import WalletguardError
from walletguard.kit.http import DbSession
from walletguard.kit.pagination import PageParams, Pagination, page_params
from walletguard.risk import schemas
from walletguard.risk.rules import RulesInvalid
from walletguard.risk.service import RiskService

router = APIRouter(prefix="/api/v1/risk", tags=["risk"])
operator_router = APIRouter(prefix="/api/v1/operator/risk", tags=["operator"])

RiskAnalyst = Annotated[Operator, Depends(require_role("risk_analyst"))]


class RulesFileInvalid(WalletguardError):
    status = 422
    slug = "risk-rules-invalid"
    title_key = "risk.rules.invalid_title"

    def __init__(self, exc: RulesInvalid) -> None:
        super().__init__(
            "risk.rules.invalid",
            extensions={
                "errors": [{"line": line, "message": message} for line, message in exc.errors]
            },
        )


@router.get("/holds", response_model=list[schemas.HoldOut], summary="My held operations")
def list_holds(principal: CurrentHolder, db: DbSession, env: Env) -> list[schemas.HoldOut]:
    return [schemas.HoldOut.of(row) for row in RiskService(db, env).holds(principal)]


@router.post(
    "/holds/{hold_id}/confirm",
    response_model=schemas.HoldOut,
    summary="It was me: let this very request through once (retry it)",
)
def confirm_hold(
    hold_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.HoldOut:
    return schemas.HoldOut.of(RiskService(db, env).answer_hold(principal, hold_id, confirm=True))


@router.post(
    "/holds/{hold_id}/reject", response_model=schemas.HoldOut, summary="It was not me: reject"
)
def reject_hold(
    hold_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env
) -> schemas.HoldOut:
    return schemas.HoldOut.of(RiskService(db, env).answer_hold(principal, hold_id, confirm=False))


@router.post(
    "/trusted-payees",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Vouch for a payee: payments to it stay frictionless",
)
def trust_payee(
    body: schemas.TrustedPayeeIn, principal: CurrentHolder, db: DbSession, env: Env
) -> Response:
    payee = body.merchant if body.merchant is not None else parse_mobile(body.to_phone or "")
    RiskService(db, env).trust_payee(principal, payee)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@operator_router.get(
    "/reviews", response_model=schemas.ReviewPage, summary="Holds and blocks awaiting review"
)
def review_queue(
    operator: RiskAnalyst,
    db: DbSession,
    env: Env,
    params: Annotated[PageParams, Depends(page_params)],
) -> schemas.ReviewPage:
    rows, total = RiskService(db, env).review_queue(offset=params.offset, limit=params.limit)
    return schemas.ReviewPage(
        items=[schemas.ReviewOut.of(row) for row in rows],
        pagination=Pagination.of(params, total),
    )


@operator_router.post(
    "/reviews/{decision_id}/release",
    response_model=schemas.ReviewOut,
    summary="Release: the same request may go ahead once",
)
def release(
    decision_id: uuid.UUID, operator: RiskAnalyst, db: DbSession, env: Env
) -> schemas.ReviewOut:
    row = RiskService(db, env).review(decision_id, operator=operator.name, release=True)
    return schemas.ReviewOut.of(row)


@operator_router.post(
    "/reviews/{decision_id}/confirm",
    response_model=schemas.ReviewOut,
    summary="Confirm the hold or block (fraud): it stays refused",
)
def confirm(
    decision_id: uuid.UUID, operator: RiskAnalyst, db: DbSession, env: Env
) -> schemas.ReviewOut:
    row = RiskService(db, env).review(decision_id, operator=operator.name, release=False)
    return schemas.ReviewOut.of(row)


@operator_router.post(
    "/rules/reload", response_model=schemas.RulesReloaded, summary="Reload the rules file now"
)
def reload_rules(operator: RiskAnalyst, db: DbSession, env: Env) -> schemas.RulesReloaded:
    try:
        rules = RiskService(db, env).reload_rules(operator=operator.name)
    except RulesInvalid as exc:
        raise RulesFileInvalid(exc) from None
    return schemas.RulesReloaded(rules=len(rules.rules), source=rules.source)
