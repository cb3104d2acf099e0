"""Letters drafted from a case: a police statement, a complaint to the cloud platform, a dispute
letter to each bank. Chinese by default (they go to Chinese authorities); an English version for
reading. Editable text first, the PDF is the same text.

Each letter says how the codes leaked — through the cloud SMS sync, not through the holder — with
the audit log's count of codes shown off the SIM device when there is one. Personal data appears
only masked: the holder's name and phone, the ID number (never its last 6: operators check
identity with them) and card numbers as ``**** **** **** 1234``. No full card or ID number can
reach a letter: the wallet never gives this module one.
"""

from __future__ import annotations

from dataclasses import dataclass

from walletguard.incidents.pdf import local_time
from walletguard.incidents.service import CaseMovement, CaseView
from walletguard.kit.errors import NotFound
from walletguard.kit.i18n import Language, text
from walletguard.kit.money import format_yuan
from walletguard.wallet.bins import issuer_by_code, mask_card

KINDS = ("police", "platform", "bank")
# The events a letter lists: how the account was taken over, not every page view.
KEY_EVENT_CATEGORIES = ("login", "device", "sync", "otp", "credential")
KEY_EVENTS_SKIPPED = ("login.failed", "login.throttled", "sessions.revoked", "session.revoked")
MAX_EVENT_LINES = 40


class LetterNotFound(NotFound):
    slug = "letter-not-found"

    def __init__(self) -> None:
        super().__init__("incidents.letter.not_found")


@dataclass(frozen=True)
class Letter:
    kind: str
    title: str
    body: str
    language: Language


def _bank_name(code: str | None, lang: Language) -> str:
    issuer = issuer_by_code(code) if code else None
    if issuer is None:
        return code or ""
    return issuer.name_zh if lang == "zh-CN" else issuer.name_en


def _movement_line(m: CaseMovement, lang: Language) -> str:
    if m.source == "card" and m.card_last4:
        source = text(
            "incidents.letter.source_card",
            lang,
            bank=_bank_name(m.bank_code, lang),
            masked=mask_card(m.card_last4),
        )
    else:
        source = text("incidents.letter.source_balance", lang)
    return "- " + text(
        "incidents.letter.movement_line",
        lang,
        at=local_time(m.created_at),
        kind=text(f"incidents.kind.{m.kind}", lang),
        amount=format_yuan(m.amount_fen),
        source=source,
        payee=m.payee or "—",
        device=m.device_label or "—",
        ip=m.ip or "—",
    )


def _codes(view: CaseView, lang: Language) -> str:
    if view.codes_shown_off_sim:
        return text(
            "incidents.letter.codes_leaked",
            lang,
            codes=view.codes_shown_off_sim,
            reads=view.code_reads,
            devices=", ".join(view.code_devices),
        )
    return text("incidents.letter.codes_unknown", lang)


def _events(view: CaseView, lang: Language) -> str:
    lines = [
        "- "
        + text("incidents.letter.event_line", lang, at=local_time(i.at), summary=i.summary(lang))
        for i in view.timeline
        if i.category in KEY_EVENT_CATEGORIES
        and i.event not in KEY_EVENTS_SKIPPED
        and i.at <= (view.case.frozen_at or view.built_at)
    ]
    if len(lines) > MAX_EVENT_LINES:
        lines = lines[-MAX_EVENT_LINES:]
    return "\n".join(lines) or "- " + text("incidents.report.none", lang)


def _loss_lines(view: CaseView, lang: Language) -> str:
    parts = []
    for line in view.loss:
        if line.source == "card":
            label = text(
                "incidents.report.loss_card",
                lang,
                bank=_bank_name(line.bank_code, lang),
                last4=line.card_last4 or "",
            )
        else:
            label = text("incidents.report.loss_balance", lang)
        parts.append(f"{label} {format_yuan(line.amount_fen)}")
    return "；".join(parts) if lang == "zh-CN" else "; ".join(parts)


def render_letter(
    view: CaseView, kind: str, lang: Language = "zh-CN", *, bank_code: str | None = None
) -> Letter:
    if kind not in KINDS:
        raise LetterNotFound()
    case = view.case
    common = {
        "holder_line": text(
            "incidents.letter.holder_line",
            lang,
            name=view.holder_name_masked,
            phone=view.holder_phone_masked,
            id_number=view.holder_id_number_masked or "—",
        ),
        "reference_line": text("incidents.letter.reference_line", lang, reference=case.reference),
        "codes": _codes(view, lang),
        "events": _events(view, lang),
        "frozen_at": local_time(case.frozen_at) + " (UTC+8)",
        "signature": text("incidents.letter.signature", lang, date=local_time(view.built_at)[:10]),
        "draft_note": text("incidents.letter.draft_note", lang),
    }
    suspected = [m for m in view.movements if m.unauthorised]
    if kind == "bank":
        if bank_code is not None:
            code = bank_code.strip().upper()
            suspected = [m for m in suspected if m.bank_code == code]
            cards = [c for c in view.cards if c.bank_code == code]
            issuer = issuer_by_code(code)
            bank = _bank_name(code, lang)
            hotline = issuer.hotline if issuer else "—"
        else:
            cards = view.cards
            bank = text("incidents.letter.all_banks", lang)
            hotline = (
                "、".join(
                    sorted(
                        {
                            f"{_bank_name(c.bank_code, lang)} {issuer.hotline}"
                            for c in cards
                            if (issuer := issuer_by_code(c.bank_code)) is not None
                        }
                    )
                )
                or "—"
            )
        total = sum(m.loss_fen for m in suspected)
        body = text(
            "incidents.letter.bank.body",
            lang,
            bank=bank,
            hotline=hotline,
            cards=", ".join(f"{_bank_name(c.bank_code, lang)} {mask_card(c.last4)}" for c in cards)
            or "—",
            movements="\n".join(_movement_line(m, lang) for m in suspected)
            or "- " + text("incidents.report.none", lang),
            total=format_yuan(total),
            **common,
        )
    else:
        lost = (
            text("incidents.letter.lost_control", lang, at=local_time(case.lost_control_at))
            if case.lost_control_at
            else ""
        )
        body = text(
            f"incidents.letter.{kind}.body",
            lang,
            police=text("incidents.letter.police_station", lang),
            lost_control=lost,
            movements="\n".join(_movement_line(m, lang) for m in suspected)
            or "- " + text("incidents.report.none", lang),
            total=format_yuan(view.loss_total_fen),
            loss_lines=_loss_lines(view, lang) or text("incidents.report.none", lang),
            **common,
        )
    return Letter(
        kind=kind, title=text(f"incidents.letter.{kind}.title", lang), body=body, language=lang
    )
