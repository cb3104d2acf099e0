"""HTTP: "I have been robbed / lost my phone", the case, its evidence, checklist and letters;
the operators' cases and complaints (``/operator``, operator API keys)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from walletguard.bootstrap import Env
from walletguard.identity.auth import CurrentHolder
from walletguard.identity.operators import CurrentOperator
from walletguard.incidents import evidence, schemas
from walletguard.incidents.letters import render_letter
from walletguard.incidents.models import IncidentCase
from walletguard.incidents.pdf import letter_pdf
from walletguard.incidents.repository import OPEN_STATUSES, CaseFilter
from walletguard.incidents.service import (
    CaseView,
    ChecklistItem,
    IncidentService,
    ReportOutcome,
)
from walletguard.kit.http import DbSession, Lang
from walletguard.kit.i18n import Language, text
from walletguard.kit.money import format_yuan_plain
from walletguard.kit.pagination import PageParams, Pagination, page_params
from walletguard.wallet.bins import issuer_by_code

router = APIRouter(prefix="/api/v1", tags=["incidents"])
operator_router = APIRouter(prefix="/api/v1/operator", tags=["operator"])

LetterLanguage = Annotated[Language, Query(description="zh-CN (what you send) or en (to read it).")]

# -- rendering -----------------------------------------------------------------------------------


def _reported(outcome: ReportOutcome, lang: Language) -> schemas.IncidentReported:
    message = text("incidents.reported", lang)
    if outcome.other_sessions_kept:
        message += " " + text("incidents.reported.sessions_kept", lang)
    return schemas.IncidentReported(
        case_id=outcome.case.id,
        reference=outcome.case.reference,
        new_case=outcome.created,
        frozen_at=outcome.frozen_at,
        payments_frozen=True,
        cards_blocked=outcome.cards_blocked,
        sync_disabled=outcome.sync_disabled,
        sessions_revoked=outcome.sessions_revoked,
        other_sessions_kept=outcome.other_sessions_kept,
        message=message,
    )


def _summary_fields(case: IncidentCase) -> dict[str, object]:
    return {
        "id": case.id,
        "reference": case.reference,
        "category": case.category,
        "kind": case.kind,
        "channel": case.channel,
        "status": case.status,
        "opened_at": case.opened_at,
        "frozen_at": case.frozen_at,
        "due_at": case.due_at,
        "resolved_at": case.resolved_at,
    }


def _bank_name(code: str | None, lang: Language) -> str | None:
    issuer = issuer_by_code(code) if code else None
    if issuer is None:
        return code
    return issuer.name_zh if lang == "zh-CN" else issuer.name_en


def case_out(view: CaseView, lang: Language) -> schemas.CaseOut:
    case = view.case
    return schemas.CaseOut.model_validate(
        {
            **_summary_fields(case),
            "holder_name": view.holder_name_masked,
            "holder_phone": view.holder_phone_masked,
            "freeze": view.freeze,
            "lost_control_at": case.lost_control_at,
            "cards": [
                schemas.CardOut(last4=c.last4, bank_code=c.bank_code, status=c.status)
                for c in view.cards
            ],
            "loss": schemas.LossOut(
                by_card=[
                    schemas.LossLineOut(
                        source="card" if line.source == "card" else "balance",
                        card_last4=line.card_last4,
                        bank_code=line.bank_code,
                        bank_name=_bank_name(line.bank_code, lang),
                        amount=format_yuan_plain(line.amount_fen),
                    )
                    for line in view.loss
                ],
                total=format_yuan_plain(view.loss_total_fen),
            ),
            "codes_shown_off_sim": view.codes_shown_off_sim,
            "code_reads": view.code_reads,
            "code_devices": view.code_devices,
            "movements": [
                schemas.CaseMovementOut(
                    id=m.id,
                    created_at=m.created_at,
                    posted_at=m.posted_at,
                    kind=m.kind,
                    status=m.status,
                    amount=format_yuan_plain(m.amount_fen),
                    refunded=format_yuan_plain(m.refunded_fen),
                    source=m.source,
                    card_last4=m.card_last4,
                    bank_code=m.bank_code,
                    payee=m.payee,
                    device_id=m.device_id,
                    device_label=m.device_label,
                    ip=m.ip,
                    premarked=m.premarked,
                    premark_reasons=list(m.premark_reasons),
                    marked=m.marked,
                    marked_by=m.marked_by,
                    unauthorised=m.unauthorised,
                    loss=format_yuan_plain(m.loss_fen),
                )
                for m in view.movements
            ],
            "timeline": [
                schemas.TimelineItemOut(
                    seq=i.seq,
                    at=i.at,
                    event=i.event,
                    category=i.category,
                    device_id=i.device_id,
                    device_label=i.device_label,
                    ip=i.ip,
                    summary=i.summary(lang),
                )
                for i in view.timeline
            ],
            "window_start": view.window_start,
            "premark_rule": text("incidents.evidence.premark_rule", lang),
        }
    )


def _checklist_out(items: list[ChecklistItem], lang: Language) -> schemas.ChecklistOut:
    out = []
    for item in items:
        if item.key.startswith("call_bank:"):
            title = text(
                "incidents.checklist.call_bank",
                lang,
                bank=_bank_name(item.bank_code, lang) or "",
                hotline=item.hotline or "—",
            )
        else:
            title = text(f"incidents.checklist.{item.key}", lang)
        out.append(
            schemas.ChecklistItemOut(
                key=item.key,
                title=title,
                done=item.done,
                done_at=item.done_at,
                bank_code=item.bank_code,
                hotline=item.hotline,
            )
        )
    return schemas.ChecklistOut(items=out, done=sum(i.done for i in out), total=len(out))


# -- the holder ----------------------------------------------------------------------------------


@router.post(
    "/incidents",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.IncidentReported,
    responses={200: {"model": schemas.IncidentReported, "description": "Joined the open case."}},
    summary="I have been robbed / lost my phone: freeze everything now and open a case",
)
def report_incident(
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
    response: Response,
    body: schemas.IncidentReportIn | None = None,
) -> schemas.IncidentReported:
    body = body or schemas.IncidentReportIn()
    outcome = IncidentService(db, env).report(
        principal,
        kind=body.kind,
        lost_control_at=body.lost_control_at,
        description=body.description,
    )
    if not outcome.created:
        response.status_code = status.HTTP_200_OK
    return _reported(outcome, lang)


@router.get("/incidents", response_model=list[schemas.CaseSummaryOut], summary="My incident cases")
def list_incidents(
    principal: CurrentHolder, db: DbSession, env: Env
) -> list[schemas.CaseSummaryOut]:
    return [
        schemas.CaseSummaryOut.model_validate(_summary_fields(case))
        for case in IncidentService(db, env).holder_cases(principal.holder_id)
    ]


@router.get(
    "/incidents/{case_id}",
    response_model=schemas.CaseOut,
    summary="A case: timeline, suspected movements, loss per card and in total",
)
def get_incident(
    case_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> schemas.CaseOut:
    service = IncidentService(db, env)
    return case_out(service.view(service.holder_case(principal.holder_id, case_id)), lang)


@router.patch(
    "/incidents/{case_id}/movements/{movement_id}",
    response_model=schemas.CaseMovementOut,
    summary="Mark a movement unauthorised, or not (null: back to the pre-mark)",
)
def mark_movement(
    case_id: uuid.UUID,
    movement_id: uuid.UUID,
    body: schemas.MovementMarkIn,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
) -> schemas.CaseMovementOut:
    service = IncidentService(db, env)
    case = service.holder_case(principal.holder_id, case_id)
    service.mark_movement(
        case, movement_id, unauthorised=body.unauthorised, marked_by="holder", principal=principal
    )
    view = case_out(service.view(case), lang)
    return next(m for m in view.movements if m.id == movement_id)


@router.get(
    "/incidents/{case_id}/evidence.zip",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}},
    summary="The evidence package: JSON, CSV, PDF report, SHA-256 manifest, audit-chain proof",
)
def get_evidence(case_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env) -> Response:
    service = IncidentService(db, env)
    case = service.holder_case(principal.holder_id, case_id)
    data = evidence.export_package(service, case)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{case.reference}-evidence.zip"'},
    )


@router.get(
    "/incidents/{case_id}/checklist",
    response_model=schemas.ChecklistOut,
    summary="What to do next, and what you have done",
)
def get_checklist(
    case_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> schemas.ChecklistOut:
    service = IncidentService(db, env)
    return _checklist_out(
        service.checklist(service.holder_case(principal.holder_id, case_id)), lang
    )


@router.post(
    "/incidents/{case_id}/checklist",
    response_model=schemas.ChecklistOut,
    summary="Tick (or untick) a checklist item",
)
def tick_checklist(
    case_id: uuid.UUID,
    body: schemas.ChecklistTickIn,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
) -> schemas.ChecklistOut:
    service = IncidentService(db, env)
    case = service.holder_case(principal.holder_id, case_id)
    return _checklist_out(service.tick(case, body.item, done=body.done, principal=principal), lang)


@router.get(
    "/incidents/{case_id}/letters/{kind}.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
    summary="A letter as PDF: police, platform or bank",
)
def get_letter_pdf(
    case_id: uuid.UUID,
    kind: str,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: LetterLanguage = "zh-CN",
    bank: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    service = IncidentService(db, env)
    case = service.holder_case(principal.holder_id, case_id)
    letter = render_letter(service.view(case), kind, lang, bank_code=bank)
    return Response(
        letter_pdf(letter.title, letter.body),
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{case.reference}-{kind}.pdf"'},
    )


@router.get(
    "/incidents/{case_id}/letters/{kind}",
    response_model=schemas.LetterOut,
    summary="A letter as editable text: police (statement), platform (complaint), bank (dispute)",
)
def get_letter(
    case_id: uuid.UUID,
    kind: str,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: LetterLanguage = "zh-CN",
    bank: Annotated[str | None, Query(max_length=16)] = None,
) -> schemas.LetterOut:
    service = IncidentService(db, env)
    case = service.holder_case(principal.holder_id, case_id)
    letter = render_letter(service.view(case), kind, lang, bank_code=bank)
    return schemas.LetterOut(
        kind=letter.kind, language=letter.language, title=letter.title, text=letter.body
    )


# -- operators -----------------------------------------------------------------------------------


def _operator_case_out(case: IncidentCase, env: Env) -> schemas.OperatorCaseOut:
    now = env.clock.now()
    remaining = int((case.due_at - now).total_seconds())
    overdue = (case.status in OPEN_STATUSES and remaining <= 0) or (
        case.resolved_at is not None and case.resolved_at > case.due_at
    )
    return schemas.OperatorCaseOut.model_validate(
        {
            **_summary_fields(case),
            "holder_id": case.holder_id,
            "reported_by": case.reported_by,
            "opened_by_operator": case.opened_by_operator,
            "assignee": case.assignee,
            "overdue": overdue,
            "sla_remaining_s": remaining if case.status in OPEN_STATUSES else 0,
        }
    )


def _operator_detail(
    service: IncidentService, case: IncidentCase, env: Env, lang: Language
) -> schemas.OperatorCaseDetailOut:
    base = _operator_case_out(case, env).model_dump()
    return schemas.OperatorCaseDetailOut.model_validate(
        {
            **base,
            "description": service.description(case),
            "notes": [
                schemas.NoteOut(id=n.id, author=n.author, body=body, created_at=n.created_at)
                for n, body in service.notes(case.id)
            ],
            "case": case_out(service.view(case), lang),
        }
    )


@operator_router.get(
    "/cases", response_model=schemas.OperatorCasePage, summary="Cases and complaints, due first"
)
def operator_list_cases(
    operator: CurrentOperator,
    db: DbSession,
    env: Env,
    params: Annotated[PageParams, Depends(page_params)],
    status_filter: Annotated[schemas.CaseStatus | None, Query(alias="status")] = None,
    category: Annotated[str | None, Query(pattern="^(incident|complaint)$")] = None,
    assignee: Annotated[str | None, Query(max_length=64)] = None,
    overdue: bool = False,
) -> schemas.OperatorCasePage:
    filters = CaseFilter(
        status=status_filter,
        category=category,
        assignee=assignee,
        overdue_at=env.clock.now() if overdue else None,
    )
    rows, total = IncidentService(db, env).list_cases(
        filters, offset=params.offset, limit=params.limit
    )
    return schemas.OperatorCasePage(
        items=[_operator_case_out(case, env) for case in rows],
        pagination=Pagination.of(params, total),
    )


@operator_router.get(
    "/cases/{case_id}", response_model=schemas.OperatorCaseDetailOut, summary="One case, in full"
)
def operator_get_case(
    case_id: uuid.UUID, operator: CurrentOperator, db: DbSession, env: Env, lang: Lang
) -> schemas.OperatorCaseDetailOut:
    service = IncidentService(db, env)
    return _operator_detail(service, service.operator_case(case_id), env, lang)


@operator_router.patch(
    "/cases/{case_id}",
    response_model=schemas.OperatorCaseOut,
    summary="Status, assignee, due time (audited)",
)
def operator_update_case(
    case_id: uuid.UUID,
    body: schemas.CaseUpdateIn,
    operator: CurrentOperator,
    db: DbSession,
    env: Env,
) -> schemas.OperatorCaseOut:
    changes: dict[str, object] = {}
    if body.status is not None:
        changes["status"] = body.status
    if body.assignee is not None:
        changes["assignee"] = body.assignee
    elif body.unassign:
        changes["assignee"] = None
    if body.due_at is not None:
        changes["due_at"] = body.due_at
    case = IncidentService(db, env).update_case(operator, case_id, changes=changes)
    return _operator_case_out(case, env)


@operator_router.post(
    "/cases/{case_id}/notes",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.NoteOut,
    summary="Add a note to a case (audited; stored encrypted)",
)
def operator_add_note(
    case_id: uuid.UUID, body: schemas.NoteIn, operator: CurrentOperator, db: DbSession, env: Env
) -> schemas.NoteOut:
    note = IncidentService(db, env).add_note(operator, case_id, body.body)
    return schemas.NoteOut(
        id=note.id, author=note.author, body=body.body, created_at=note.created_at
    )


@operator_router.post(
    "/incidents",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.IncidentReported,
    responses={200: {"model": schemas.IncidentReported, "description": "Joined the open case."}},
    summary="Report for a holder after an identity check (phone, name, ID number last 6)",
)
def operator_report_incident(
    body: schemas.OperatorIncidentIn,
    operator: CurrentOperator,
    db: DbSession,
    env: Env,
    lang: Lang,
    response: Response,
) -> schemas.IncidentReported:
    outcome = IncidentService(db, env).report_for_holder(
        operator,
        phone=body.phone,
        name=body.name,
        id_number_last6=body.id_number_last6,
        kind=body.kind,
        channel=body.channel,
        description=body.description,
    )
    if not outcome.created:
        response.status_code = status.HTTP_200_OK
    return _reported(outcome, lang)


@operator_router.post(
    "/complaints",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.OperatorCaseOut,
    summary="File a complaint (web form, hotline, social media) for a verified holder",
)
def operator_file_complaint(
    body: schemas.ComplaintIn, operator: CurrentOperator, db: DbSession, env: Env
) -> schemas.OperatorCaseOut:
    case = IncidentService(db, env).file_complaint(
        operator,
        phone=body.phone,
        name=body.name,
        id_number_last6=body.id_number_last6,
        channel=body.channel,
        summary=body.summary,
    )
    return _operator_case_out(case, env)
