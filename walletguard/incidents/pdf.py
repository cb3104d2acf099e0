"""PDF rendering of the incident report and the letters, with ``reportlab``.

Chinese is set in an embedded TrueType CJK font (a subset of it) when one is available —
``WALLETGUARD_PDF_FONT`` or a usual system font such as WenQuanYi Micro Hei — so the PDF shows
the same on any reader, including a police or bank clerk's machine without Chinese fonts. Without
one it falls back to reportlab's built-in CID font ``STSong-Light`` (nothing embedded: text
extraction works, display needs the reader's CJK fonts). ``invariant`` output: the same case
gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from walletguard.incidents.service import CaseView
from walletguard.kit.i18n import Language, text
from walletguard.kit.money import format_yuan
from walletguard.kit.settings import Settings
from walletguard.wallet.bins import issuer_by_code, mask_card
from walletguard.wallet.limits import CHINA_TIME

FONT = "STSong-Light"
EMBEDDED_FONT = "walletguard-cjk"
SYSTEM_CJK_FONTS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/arphic/uming.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
# The timeline in the PDF stops here; the JSON and CSV files carry every entry.
MAX_TIMELINE_ROWS = 400


def cjk_font_file() -> Path | None:
    """The TrueType CJK font to embed: the configured one, else a usual system font."""
    configured = Settings().pdf_font
    candidates = (configured,) if configured is not None else SYSTEM_CJK_FONTS
    return next((path for path in candidates if path.is_file()), None)


@cache
def _font() -> str:
    path = cjk_font_file()
    if path is not None:
        pdfmetrics.registerFont(TTFont(EMBEDDED_FONT, str(path), subfontIndex=0))
        return EMBEDDED_FONT
    pdfmetrics.registerFont(UnicodeCIDFont(FONT))
    return FONT


def local_time(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M:%S")


@cache
def _styles() -> dict[str, ParagraphStyle]:
    font = _font()
    body = ParagraphStyle("body", fontName=font, fontSize=10, leading=15, wordWrap="CJK")
    return {
        "title": ParagraphStyle(
            "title", parent=body, fontSize=16, leading=22, spaceAfter=6 * mm, alignment=1
        ),
        "heading": ParagraphStyle(
            "heading", parent=body, fontSize=12, leading=18, spaceBefore=4 * mm, spaceAfter=2 * mm
        ),
        "body": body,
        "cell": ParagraphStyle("cell", parent=body, fontSize=8, leading=11),
    }


def _p(value: str, style: str = "body") -> Paragraph:
    return Paragraph(escape(value).replace("\n", "<br/>"), _styles()[style])


def _table(rows: Sequence[Sequence[str]], widths: Sequence[float]) -> Table:
    cells = [[_p(cell, "cell") for cell in row] for row in rows]
    table = Table(cells, colWidths=list(widths), repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


def _bank(code: str | None, lang: Language) -> str:
    issuer = issuer_by_code(code) if code else None
    if issuer is None:
        return code or ""
    return issuer.name_zh if lang == "zh-CN" else issuer.name_en


def _section(view: CaseView, lang: Language) -> list[object]:
    case = view.case
    story: list[object] = [
        _p(text("incidents.report.title", lang), "title"),
        _p(
            text(
                "incidents.report.case",
                lang,
                reference=case.reference,
                opened_at=local_time(case.opened_at) + " (UTC+8)",
                frozen_at=local_time(case.frozen_at),
            )
        ),
        _p(
            text(
                "incidents.report.holder",
                lang,
                name=view.holder_name_masked,
                phone=view.holder_phone_masked,
            )
        ),
        _p(text("incidents.report.loss_heading", lang), "heading"),
    ]
    loss_rows = [["", "CNY"]]
    for line in view.loss:
        if line.source == "card":
            label = text(
                "incidents.report.loss_card",
                lang,
                bank=_bank(line.bank_code, lang),
                last4=line.card_last4 or "",
            )
        else:
            label = text("incidents.report.loss_balance", lang)
        loss_rows.append([label, format_yuan(line.amount_fen)])
    loss_rows.append(
        [text("incidents.report.loss_total", lang, amount=format_yuan(view.loss_total_fen)), ""]
    )
    story.append(_table(loss_rows, [110 * mm, 50 * mm]))
    story.append(Spacer(1, 3 * mm))
    if view.codes_shown_off_sim:
        story.append(
            _p(
                text(
                    "incidents.report.codes",
                    lang,
                    codes=view.codes_shown_off_sim,
                    reads=view.code_reads,
                    devices=", ".join(view.code_devices),
                )
            )
        )
    else:
        story.append(_p(text("incidents.report.no_codes", lang)))
    story.append(_p(text("incidents.report.movements_heading", lang), "heading"))
    suspected = [m for m in view.movements if m.unauthorised]
    if suspected:
        rows = [["UTC+8", "", "CNY", "", "", ""]]
        for m in suspected:
            source = (
                f"{_bank(m.bank_code, lang)} {mask_card(m.card_last4)}"
                if m.card_last4
                else text("incidents.letter.source_balance", lang)
            )
            rows.append(
                [
                    local_time(m.created_at),
                    text(f"incidents.kind.{m.kind}", lang) + f" ({m.status})",
                    format_yuan(m.amount_fen),
                    source,
                    m.payee or "",
                    f"{m.device_label or ''} {m.ip or ''}",
                ]
            )
        story.append(_table(rows, [30 * mm, 22 * mm, 22 * mm, 40 * mm, 25 * mm, 31 * mm]))
    else:
        story.append(_p(text("incidents.report.none", lang)))
    story.append(_p(text("incidents.report.timeline_heading", lang), "heading"))
    rows = [["#", "UTC+8", ""]]
    for item in view.timeline[:MAX_TIMELINE_ROWS]:
        rows.append([str(item.seq), local_time(item.at), item.summary(lang)])
    story.append(_table(rows, [14 * mm, 32 * mm, 124 * mm]))
    story.append(Spacer(1, 4 * mm))
    story.append(_p(text("incidents.report.integrity", lang)))
    return story


def _build(story: list[object], title: str) -> bytes:
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
        title=title,
        author="walletguard",
        invariant=1,
    )
    document.build(story)
    return buffer.getvalue()


def report_pdf(view: CaseView) -> bytes:
    """The case report: Chinese first, then an English section."""
    story = _section(view, "zh-CN")
    story.append(PageBreak())
    story.append(_p(text("incidents.report.english_section", "en"), "heading"))
    story.extend(_section(view, "en"))
    return _build(story, f"{view.case.reference} {text('incidents.report.title', 'en')}")


def letter_pdf(title: str, body: str) -> bytes:
    story: list[object] = [_p(title, "title")]
    for paragraph in body.split("\n\n"):
        story.append(_p(paragraph))
        story.append(Spacer(1, 2 * mm))
    return _build(story, title)
