"""API shapes of the incident desk. Amounts are strings of yuan ("88130.00"); cards appear as
their last 4 digits only; the holder's name and phone only masked."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from walletguard.kit.pagination import Pagination

ReportKind = Literal["robbed", "lost_phone"]
OperatorChannel = Literal["web_form", "hotline", "social_media"]
CaseStatus = Literal["open", "in_progress", "waiting_holder", "resolved", "closed"]
FreeText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
OperatorName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- the holder ----------------------------------------------------------------------------------


class IncidentReportIn(StrictModel):
    kind: ReportKind = "robbed"
    lost_control_at: datetime | None = Field(
        default=None,
        description="When you lost your phone or noticed the account was not yours any more: "
        "every debit after it (not from this device) is pre-marked.",
    )
    description: FreeText | None = None


class IncidentReported(BaseModel):
    case_id: uuid.UUID
    reference: str
    new_case: bool
    frozen_at: datetime
    payments_frozen: bool
    cards_blocked: int
    sync_disabled: int
    sessions_revoked: int
    other_sessions_kept: bool
    message: str


class TimelineItemOut(BaseModel):
    seq: int
    at: datetime
    event: str
    category: str
    device_id: uuid.UUID | None
    device_label: str | None
    ip: str | None
    summary: str


class CaseMovementOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    posted_at: datetime | None
    kind: str
    status: str
    amount: str
    refunded: str
    source: str
    card_last4: str | None
    bank_code: str | None
    payee: str | None
    device_id: uuid.UUID | None
    device_label: str | None
    ip: str | None
    premarked: bool
    premark_reasons: list[str]
    marked: bool | None = Field(description="Your own mark; null: the pre-mark stands.")
    marked_by: str | None
    unauthorised: bool
    loss: str


class LossLineOut(BaseModel):
    source: Literal["card", "balance"]
    card_last4: str | None
    bank_code: str | None
    bank_name: str | None
    amount: str


class LossOut(BaseModel):
    by_card: list[LossLineOut]
    total: str
    currency: Literal["CNY"] = "CNY"


class CardOut(BaseModel):
    last4: str
    bank_code: str
    status: str


class CaseSummaryOut(BaseModel):
    id: uuid.UUID
    reference: str
    category: str
    kind: str
    channel: str
    status: str
    opened_at: datetime
    frozen_at: datetime | None
    due_at: datetime
    resolved_at: datetime | None


class CaseOut(CaseSummaryOut):
    holder_name: str
    holder_phone: str
    freeze: dict[str, Any]
    lost_control_at: datetime | None
    cards: list[CardOut]
    loss: LossOut
    codes_shown_off_sim: int = Field(
        description="One-time codes shown through cloud sync on devices without the SIM: at "
        "least this many (the largest single read)."
    )
    code_reads: int
    code_devices: list[str]
    movements: list[CaseMovementOut]
    timeline: list[TimelineItemOut]
    window_start: datetime
    premark_rule: str


class MovementMarkIn(StrictModel):
    unauthorised: bool | None = Field(
        description="true: not mine; false: mine after all; null: back to the pre-mark."
    )


class ChecklistItemOut(BaseModel):
    key: str
    title: str
    done: bool
    done_at: datetime | None
    bank_code: str | None
    hotline: str | None


class ChecklistOut(BaseModel):
    items: list[ChecklistItemOut]
    done: int
    total: int


class ChecklistTickIn(StrictModel):
    item: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=48)]
    done: bool = True


class LetterOut(BaseModel):
    kind: str
    language: str
    title: str
    text: str


# -- operators -----------------------------------------------------------------------------------


class IdentityCheckIn(StrictModel):
    phone: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=32)]
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    id_number_last6: Annotated[
        str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{5}[0-9Xx]$")
    ]


class OperatorIncidentIn(IdentityCheckIn):
    kind: ReportKind = "robbed"
    channel: OperatorChannel = "hotline"
    description: FreeText | None = None


class ComplaintIn(IdentityCheckIn):
    channel: OperatorChannel
    summary: FreeText


class OperatorCaseOut(CaseSummaryOut):
    holder_id: uuid.UUID
    reported_by: str
    opened_by_operator: str | None
    assignee: str | None
    overdue: bool
    sla_remaining_s: int


class OperatorCasePage(BaseModel):
    items: list[OperatorCaseOut]
    pagination: Pagination


class CaseUpdateIn(StrictModel):
    status: CaseStatus | None = None
    assignee: OperatorName | None = None
    unassign: bool = False
    due_at: datetime | None = None


class NoteIn(StrictModel):
    body: FreeText


class NoteOut(BaseModel):
    id: uuid.UUID
    author: str
    body: str
    created_at: datetime


class OperatorCaseDetailOut(OperatorCaseOut):
    description: str | None
    notes: list[NoteOut]
    case: CaseOut
