"""The evidence package: a ZIP a victim can hand to the police, a bank or a court, checkable
offline by anyone with ``walletguard evidence verify``.

Contents::

    README.txt          what is in it and how to check it (zh-CN and English)
    case.json           the case: reference, masked holder, freeze, loss per card and in total
    timeline.json/.csv  every audit entry the case read, in order, with a sentence each
    movements.json/.csv the debits in the case window, pre-marks and the holder's marks
    report.pdf          the same in a readable report (Chinese, with an English section)
    audit_chain.json    the hash-chain proof: each entry used, exactly as hashed (canonical data,
                        prev_hash, hash), and the chain's skeleton (seq, prev_hash, hash of every
                        entry from the first used to the chain's head, other holders' contents
                        left out) so every link can be recomputed
    manifest.json       SHA-256 and size of each file above
    receipt.json        the audit entry that recorded this export, carrying the manifest's
                        SHA-256: it continues the chain right after the skeleton's last entry

Checking it: every file against the manifest; the manifest against the receipt; every entry's
hash recomputed with ``walletguard.audit.service.entry_hash`` (the function that wrote it); every
link of the skeleton; the receipt as the next link; every timeline and movement item backed by an
entry in the proof. Each problem names the file (and the entry) it is in.

What offline checking proves, and what it cannot: that nothing in the package was changed after
it was made, unless someone recomputed the whole chain from the first used entry on. To rule that
out too, compare the receipt's ``seq`` and ``hash`` with the live audit log (``walletguard audit
verify`` on the server proves the log itself): a recomputed chain cannot match it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from walletguard.audit import service as audit
from walletguard.audit.models import AuditEntry
from walletguard.audit.service import GENESIS_HASH, entry_hash
from walletguard.incidents import repository
from walletguard.incidents.models import IncidentCase
from walletguard.incidents.service import CaseMovement, CaseView, IncidentService, TimelineItem
from walletguard.kit.i18n import text
from walletguard.kit.money import format_yuan_plain
from walletguard.wallet.bins import issuer_by_code

FORMAT = "walletguard-evidence/1"
MANIFEST = "manifest.json"
RECEIPT = "receipt.json"
CHAIN = "audit_chain.json"
# A chain skeleton longer than this (a very busy log) is left out; the entries' own hashes and
# the links between consecutive used entries are still checked.
MAX_CHAIN_LINKS = 200_000


def _dumps(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment else None


def _csv_cell(value: object) -> str:
    cell = "" if value is None else str(value)
    # A merchant name like "=HYPERLINK(...)" must stay text in a spreadsheet (CSV injection).
    if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        cell = "'" + cell
    return cell


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
    # A BOM so that spreadsheet programs read the Chinese texts as UTF-8.
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def proof_entry(entry: AuditEntry) -> dict[str, Any]:
    """One audit entry exactly as it was hashed."""
    return {
        "seq": entry.seq,
        "at": _iso(entry.at),
        "event": entry.event,
        "holder_id": str(entry.holder_id) if entry.holder_id else None,
        "device_id": str(entry.device_id) if entry.device_id else None,
        "ip": entry.ip,
        "data": entry.data,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def recompute_proof_entry(item: Mapping[str, Any]) -> str:
    """The hash an entry of the proof must have, recomputed from its content."""
    return entry_hash(
        seq=int(item["seq"]),
        at=datetime.fromisoformat(str(item["at"])),
        event=str(item["event"]),
        holder_id=uuid.UUID(str(item["holder_id"])) if item.get("holder_id") else None,
        device_id=uuid.UUID(str(item["device_id"])) if item.get("device_id") else None,
        ip=str(item["ip"]) if item.get("ip") is not None else None,
        data=str(item["data"]),
        prev_hash=str(item["prev_hash"]),
    )


# -- the files ---------------------------------------------------------------------------------


def _amount(fen: int) -> str:
    return format_yuan_plain(fen)


def case_json(view: CaseView) -> dict[str, Any]:
    case = view.case
    return {
        "format": FORMAT,
        "reference": case.reference,
        "case_id": str(case.id),
        "category": case.category,
        "kind": case.kind,
        "channel": case.channel,
        "status": case.status,
        "opened_at": _iso(case.opened_at),
        "frozen_at": _iso(case.frozen_at),
        "lost_control_at": _iso(case.lost_control_at),
        "holder": {
            "name": view.holder_name_masked,
            "phone": view.holder_phone_masked,
            "id_number": view.holder_id_number_masked,
        },
        "freeze": view.freeze,
        "cards": [
            {"last4": c.last4, "bank_code": c.bank_code, "status": c.status} for c in view.cards
        ],
        "loss": {
            "by_source": [
                {
                    "source": line.source,
                    "card_last4": line.card_last4,
                    "bank_code": line.bank_code,
                    "amount": _amount(line.amount_fen),
                }
                for line in view.loss
            ],
            "total": _amount(view.loss_total_fen),
            "currency": "CNY",
        },
        "codes_shown_off_sim": view.codes_shown_off_sim,
        "code_reads": view.code_reads,
        "code_devices": view.code_devices,
        "window": {"from": _iso(view.window_start), "to": _iso(view.built_at)},
        "premark_rule": text("incidents.evidence.premark_rule", "en"),
    }


def timeline_json(items: Sequence[TimelineItem]) -> list[dict[str, Any]]:
    return [
        {
            "seq": item.seq,
            "at": _iso(item.at),
            "event": item.event,
            "category": item.category,
            "device_id": str(item.device_id) if item.device_id else None,
            "device_label": item.device_label,
            "ip": item.ip,
            "summary_zh": item.summary_zh,
            "summary_en": item.summary_en,
            "data": item.data,
        }
        for item in items
    ]


def movement_json(m: CaseMovement) -> dict[str, Any]:
    return {
        "id": str(m.id),
        "created_at": _iso(m.created_at),
        "posted_at": _iso(m.posted_at),
        "kind": m.kind,
        "status": m.status,
        "amount": _amount(m.amount_fen),
        "refunded": _amount(m.refunded_fen),
        "source": m.source,
        "card_last4": m.card_last4,
        "bank_code": m.bank_code,
        "payee": m.payee,
        "device_id": str(m.device_id) if m.device_id else None,
        "device_label": m.device_label,
        "ip": m.ip,
        "premarked": m.premarked,
        "premark_reasons": list(m.premark_reasons),
        "marked": m.marked,
        "marked_by": m.marked_by,
        "unauthorised": m.unauthorised,
        "loss": _amount(m.loss_fen),
        "audit_seqs": list(m.audit_seqs),
    }


TIMELINE_COLUMNS = ("seq", "at", "event", "category", "device", "ip", "summary_zh", "summary_en")
MOVEMENT_COLUMNS = (
    "id",
    "created_at",
    "posted_at",
    "kind",
    "status",
    "amount",
    "refunded",
    "source",
    "card_last4",
    "bank",
    "payee",
    "device",
    "ip",
    "premarked",
    "premark_reasons",
    "unauthorised",
    "marked_by",
    "loss",
    "audit_seqs",
)


def _bank_name(code: str | None) -> str | None:
    issuer = issuer_by_code(code) if code else None
    return issuer.name_en if issuer else code


def readme() -> bytes:
    return (
        text("incidents.evidence.readme", "zh-CN")
        + "\n\n"
        + text("incidents.evidence.readme", "en")
        + "\n"
    ).encode("utf-8")


@dataclass(frozen=True)
class ChainProof:
    entries: list[AuditEntry]
    links: list[tuple[int, str, str]]
    links_complete: bool


def content_files(view: CaseView, proof: ChainProof, report_pdf: bytes) -> dict[str, bytes]:
    """Every file the manifest covers."""
    timeline_rows = [
        (
            i.seq,
            _iso(i.at),
            i.event,
            i.category,
            i.device_label or (str(i.device_id) if i.device_id else ""),
            i.ip,
            i.summary_zh,
            i.summary_en,
        )
        for i in view.timeline
    ]
    movement_rows = [
        (
            str(m.id),
            _iso(m.created_at),
            _iso(m.posted_at),
            m.kind,
            m.status,
            _amount(m.amount_fen),
            _amount(m.refunded_fen),
            m.source,
            m.card_last4,
            _bank_name(m.bank_code),
            m.payee,
            m.device_label or (str(m.device_id) if m.device_id else ""),
            m.ip,
            m.premarked,
            " ".join(m.premark_reasons),
            m.unauthorised,
            m.marked_by,
            _amount(m.loss_fen),
            " ".join(str(s) for s in m.audit_seqs),
        )
        for m in view.movements
    ]
    chain = {
        "format": FORMAT,
        "hash_function": "walletguard.audit.service.entry_hash (SHA-256 over canonical JSON)",
        "genesis_hash": GENESIS_HASH,
        "entries": [proof_entry(e) for e in proof.entries],
        "links": [list(link) for link in proof.links],
        "links_complete": proof.links_complete,
        "anchor": (
            {"seq": proof.links[-1][0], "hash": proof.links[-1][2]} if proof.links else None
        ),
    }
    return {
        "README.txt": readme(),
        "case.json": _dumps(case_json(view)),
        "timeline.json": _dumps(timeline_json(view.timeline)),
        "timeline.csv": _csv(TIMELINE_COLUMNS, timeline_rows),
        "movements.json": _dumps([movement_json(m) for m in view.movements]),
        "movements.csv": _csv(MOVEMENT_COLUMNS, movement_rows),
        "report.pdf": report_pdf,
        CHAIN: _dumps(chain),
    }


def manifest(files: Mapping[str, bytes], view: CaseView) -> bytes:
    return _dumps(
        {
            "format": FORMAT,
            "case_reference": view.case.reference,
            "generated_at": _iso(view.built_at),
            "algorithm": "sha256",
            "files": {
                name: {"sha256": _sha256(data), "bytes": len(data)}
                for name, data in sorted(files.items())
            },
        }
    )


def manifest_digest(manifest_bytes: bytes) -> str:
    return _sha256(manifest_bytes)


def write_zip(files: Mapping[str, bytes], when: datetime) -> bytes:
    buffer = io.BytesIO()
    stamp = (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def package(
    files: Mapping[str, bytes], manifest_bytes: bytes, receipt: AuditEntry, when: datetime
) -> bytes:
    everything = dict(files)
    everything[MANIFEST] = manifest_bytes
    everything[RECEIPT] = _dumps(proof_entry(receipt))
    return write_zip(everything, when)


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        where = f"{self.file} (audit entry #{self.seq})" if self.seq is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    files: int = 0
    entries: int = 0
    reference: str | None = None
    anchor: dict[str, Any] | None = None
    receipt: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def altered_files(self) -> list[str]:
        return sorted({p.file for p in self.problems})


def _load_json(name: str, members: Mapping[str, bytes], report: VerifyReport) -> Any:
    data = members.get(name)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        report.problems.append(Problem(name, "is not valid JSON (altered)"))
        return None


def _read_members(archive: zipfile.ZipFile, report: VerifyReport) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for info in archive.infolist():
        try:
            members[info.filename] = archive.read(info)
        except Exception:
            report.problems.append(
                Problem(info.filename, "cannot be read: its bytes were altered (CRC mismatch)")
            )
    return members


def verify_package(source: bytes | Path) -> VerifyReport:
    """Check a package offline; every problem names the file (and audit entry) it is in."""
    report = VerifyReport()
    raw = source.read_bytes() if isinstance(source, Path) else source
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        report.problems.append(Problem("package", "is not a readable ZIP file"))
        return report
    with archive:
        members = _read_members(archive, report)
    damaged = {p.file for p in report.problems}
    manifest_bytes = members.get(MANIFEST)
    if manifest_bytes is None:
        if MANIFEST not in damaged:
            report.problems.append(Problem(MANIFEST, "is missing"))
        return report
    listed = _load_json(MANIFEST, members, report)
    if not isinstance(listed, dict) or not isinstance(listed.get("files"), dict):
        report.problems.append(Problem(MANIFEST, "does not list the files (altered)"))
        return report
    report.reference = str(listed.get("case_reference"))
    files: dict[str, Any] = listed["files"]
    report.files = len(files)
    for name, expected in sorted(files.items()):
        data = members.get(name)
        if data is None:
            if name not in damaged:
                report.problems.append(Problem(name, "is listed in the manifest but missing"))
            continue
        digest = expected.get("sha256") if isinstance(expected, dict) else None
        if _sha256(data) != digest:
            report.problems.append(
                Problem(name, "was altered: its SHA-256 differs from the manifest")
            )
    for name in sorted(set(members) - set(files) - {MANIFEST, RECEIPT}):
        report.problems.append(Problem(name, "is not listed in the manifest (added)"))
    _check_receipt(members, manifest_bytes, report)
    chain = _load_json(CHAIN, members, report)
    proven = _check_chain(chain, report) if isinstance(chain, dict) else {}
    if chain is not None and not isinstance(chain, dict):
        report.problems.append(Problem(CHAIN, "is not a chain proof (altered)"))
    if isinstance(chain, dict):
        _check_receipt_link(chain, report)
    _check_backing(members, proven, report)
    return report


def _check_receipt(
    members: Mapping[str, bytes], manifest_bytes: bytes, report: VerifyReport
) -> None:
    receipt = _load_json(RECEIPT, members, report)
    if receipt is None:
        if RECEIPT not in members and RECEIPT not in {p.file for p in report.problems}:
            report.problems.append(Problem(RECEIPT, "is missing"))
        return
    if not isinstance(receipt, dict):
        report.problems.append(Problem(RECEIPT, "is not an audit entry (altered)"))
        return
    report.receipt = receipt
    try:
        recomputed = recompute_proof_entry(receipt)
        data = json.loads(str(receipt["data"]))
    except (KeyError, ValueError, TypeError):
        report.problems.append(Problem(RECEIPT, "is not an audit entry (altered)"))
        return
    if recomputed != receipt.get("hash"):
        report.problems.append(
            Problem(RECEIPT, "was altered: its hash does not match its content", receipt.get("seq"))
        )
    if data.get("manifest_sha256") != manifest_digest(manifest_bytes):
        report.problems.append(
            Problem(MANIFEST, "was altered: its SHA-256 differs from the one in receipt.json")
        )


def _check_chain(chain: Mapping[str, Any], report: VerifyReport) -> dict[int, dict[str, Any]]:
    proven: dict[int, dict[str, Any]] = {}
    entries = chain.get("entries")
    links = chain.get("links")
    if not isinstance(entries, list) or not isinstance(links, list):
        report.problems.append(Problem(CHAIN, "has no entries or links (altered)"))
        return proven
    report.entries = len(entries)
    report.anchor = chain.get("anchor") if isinstance(chain.get("anchor"), dict) else None
    by_seq: dict[int, tuple[str, str]] = {}
    previous: tuple[int, str, str] | None = None
    for link in links:
        try:
            seq, prev_hash, digest = int(link[0]), str(link[1]), str(link[2])
        except (TypeError, ValueError, IndexError):
            report.problems.append(Problem(CHAIN, "has a malformed link (altered)"))
            continue
        by_seq[seq] = (prev_hash, digest)
        if chain.get("links_complete") and previous is not None:
            if seq != previous[0] + 1:
                report.problems.append(
                    Problem(CHAIN, f"chain link missing between #{previous[0]} and #{seq}", seq)
                )
            elif prev_hash != previous[2]:
                report.problems.append(
                    Problem(
                        CHAIN,
                        f"chain link broken: entry #{seq} does not follow entry #{previous[0]}",
                        seq,
                    )
                )
        previous = (seq, prev_hash, digest)
    for item in entries:
        try:
            seq = int(item["seq"])
            recomputed = recompute_proof_entry(item)
        except (KeyError, ValueError, TypeError):
            report.problems.append(Problem(CHAIN, "has a malformed entry (altered)"))
            continue
        if recomputed != item.get("hash"):
            report.problems.append(
                Problem(
                    CHAIN,
                    "chain link broken: the entry's hash does not match its content (edited)",
                    seq,
                )
            )
        link = by_seq.get(seq)
        if link is None or link != (item.get("prev_hash"), item.get("hash")):
            report.problems.append(
                Problem(CHAIN, "chain link broken: the entry is not the chain's entry there", seq)
            )
        if recomputed == item.get("hash") and link is not None:
            proven[seq] = item
    return proven


def _check_receipt_link(chain: Mapping[str, Any], report: VerifyReport) -> None:
    anchor = report.anchor
    receipt = report.receipt
    if not chain.get("links_complete") or anchor is None or receipt is None:
        return
    if receipt.get("seq") != anchor.get("seq", -1) + 1 or receipt.get("prev_hash") != anchor.get(
        "hash"
    ):
        report.problems.append(
            Problem(
                RECEIPT, "does not continue the chain right after its last link", receipt.get("seq")
            )
        )


def _check_backing(
    members: Mapping[str, bytes], proven: Mapping[int, Mapping[str, Any]], report: VerifyReport
) -> None:
    """Every timeline item and every movement's audit entries are in the proof, unaltered."""
    timeline = _load_json("timeline.json", members, report)
    if isinstance(timeline, list):
        for item in timeline:
            seq = item.get("seq") if isinstance(item, dict) else None
            entry = proven.get(seq) if isinstance(seq, int) else None
            if (
                entry is None
                or entry.get("event") != item.get("event")
                or entry.get("at") != item.get("at")
            ):
                report.problems.append(
                    Problem("timeline.json", "item is not backed by the chain proof", seq)
                )
    movements = _load_json("movements.json", members, report)
    if isinstance(movements, list):
        for item in movements:
            seqs = item.get("audit_seqs") if isinstance(item, dict) else None
            for seq in seqs or []:
                if seq not in proven:
                    report.problems.append(
                        Problem("movements.json", "movement is not backed by the chain proof", seq)
                    )


# -- making one ----------------------------------------------------------------------------------


def export_package(service: IncidentService, case: IncidentCase) -> bytes:
    """Build the package for a case and record its export (the receipt) in the audit log.

    The audit head is locked from the chain proof to the receipt, so the receipt is the entry
    right after the proof's last link.
    """
    from walletguard.incidents.pdf import report_pdf

    view = service.view(case)
    pdf = report_pdf(view)
    db = service.db
    head = repository.lock_audit_head(db)
    entries = view.entries
    links: list[tuple[int, str, str]] = []
    complete = False
    if entries and head is not None:
        first = entries[0].seq
        if head[0] - first + 1 <= MAX_CHAIN_LINKS:
            links = repository.audit_links(db, first, head[0])
            complete = True
    if not complete:
        links = [(e.seq, e.prev_hash, e.hash) for e in entries]
    files = content_files(view, ChainProof(entries, links, complete), pdf)
    manifest_bytes = manifest(files, view)
    receipt = audit.record(
        db,
        service.clock,
        "incident.evidence_exported",
        holder_id=case.holder_id,
        data={
            "case_id": str(case.id),
            "reference": case.reference,
            "manifest_sha256": manifest_digest(manifest_bytes),
            "files": len(files),
            "entries": len(entries),
        },
    )
    # Numbered now (the head is already this transaction's): the package names the receipt.
    audit.chain_pending(db)
    return package(files, manifest_bytes, receipt, view.built_at)
