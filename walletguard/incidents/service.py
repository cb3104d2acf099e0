"""The incident desk (SPEC C10): one report freezes everything, and opens a case.

**The freeze.** "I have been robbed / lost my phone" — from a holder's device, from an operator
after an identity check, or (payments only) from a "this was not me" link — closes every
transaction function, blocks every card here and at its bank, stops message sync on every device
and ends every session but the reporting one, all in the caller's one transaction: either all of
it happened or none. Locks are taken in the order a money movement takes them (the holder's
sessions, then the wallet state, then cards and the bank, then the audit head), so a movement
racing the report either commits before it or is refused after it, and neither waits on the other.

A reporting device that is not yet trusted (still cooling off) freezes money, cards and sync —
stopping things is always safe — but does not end the other sessions: otherwise a thief's new
device could sign the holder's own phone out. Operators can end them all.

**The case** is built from the records each time it is read: the timeline from the audit log,
the movements from the ledger. **Pre-marking** (a clear rule, not a risk engine; the holder
corrects it): a debit (payment, transfer, withdrawal) *not made from the reporting device* is
marked "suspected unauthorised" when

1. ``new_device`` — its device had been first seen less than the suspect window (72 h) before; or
2. ``revoked_device`` — its device has since been revoked (by the holder or a "not me" report); or
3. ``after_security_change`` — it came within the window after a new-device login, sync being
   switched on, a password or payment-password change or reset, a phone-number change, a removed
   second factor or an account recovery; or
4. ``after_lost_control`` — the holder said when they lost control, and it came after that.

**Loss** is the sum of the posted, unrefunded amounts of the movements marked unauthorised, per
card (card-funded debits, by the card's last 4) and from the balance ("balance"), and in total.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from walletguard.audit import service as audit
from walletguard.audit.models import AuditEntry
from walletguard.bootstrap import Container
from walletguard.identity.guards import DeviceState
from walletguard.identity.models import Device
from walletguard.identity.operators import Operator
from walletguard.identity.phone import mask_name, mask_phone, parse_mobile
from walletguard.identity.service import IdentityService, Principal
from walletguard.incidents import repository
from walletguard.incidents.models import CaseNote, ChecklistTick, IncidentCase, MovementMark
from walletguard.kit.errors import InvalidInput, NotFound, TooManyAttempts, WalletguardError
from walletguard.kit.i18n import Language, text
from walletguard.kit.ratelimit import AttemptCounters
from walletguard.messages.sync import CloudSync
from walletguard.wallet import repository as wallet_repository
from walletguard.wallet.bins import issuer_by_code
from walletguard.wallet.models import Card, LedgerTransaction
from walletguard.wallet.repository import MovementFilter
from walletguard.wallet.service import WalletService

INCIDENT = "incident"
COMPLAINT = "complaint"
REPORT_KINDS = ("robbed", "lost_phone")
CHANNELS = ("app", "not_me_link", "web_form", "hotline", "social_media")
OPERATOR_CHANNELS = ("web_form", "hotline", "social_media")
STATUSES = ("open", "in_progress", "waiting_holder", "resolved", "closed")
DONE_STATUSES = ("resolved", "closed")
DEBIT_KINDS = ("payment", "transfer", "withdraw")
FREEZE_REASON = "incident"
# Most audit entries a case reads; a holder with more in the look-back sees the newest ones.
MAX_TIMELINE_ENTRIES = 5000
# Wrong identity checks by operators, per phone number: then an hour's lock.
IDENTITY_CHECK_FAILURES = 5

# Audit events that change who can act as the holder: debits soon after them are suspect.
SECURITY_CHANGES = {
    "security.device_added": "new_device_login",
    "security.sync_enabled": "sync_enabled",
    "security.credential_changed": "credential_changed",
    "security.phone_changed": "phone_changed",
    "security.factor_removed": "factor_removed",
    "security.recovery_completed": "account_recovered",
}

# Which part of the story an audit event tells (the timeline's ``category``).
_CATEGORY_BY_EVENT = {
    "security.sync_enabled": "sync",
    "messages.sync_disabled": "sync",
    "messages.sim_claimed": "sync",
    "messages.synced_read": "otp",
    "step_up.sms_sent": "otp",
    "card.binding_started": "otp",
    "security.credential_changed": "credential",
    "security.not_me_reported": "case",
    "wallet.transactions_closed": "freeze",
    "card.blocked": "freeze",
    "sessions.revoked": "login",
}
_CATEGORY_BY_PREFIX = (
    ("incident.", "case"),
    ("alert", "alert"),
    ("security.device_", "device"),
    ("device.", "device"),
    ("security.phone_", "credential"),
    ("security.factor_", "credential"),
    ("security.recovery_", "credential"),
    ("password", "credential"),
    ("payment_password.", "credential"),
    ("step_up.", "credential"),
    ("recovery.", "credential"),
    ("login.", "login"),
    ("session", "login"),
    ("reauth.", "login"),
    ("holder.", "login"),
    ("registration.", "login"),
    ("movement.", "money"),
    ("card.", "money"),
    ("limits.", "money"),
    ("wallet.", "money"),
)


def category_of(event: str) -> str:
    if event in _CATEGORY_BY_EVENT:
        return _CATEGORY_BY_EVENT[event]
    for prefix, category in _CATEGORY_BY_PREFIX:
        if event.startswith(prefix):
            return category
    return "other"


# -- errors ------------------------------------------------------------------------------------


class IdentityCheckFailed(WalletguardError):
    """One refusal for an unknown number and for a wrong name or ID number: the operator console
    is not a way to learn who has an account. Kept so the attempt counter survives."""

    status = 422
    slug = "identity-check-failed"
    title_key = "incidents.identity_check_failed_title"
    keep_writes = True

    def __init__(self) -> None:
        super().__init__("incidents.identity_check_failed")


class UnknownChecklistItem(NotFound):
    slug = "checklist-item-not-found"

    def __init__(self) -> None:
        super().__init__("incidents.checklist.not_found")


# -- read models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineItem:
    seq: int
    at: datetime
    event: str
    category: str
    device_id: uuid.UUID | None
    device_label: str | None
    ip: str | None
    data: dict[str, Any]
    summary_zh: str
    summary_en: str

    def summary(self, lang: Language) -> str:
        return self.summary_zh if lang == "zh-CN" else self.summary_en


@dataclass(frozen=True)
class CaseMovement:
    id: uuid.UUID
    created_at: datetime
    posted_at: datetime | None
    kind: str
    status: str
    amount_fen: int
    refunded_fen: int
    source: str
    card_id: uuid.UUID | None
    card_last4: str | None
    bank_code: str | None
    payee: str | None
    device_id: uuid.UUID | None
    device_label: str | None
    ip: str | None
    premarked: bool
    premark_reasons: tuple[str, ...]
    # The holder's or an operator's own mark; None: the pre-mark stands.
    marked: bool | None
    marked_by: str | None
    audit_seqs: tuple[int, ...]

    @property
    def unauthorised(self) -> bool:
        return self.premarked if self.marked is None else self.marked

    @property
    def loss_fen(self) -> int:
        if not self.unauthorised or self.status != "posted":
            return 0
        return max(0, self.amount_fen - self.refunded_fen)


@dataclass(frozen=True)
class LossLine:
    """``source`` card (by ``card_last4``) or balance."""

    source: str
    card_last4: str | None
    bank_code: str | None
    amount_fen: int


@dataclass(frozen=True)
class CardInfo:
    id: uuid.UUID
    last4: str
    bank_code: str
    status: str


@dataclass(frozen=True)
class ChecklistItem:
    key: str
    done_at: datetime | None
    bank_code: str | None
    hotline: str | None

    @property
    def done(self) -> bool:
        return self.done_at is not None


@dataclass(frozen=True)
class CaseView:
    case: IncidentCase
    holder_name_masked: str
    holder_phone_masked: str
    holder_id_number_masked: str | None
    freeze: dict[str, Any]
    timeline: list[TimelineItem]
    movements: list[CaseMovement]
    loss: list[LossLine]
    cards: list[CardInfo]
    # One-time codes shown on devices that do not hold the SIM (cloud sync): at least this
    # many codes, in this many reads, on these devices.
    codes_shown_off_sim: int
    code_reads: int
    code_devices: list[str]
    window_start: datetime
    built_at: datetime
    entries: list[AuditEntry] = field(repr=False)

    @property
    def loss_total_fen(self) -> int:
        return sum(line.amount_fen for line in self.loss)


@dataclass(frozen=True)
class ReportOutcome:
    case: IncidentCase
    created: bool
    frozen_at: datetime
    cards_blocked: int
    sync_disabled: int
    sessions_revoked: int
    other_sessions_kept: bool


def mask_id_number(number: str | None) -> str | None:
    """The ID number with all but its first and last two characters hidden: never the last 6
    (operators check identity with them)."""
    if not number:
        return None
    return number[0] + "*" * (len(number) - 3) + number[-2:]


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- the service ---------------------------------------------------------------------------------


class IncidentService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock
        self.settings = env.settings

    # -- the freeze ------------------------------------------------------------------------

    def _freeze(
        self,
        holder_id: uuid.UUID,
        *,
        keep: Principal | None,
        end_other_sessions: bool,
        device_id: uuid.UUID | None,
        ip: str | None,
    ) -> dict[str, Any]:
        """Payments, cards, sync, sessions — in the lock order of a money movement."""
        repository.lock_live_sessions(self.db, holder_id)
        wallet = WalletService(self.db, self.env)
        wallet.close_all_transactions(holder_id, reason=FREEZE_REASON, device_id=device_id, ip=ip)
        cards = wallet.block_all_cards(holder_id, reason=FREEZE_REASON)
        sync = CloudSync(self.db, self.env).disable_sync(
            holder_id, device_id=None, reason=FREEZE_REASON
        )
        identity = IdentityService(self.db, self.env)
        sessions = 0
        if end_other_sessions and keep is not None:
            sessions = identity.revoke_other_sessions(keep, reason=FREEZE_REASON)
        elif end_other_sessions:
            sessions = identity.revoke_all_sessions(holder_id, reason=FREEZE_REASON)
        return {
            "payments": True,
            "cards_blocked": cards,
            "sync_disabled": sync,
            "sessions_revoked": sessions,
            "other_sessions_kept": not end_other_sessions,
        }

    def _new_reference(self, now: datetime) -> str:
        for _ in range(10):
            reference = f"WG-{now:%Y%m%d}-{secrets.token_hex(3).upper()}"
            if not repository.reference_taken(self.db, reference):
                return reference
        raise RuntimeError("could not find a free case reference")

    def _open_case(
        self,
        holder_id: uuid.UUID,
        *,
        category: str,
        kind: str,
        channel: str,
        reported_by: str,
        operator: str | None = None,
        principal: Principal | None = None,
        lost_control_at: datetime | None = None,
        description: str | None = None,
    ) -> IncidentCase:
        now = self.clock.now()
        hours = (
            self.settings.incident_sla_hours
            if category == INCIDENT
            else self.settings.complaint_sla_hours
        )
        case = IncidentCase(
            id=uuid.uuid4(),
            reference=self._new_reference(now),
            holder_id=holder_id,
            category=category,
            kind=kind,
            channel=channel,
            reported_by=reported_by,
            opened_by_operator=operator,
            reporting_device_id=principal.device_id if principal else None,
            reporting_session_id=principal.session_id if principal else None,
            lost_control_at=lost_control_at,
            description_enc=self.env.cipher.encrypt_optional(
                description, context="incident_cases.description"
            ),
            status="open",
            opened_at=now,
            frozen_at=None,
            freeze_summary="{}",
            due_at=now + timedelta(hours=hours),
            updated_at=now,
        )
        self.db.add(case)
        self.db.flush()
        return case

    def report(
        self,
        principal: Principal,
        *,
        kind: str,
        lost_control_at: datetime | None = None,
        description: str | None = None,
    ) -> ReportOutcome:
        """The holder's "I have been robbed / lost my phone", from one of their devices."""
        trusted = principal.device_trust == DeviceState.TRUSTED
        freeze = self._freeze(
            principal.holder_id,
            keep=principal,
            end_other_sessions=trusted,
            device_id=principal.device_id,
            ip=principal.ip,
        )
        return self._record_report(
            principal.holder_id,
            freeze,
            kind=kind,
            channel="app",
            reported_by="holder",
            principal=principal,
            lost_control_at=lost_control_at,
            description=description,
        )

    def _record_report(
        self,
        holder_id: uuid.UUID,
        freeze: dict[str, Any],
        *,
        kind: str,
        channel: str,
        reported_by: str,
        principal: Principal | None = None,
        operator: str | None = None,
        lost_control_at: datetime | None = None,
        description: str | None = None,
    ) -> ReportOutcome:
        now = self.clock.now()
        case = repository.open_incident_of_holder(self.db, holder_id)
        created = case is None
        if case is None:
            case = self._open_case(
                holder_id,
                category=INCIDENT,
                kind=kind,
                channel=channel,
                reported_by=reported_by,
                operator=operator,
                principal=principal,
                lost_control_at=lost_control_at,
                description=description,
            )
        else:
            # A second report (or the holder confirming a "not me" case) joins the open case.
            case.kind = kind
            if principal is not None:
                case.reporting_device_id = principal.device_id
                case.reporting_session_id = principal.session_id
            if lost_control_at is not None:
                case.lost_control_at = lost_control_at
            if description:
                case.description_enc = self.env.cipher.encrypt(
                    description, context="incident_cases.description"
                )
            case.updated_at = now
        summary = json.loads(case.freeze_summary)
        summary.update(freeze)
        case.freeze_summary = _json(summary)
        case.frozen_at = case.frozen_at or now
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "incident.reported",
            holder_id=holder_id,
            device_id=principal.device_id if principal else None,
            ip=principal.ip if principal else None,
            data={
                "case_id": str(case.id),
                "reference": case.reference,
                "kind": kind,
                "channel": channel,
                "reported_by": reported_by,
                "operator": operator,
                "new_case": created,
                **{k: freeze[k] for k in sorted(freeze)},
            },
        )
        return ReportOutcome(
            case=case,
            created=created,
            frozen_at=case.frozen_at,
            cards_blocked=int(freeze["cards_blocked"]),
            sync_disabled=int(freeze["sync_disabled"]),
            sessions_revoked=int(freeze["sessions_revoked"]),
            other_sessions_kept=bool(freeze["other_sessions_kept"]),
        )

    def open_case_for_not_me(
        self,
        holder_id: uuid.UUID,
        *,
        suspect_device_id: uuid.UUID | None,
        reported_event: str,
        ip: str | None,
        payments_frozen: bool,
        device_revoked: bool,
    ) -> IncidentCase:
        """A "this was not me" link froze payments and revoked a device: open a case (or join
        the open one) so the holder finds the timeline, checklist and letters waiting. Cards,
        sync and the other sessions stay as they are until the holder reports from a device
        (``report``) or an operator does: a link in an email proves less than a signed-in
        device."""
        case = repository.open_incident_of_holder(self.db, holder_id)
        created = case is None
        if case is None:
            case = self._open_case(
                holder_id,
                category=INCIDENT,
                kind="not_me",
                channel="not_me_link",
                reported_by="not_me_link",
            )
        summary = json.loads(case.freeze_summary)
        summary["payments"] = bool(summary.get("payments")) or payments_frozen
        summary["not_me_reports"] = int(summary.get("not_me_reports", 0)) + 1
        case.freeze_summary = _json(summary)
        case.updated_at = self.clock.now()
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "incident.not_me_linked",
            holder_id=holder_id,
            device_id=suspect_device_id,
            ip=ip,
            data={
                "case_id": str(case.id),
                "reference": case.reference,
                "reported_event": reported_event,
                "new_case": created,
                "payments_frozen": payments_frozen,
                "device_revoked": device_revoked,
            },
        )
        return case

    # -- operators -------------------------------------------------------------------------

    def verify_identity(self, phone: str, name: str, id_number_last6: str) -> uuid.UUID:
        """The holder with this phone number, name and ID-number ending; counted per number
        before the check, one refusal for every reason."""
        try:
            e164 = parse_mobile(phone)
        except InvalidInput as exc:
            exc.extensions["field"] = "phone"
            raise
        cipher = self.env.cipher
        key = f"operator-identity:{cipher.blind_index(e164, context='phone')}"
        counters = AttemptCounters(self.db, self.clock)
        tries = counters.reserve(
            key,
            lambda n: timedelta(hours=1) if n >= IDENTITY_CHECK_FAILURES else None,
            window=timedelta(hours=1),
        )
        if not tries.allowed:
            raise TooManyAttempts(
                "incidents.identity_check_locked", retry_after_s=tries.retry_after_s
            )
        identity = IdentityService(self.db, self.env)
        # Identity exposes no public lookup by number yet; this is its own, read-only.
        holder = identity._holder_by_phone(e164)
        matches = False
        if holder is not None:
            profile = identity.profile(holder.id)
            same_name = "".join(profile.name.split()).casefold() == "".join(name.split()).casefold()
            ending = (profile.id_number or "")[-6:].upper()
            matches = (
                same_name
                and len(ending) == 6
                and secrets.compare_digest(ending, id_number_last6.strip().upper())
            )
        if holder is None or not matches:
            audit.record(
                self.db,
                self.clock,
                "incident.identity_check_failed",
                holder_id=holder.id if holder else None,
                data={"consecutive_failures": tries.failures},
            )
            raise IdentityCheckFailed()
        counters.reset(key)
        return holder.id

    def report_for_holder(
        self,
        operator: Operator,
        *,
        phone: str,
        name: str,
        id_number_last6: str,
        kind: str,
        channel: str,
        description: str | None,
    ) -> ReportOutcome:
        """An operator reports on a verified holder's behalf: everything frozen, every session
        ended (the holder signs in again on a device they hold)."""
        holder_id = self.verify_identity(phone, name, id_number_last6)
        freeze = self._freeze(
            holder_id, keep=None, end_other_sessions=True, device_id=None, ip=None
        )
        freeze["other_sessions_kept"] = False
        return self._record_report(
            holder_id,
            freeze,
            kind=kind,
            channel=channel,
            reported_by="operator",
            operator=operator.name,
            description=description,
        )

    def file_complaint(
        self,
        operator: Operator,
        *,
        phone: str,
        name: str,
        id_number_last6: str,
        channel: str,
        summary: str,
    ) -> IncidentCase:
        holder_id = self.verify_identity(phone, name, id_number_last6)
        case = self._open_case(
            holder_id,
            category=COMPLAINT,
            kind="complaint",
            channel=channel,
            reported_by="operator",
            operator=operator.name,
            description=summary,
        )
        audit.record(
            self.db,
            self.clock,
            "incident.complaint_filed",
            holder_id=holder_id,
            data={
                "case_id": str(case.id),
                "reference": case.reference,
                "channel": channel,
                "operator": operator.name,
            },
        )
        return case

    def operator_case(self, case_id: uuid.UUID) -> IncidentCase:
        case = self.db.get(IncidentCase, case_id)
        if case is None:
            raise NotFound("incidents.case.not_found")
        return case

    def case_by_id_or_reference(self, key: str) -> IncidentCase:
        try:
            return self.operator_case(uuid.UUID(key))
        except ValueError:
            case = repository.case_by_reference(self.db, key.strip().upper())
        if case is None:
            raise NotFound("incidents.case.not_found")
        return case

    def update_case(
        self,
        operator: Operator,
        case_id: uuid.UUID,
        *,
        changes: Mapping[str, Any],
    ) -> IncidentCase:
        """Status, assignee, due time; every change audited with who made it."""
        case = self.operator_case(case_id)
        now = self.clock.now()
        changed: dict[str, list[Any]] = {}
        if "status" in changes and changes["status"] != case.status:
            changed["status"] = [case.status, changes["status"]]
            case.status = changes["status"]
            if case.status in DONE_STATUSES:
                case.resolved_at = case.resolved_at or now
            else:
                case.resolved_at = None
        if "assignee" in changes and changes["assignee"] != case.assignee:
            changed["assignee"] = [case.assignee, changes["assignee"]]
            case.assignee = changes["assignee"]
        if (
            "due_at" in changes
            and changes["due_at"] is not None
            and changes["due_at"] != (case.due_at)
        ):
            changed["due_at"] = [case.due_at.isoformat(), changes["due_at"].isoformat()]
            case.due_at = changes["due_at"]
        if changed:
            case.updated_at = now
            self.db.flush()
            audit.record(
                self.db,
                self.clock,
                "incident.case_updated",
                holder_id=case.holder_id,
                data={"case_id": str(case.id), "operator": operator.name, "changes": changed},
            )
        return case

    def add_note(self, operator: Operator, case_id: uuid.UUID, body: str) -> CaseNote:
        case = self.operator_case(case_id)
        note = CaseNote(
            id=uuid.uuid4(),
            case_id=case.id,
            author=operator.name,
            body_enc=self.env.cipher.encrypt(body, context="incident_case_notes.body"),
            created_at=self.clock.now(),
        )
        self.db.add(note)
        case.updated_at = note.created_at
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "incident.case_note_added",
            holder_id=case.holder_id,
            data={"case_id": str(case.id), "note_id": str(note.id), "operator": operator.name},
        )
        return note

    def notes(self, case_id: uuid.UUID) -> list[tuple[CaseNote, str]]:
        return [
            (note, self.env.cipher.decrypt(note.body_enc, context="incident_case_notes.body"))
            for note in repository.notes_of_case(self.db, case_id)
        ]

    def list_cases(
        self, filters: repository.CaseFilter, *, offset: int, limit: int
    ) -> tuple[list[IncidentCase], int]:
        return repository.list_cases(self.db, filters, offset=offset, limit=limit)

    def description(self, case: IncidentCase) -> str | None:
        return self.env.cipher.decrypt_optional(
            case.description_enc, context="incident_cases.description"
        )

    # -- the holder's case -----------------------------------------------------------------

    def holder_case(self, holder_id: uuid.UUID, case_id: uuid.UUID) -> IncidentCase:
        case = repository.case_of_holder(self.db, holder_id, case_id)
        if case is None:
            raise NotFound("incidents.case.not_found")
        return case

    def holder_cases(self, holder_id: uuid.UUID) -> list[IncidentCase]:
        return repository.cases_of_holder(self.db, holder_id)

    def mark_movement(
        self,
        case: IncidentCase,
        movement_id: uuid.UUID,
        *,
        unauthorised: bool | None,
        marked_by: str,
        principal: Principal | None = None,
    ) -> None:
        """Mark a movement unauthorised or not; ``None`` takes the holder's mark back (the
        pre-mark stands again)."""
        txn = self._case_debit(case, movement_id)
        now = self.clock.now()
        mark = repository.mark_of(self.db, case.id, txn.id)
        if unauthorised is None:
            if mark is not None:
                self.db.delete(mark)
        elif mark is None:
            mark = MovementMark(
                id=uuid.uuid4(),
                case_id=case.id,
                movement_id=txn.id,
                unauthorised=unauthorised,
                marked_by=marked_by,
                marked_at=now,
            )
            try:
                with self.db.begin_nested():
                    self.db.add(mark)
                    self.db.flush()
            except IntegrityError:
                # The same mark, set by a concurrent request: take it over.
                existing = repository.mark_of(self.db, case.id, txn.id)
                assert existing is not None
                existing.unauthorised = unauthorised
                existing.marked_by = marked_by
                existing.marked_at = now
        else:
            mark.unauthorised = unauthorised
            mark.marked_by = marked_by
            mark.marked_at = now
        case.updated_at = now
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "incident.movement_marked",
            holder_id=case.holder_id,
            device_id=principal.device_id if principal else None,
            ip=principal.ip if principal else None,
            data={
                "case_id": str(case.id),
                "movement_id": str(txn.id),
                "unauthorised": unauthorised,
                "marked_by": marked_by,
            },
        )

    def _case_debit(self, case: IncidentCase, movement_id: uuid.UUID) -> LedgerTransaction:
        try:
            txn = WalletService(self.db, self.env).movement(case.holder_id, movement_id)
        except NotFound:
            txn = None
        if txn is None or txn.holder_id != case.holder_id or txn.kind not in DEBIT_KINDS:
            raise NotFound("incidents.movement.not_found")
        return txn

    # -- checklist -------------------------------------------------------------------------

    def checklist(self, case: IncidentCase) -> list[ChecklistItem]:
        ticks = repository.ticks_of_case(self.db, case.id)
        banks = sorted({c.bank_code for c in self._cards(case.holder_id) if c.status != "pending"})
        items: list[ChecklistItem] = []

        def add(key: str, bank: str | None = None) -> None:
            tick = ticks.get(key)
            issuer = issuer_by_code(bank) if bank else None
            items.append(
                ChecklistItem(
                    key=key,
                    done_at=tick.done_at if tick else None,
                    bank_code=bank,
                    hotline=issuer.hotline if issuer else None,
                )
            )

        add("police_report")
        for bank in banks:
            add(f"call_bank:{bank}", bank)
        for key in (
            "keep_records",
            "no_fees",
            "warn_contacts",
            "change_passwords",
            "platform_complaint",
        ):
            add(key)
        return items

    def tick(
        self,
        case: IncidentCase,
        item: str,
        *,
        done: bool,
        principal: Principal | None = None,
    ) -> list[ChecklistItem]:
        if item not in {i.key for i in self.checklist(case)}:
            raise UnknownChecklistItem()
        now = self.clock.now()
        ticks = repository.ticks_of_case(self.db, case.id)
        row = ticks.get(item)
        if row is None:
            row = ChecklistTick(id=uuid.uuid4(), case_id=case.id, item=item, updated_at=now)
            self.db.add(row)
        if done and row.done_at is None:
            row.done_at = now
        elif not done:
            row.done_at = None
        row.updated_at = now
        case.updated_at = now
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "incident.checklist_ticked",
            holder_id=case.holder_id,
            device_id=principal.device_id if principal else None,
            ip=principal.ip if principal else None,
            data={"case_id": str(case.id), "item": item, "done": done},
        )
        return self.checklist(case)

    # -- building the case -----------------------------------------------------------------

    def _cards(self, holder_id: uuid.UUID) -> list[Card]:
        return wallet_repository.cards_of_holder(self.db, holder_id, include_unbound=True)

    def window_start(self, case: IncidentCase) -> datetime:
        start = case.opened_at - timedelta(days=self.settings.incident_lookback_days)
        if case.lost_control_at is not None and case.lost_control_at < start:
            start = case.lost_control_at
        return start

    def view(self, case: IncidentCase) -> CaseView:
        now = self.clock.now()
        since = self.window_start(case)
        identity = IdentityService(self.db, self.env)
        profile = identity.profile(case.holder_id)
        devices = repository.devices_by_id(self.db, case.holder_id)
        cards = {card.id: card for card in self._cards(case.holder_id)}
        entries = repository.holder_audit_entries(
            self.db, case.holder_id, since, limit=MAX_TIMELINE_ENTRIES
        )
        timeline = [self._timeline_item(entry, devices, cards) for entry in entries]
        movements = self._movements(case, since, entries, devices, cards)
        codes = reads = 0
        code_devices: list[str] = []
        for item in timeline:
            if item.event == "messages.synced_read" and int(item.data.get("codes_shown", 0)):
                # Each read shows the newest messages again: the largest read is how many
                # codes were shown at least, the count of reads how often.
                codes = max(codes, int(item.data["codes_shown"]))
                reads += 1
                label = item.device_label or str(item.device_id)
                if label not in code_devices:
                    code_devices.append(label)
        return CaseView(
            case=case,
            holder_name_masked=mask_name(profile.name),
            holder_phone_masked=mask_phone(profile.phone),
            holder_id_number_masked=mask_id_number(profile.id_number),
            freeze=json.loads(case.freeze_summary),
            timeline=timeline,
            movements=movements,
            loss=self._loss(movements),
            cards=[
                CardInfo(id=c.id, last4=c.last4, bank_code=c.bank_code, status=c.status)
                for c in cards.values()
                if c.status != "pending"
            ],
            codes_shown_off_sim=codes,
            code_reads=reads,
            code_devices=code_devices,
            window_start=since,
            built_at=now,
            entries=entries,
        )

    def _timeline_item(
        self,
        entry: AuditEntry,
        devices: Mapping[uuid.UUID, Device],
        cards: Mapping[uuid.UUID, Card],
    ) -> TimelineItem:
        data: dict[str, Any] = json.loads(entry.data)
        device = devices.get(entry.device_id) if entry.device_id else None
        label = device.label if device is not None else data.get("device_label")
        return TimelineItem(
            seq=entry.seq,
            at=entry.at,
            event=entry.event,
            category=category_of(entry.event),
            device_id=entry.device_id,
            device_label=label,
            ip=entry.ip,
            data=data,
            summary_zh=describe(entry.event, data, label, entry.ip, "zh-CN"),
            summary_en=describe(entry.event, data, label, entry.ip, "en"),
        )

    def _movements(
        self,
        case: IncidentCase,
        since: datetime,
        entries: Sequence[AuditEntry],
        devices: Mapping[uuid.UUID, Device],
        cards: Mapping[uuid.UUID, Card],
    ) -> list[CaseMovement]:
        window = timedelta(hours=self.settings.incident_suspect_window_hours)
        changes = [
            (entry.at, SECURITY_CHANGES[entry.event])
            for entry in entries
            if entry.event in SECURITY_CHANGES
        ]
        seqs: dict[str, list[int]] = {}
        for entry in entries:
            if entry.event.startswith("movement."):
                movement_id = json.loads(entry.data).get("movement_id")
                if movement_id:
                    seqs.setdefault(str(movement_id), []).append(entry.seq)
        rows, _ = WalletService(self.db, self.env).movements(
            case.holder_id, MovementFilter(created_from=since)
        )
        debits = sorted(
            (t for t in rows if t.holder_id == case.holder_id and t.kind in DEBIT_KINDS),
            key=lambda t: (t.created_at, min(seqs.get(str(t.id), [0])), str(t.id)),
        )
        marks = repository.marks_of_case(self.db, case.id)
        out = []
        for txn in debits:
            reasons = premark(
                txn,
                devices.get(txn.device_id) if txn.device_id else None,
                changes,
                window=window,
                reporting_device_id=case.reporting_device_id,
                lost_control_at=case.lost_control_at,
            )
            card = cards.get(txn.card_id) if txn.card_id else None
            device = devices.get(txn.device_id) if txn.device_id else None
            mark = marks.get(txn.id)
            out.append(
                CaseMovement(
                    id=txn.id,
                    created_at=txn.created_at,
                    posted_at=txn.posted_at,
                    kind=txn.kind,
                    status=txn.status,
                    amount_fen=txn.amount_fen,
                    refunded_fen=txn.refunded_fen,
                    source=txn.source,
                    card_id=txn.card_id,
                    card_last4=card.last4 if card else None,
                    bank_code=card.bank_code if card else None,
                    payee=txn.payee,
                    device_id=txn.device_id,
                    device_label=device.label if device else None,
                    ip=txn.ip,
                    premarked=bool(reasons),
                    premark_reasons=tuple(reasons),
                    marked=mark.unauthorised if mark else None,
                    marked_by=mark.marked_by if mark else None,
                    audit_seqs=tuple(seqs.get(str(txn.id), ())),
                )
            )
        return out

    @staticmethod
    def _loss(movements: Iterable[CaseMovement]) -> list[LossLine]:
        by_card: dict[tuple[str, str | None, str | None], int] = {}
        for movement in movements:
            if movement.loss_fen <= 0:
                continue
            if movement.source == "card":
                key = ("card", movement.card_last4, movement.bank_code)
            else:
                key = ("balance", None, None)
            by_card[key] = by_card.get(key, 0) + movement.loss_fen
        lines = [
            LossLine(source=s, card_last4=last4, bank_code=bank, amount_fen=amount)
            for (s, last4, bank), amount in by_card.items()
        ]
        # Cards first, biggest loss first; the balance last.
        lines.sort(key=lambda line: (line.source != "card", -line.amount_fen))
        return lines


def premark(
    txn: LedgerTransaction,
    device: Device | None,
    changes: Sequence[tuple[datetime, str]],
    *,
    window: timedelta,
    reporting_device_id: uuid.UUID | None,
    lost_control_at: datetime | None,
) -> list[str]:
    """Why a debit is suspected unauthorised (empty: it is not). See the module docstring."""
    if reporting_device_id is not None and txn.device_id == reporting_device_id:
        return []
    reasons = []
    if device is not None and txn.created_at - device.first_seen_at < window:
        reasons.append("new_device")
    if device is not None and device.revoked_at is not None:
        reasons.append("revoked_device")
    if any(at <= txn.created_at < at + window for at, _ in changes):
        reasons.append("after_security_change")
    if lost_control_at is not None and txn.created_at >= lost_control_at:
        reasons.append("after_lost_control")
    return reasons


def _label(prefix: str, value: object, lang: Language) -> str:
    from walletguard.kit.i18n import catalogue

    if not value:
        return "—"
    key = f"{prefix}.{value}"
    return text(key, lang) if key in catalogue() else str(value)


def describe(
    event: str, data: Mapping[str, Any], device_label: str | None, ip: str | None, lang: Language
) -> str:
    """One line about an audit event, in the holder's words."""
    from walletguard.kit.i18n import catalogue
    from walletguard.kit.money import format_yuan

    amount = data.get("amount_fen")
    params: dict[str, Any] = {
        "device": device_label or text("incidents.timeline.unknown_device", lang),
        "ip": ip or "—",
        "card_last4": data.get("card_last4") or "—",
        "amount": format_yuan(int(amount)) if isinstance(amount, int) else "—",
        "payee": data.get("payee") or "—",
        "codes_shown": data.get("codes_shown", 0),
        "codes_hidden": data.get("codes_hidden", 0),
        "messages": data.get("messages", 0),
        "action": _label("mfa.action", data.get("action"), lang),
        "credential": _label("incidents.credential", data.get("credential"), lang),
        "reason": data.get("reason") or "—",
        "count": data.get("count", data.get("devices", 0)),
        "kind": _label("incidents.kind", data.get("kind"), lang),
        "status": data.get("status") or "—",
        "event": event,
        "item": data.get("item") or "—",
        "reference": data.get("reference") or "—",
    }
    key = f"incidents.timeline.{event}"
    if event == "movement.created" and data.get("source") == "card":
        key = "incidents.timeline.movement.created_card"
    if event == "messages.synced_read" and int(data.get("codes_shown", 0) or 0) > 0:
        key = "incidents.timeline.messages.synced_read_codes"
    if key not in catalogue():
        key = "incidents.timeline.other"
    return text(key, lang, **params)


def open_case_for_not_me(
    db: Session,
    env: Container,
    holder_id: uuid.UUID,
    *,
    suspect_device_id: uuid.UUID | None,
    reported_event: str,
    ip: str | None,
    payments_frozen: bool,
    device_revoked: bool,
) -> uuid.UUID:
    """What ``identity.recovery`` calls (by name, lazily) when a "not me" link is used."""
    return (
        IncidentService(db, env)
        .open_case_for_not_me(
            holder_id,
            suspect_device_id=suspect_device_id,
            reported_event=reported_event,
            ip=ip,
            payments_frozen=payments_frozen,
            device_revoked=device_revoked,
        )
        .id
    )
