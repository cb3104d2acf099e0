"""The incident desk's tables (SPEC C10): cases and complaints, the holder's marks on movements,
the checklist, and operators' notes.

A case's timeline, movements and loss are not stored: they are read from the audit log and the
ledger every time, so the case always shows what the records say. What is stored is what people
decided: the holder's (or an operator's) marks, ticked checklist items, notes, status.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from walletguard.kit.db import Base, new_id


class IncidentCase(Base):
    """One incident ("I have been robbed / lost my phone", "this was not me") or complaint."""

    __tablename__ = "incident_cases"
    __table_args__ = (Index("ix_incident_cases_status_due_at", "status", "due_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    # What the holder quotes on the phone and in letters: WG-20260312-7F3A9C.
    reference: Mapped[str] = mapped_column(String(32), unique=True)
    holder_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("holders.id"), index=True)
    # incident | complaint
    category: Mapped[str] = mapped_column(String(16))
    # robbed | lost_phone | not_me | complaint
    kind: Mapped[str] = mapped_column(String(16))
    # app | not_me_link | web_form | hotline | social_media
    channel: Mapped[str] = mapped_column(String(16))
    # holder | operator | not_me_link
    reported_by: Mapped[str] = mapped_column(String(16))
    # The operator who opened it on the holder's behalf.
    opened_by_operator: Mapped[str | None] = mapped_column(String(64))
    reporting_device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    reporting_session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # When the holder says they lost control of the phone or account (optional).
    lost_control_at: Mapped[datetime | None]
    # The holder's or operator's own words: may name people and numbers, so encrypted.
    description_enc: Mapped[str | None] = mapped_column(Text)
    # open | in_progress | waiting_holder | resolved | closed
    status: Mapped[str] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(String(64))
    opened_at: Mapped[datetime]
    # When everything was frozen (payments, cards, sync, other sessions); None for a case
    # opened by a "not me" link (payments only) until the holder confirms from a device.
    frozen_at: Mapped[datetime | None]
    # What the freezes did, as canonical JSON: {"payments": true, "cards_blocked": 3, ...}.
    freeze_summary: Mapped[str] = mapped_column(Text)
    # The service-level target: the case must be resolved by then.
    due_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class MovementMark(Base):
    """The holder's (or an operator's) own say on one movement: unauthorised or not.

    Without a mark the case shows the rule's pre-mark (``incidents.service.premark``).
    """

    __tablename__ = "incident_movement_marks"
    __table_args__ = (UniqueConstraint("case_id", "movement_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("incident_cases.id"), index=True)
    movement_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_transactions.id"))
    unauthorised: Mapped[bool]
    # holder | operator:<name>
    marked_by: Mapped[str] = mapped_column(String(80))
    marked_at: Mapped[datetime]


class ChecklistTick(Base):
    """One checklist item the holder has ticked (or unticked: ``done_at`` None)."""

    __tablename__ = "incident_checklist"
    __table_args__ = (UniqueConstraint("case_id", "item"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("incident_cases.id"), index=True)
    # police_report, call_bank:ICBC, keep_records, no_fees, warn_contacts, change_passwords, …
    item: Mapped[str] = mapped_column(String(48))
    done_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class CaseNote(Base):
    """An operator's note on a case: free text, so encrypted at rest."""

    __tablename__ = "incident_case_notes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("incident_cases.id"), index=True)
    author: Mapped[str] = mapped_column(String(64))
    body_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
