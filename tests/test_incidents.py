"""The incident desk, end to end: one report freezes payments, cards (at the bank too), sync and
the other sessions in one transaction; the case shows the 88,130-yuan drain per card; the
evidence package verifies offline and names every altered file and broken chain link."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import assert_problem, login_trusted, make_settings, step_up
from tests.incident_support import (
    VICTIM_NAME,
    Drained,
    drain,
    report,
    victim_with_cards,
)
from tests.wallet_support import PIN, money_post
from walletguard.audit.service import entry_hash
from walletguard.bank.models import BankCardAccount
from walletguard.bank.sandbox import CARD_NUMBER_CONTEXT
from walletguard.bootstrap import Container
from walletguard.cli import app as cli_app
from walletguard.incidents.evidence import verify_package
from walletguard.incidents.pdf import cjk_font_file
from walletguard.kit.settings import Settings
from walletguard.messages.models import MessageSync


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # The original product: the thief's phone is trusted the moment the password is typed.
    return make_settings(tmp_path, db_url, profile="vulnerable")


@pytest.fixture
def drained(client: TestClient, container: Container) -> Drained:
    return drain(client, container)


def _blocked_at_bank(container: Container, number: str) -> bool:
    index = container.cipher.blind_index(number, context=CARD_NUMBER_CONTEXT)
    with container.sessions() as db:
        blocked = db.scalar(
            select(BankCardAccount.blocked_at).where(BankCardAccount.number_index == index)
        )
    return blocked is not None


def _case(client: TestClient, drained: Drained, case_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/incidents/{case_id}", headers=drained.victim.auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _reported_case(client: TestClient, drained: Drained) -> str:
    reported = report(client, drained.victim)
    assert reported.status_code == 201, reported.text
    case_id: str = reported.json()["case_id"]
    return case_id


# -- the freeze ----------------------------------------------------------------------------------


def test_report_freezes_payments_cards_sync_and_other_sessions(
    client: TestClient, container: Container, drained: Drained
) -> None:
    victim = drained.victim
    reported = report(client, victim, kind="robbed")
    assert reported.status_code == 201, reported.text
    body = reported.json()
    assert body["frozen_at"] and body["case_id"] and body["reference"].startswith("WG-")
    assert body["payments_frozen"] is True
    assert body["cards_blocked"] == 3
    assert body["sync_disabled"] == 1
    assert body["sessions_revoked"] == 1
    # Every card is blocked here and at the sandbox bank.
    for number in drained.numbers:
        assert _blocked_at_bank(container, number)
    cards = client.get("/api/v1/cards", headers=victim.auth).json()
    assert {c["status"] for c in cards} == {"blocked"}
    # Sync is off on every device.
    with container.sessions() as db:
        rows = db.scalars(select(MessageSync)).all()
    assert rows and all(row.disabled_at is not None for row in rows)
    # The thief's session is dead; the reporting one lives on.
    assert client.get("/api/v1/me", headers=drained.attacker["auth"]).status_code == 401
    assert client.get("/api/v1/me", headers=victim.auth).status_code == 200
    # Payments are refused.
    paid = money_post(
        client,
        "/api/v1/payments",
        {"merchant": "便利店", "amount": "1.00", "payment_password": PIN},
        victim,
    )
    assert_problem(paid, 423, "transactions-closed")
    # Reporting again joins the same case.
    again = report(client, victim)
    assert again.status_code == 200, again.text
    assert again.json()["case_id"] == body["case_id"]
    assert again.json()["new_case"] is False


def test_the_case_shows_the_loss_per_card_and_in_total(
    client: TestClient, drained: Drained
) -> None:
    case = _case(client, drained, _reported_case(client, drained))
    loss = case["loss"]
    by_card = {line["card_last4"]: line["amount"] for line in loss["by_card"]}
    tails = [number[-4:] for number in drained.numbers]
    assert by_card == {tails[0]: "50000.00", tails[1]: "30000.00", tails[2]: "8130.00"}
    assert {line["bank_code"] for line in loss["by_card"]} == {"ICBC", "CCB", "CMB"}
    assert loss["total"] == "88130.00"
    # All three drains are pre-marked: a device first seen minutes before.
    suspected = [m for m in case["movements"] if m["unauthorised"]]
    assert sorted(m["id"] for m in suspected) == sorted(drained.movements)
    assert all("new_device" in m["premark_reasons"] for m in suspected)
    assert all("after_security_change" in m["premark_reasons"] for m in suspected)
    # The timeline tells the story from the audit log, codes shown off the SIM included.
    events = [item["event"] for item in case["timeline"]]
    for event in (
        "security.device_added",
        "security.sync_enabled",
        "messages.synced_read",
        "payment_password.reset",
        "movement.posted",
        "incident.reported",
    ):
        assert event in events, event
    assert case["codes_shown_off_sim"] >= 3
    assert case["holder_name"] == VICTIM_NAME[0] + "*"
    assert case["holder_phone"] == "+86 139****0001"


def test_the_holder_corrects_a_pre_mark_and_the_loss_follows(
    client: TestClient, drained: Drained
) -> None:
    case_id = _reported_case(client, drained)
    smallest = drained.movements[2]
    path = f"/api/v1/incidents/{case_id}/movements/{smallest}"
    mine = client.patch(path, json={"unauthorised": False}, headers=drained.victim.auth)
    assert mine.status_code == 200, mine.text
    assert mine.json()["unauthorised"] is False
    assert mine.json()["marked_by"] == "holder"
    assert _case(client, drained, case_id)["loss"]["total"] == "80000.00"
    back = client.patch(path, json={"unauthorised": None}, headers=drained.victim.auth)
    assert back.json()["unauthorised"] is True
    assert _case(client, drained, case_id)["loss"]["total"] == "88130.00"
    # Only the case's own debits can be marked.
    other = client.patch(
        f"/api/v1/incidents/{case_id}/movements/{drained.card_ids[0]}",
        json={"unauthorised": True},
        headers=drained.victim.auth,
    )
    assert_problem(other, 404, "not-found")


# -- the evidence package ------------------------------------------------------------------------


def _package(client: TestClient, drained: Drained) -> bytes:
    case_id = _reported_case(client, drained)
    response = client.get(f"/api/v1/incidents/{case_id}/evidence.zip", headers=drained.victim.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return response.content


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rezip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_the_evidence_package_verifies_and_names_every_altered_file(
    client: TestClient, drained: Drained, tmp_path: Path
) -> None:
    data = _package(client, drained)
    report_ok = verify_package(data)
    assert report_ok.ok, [str(p) for p in report_ok.problems]
    members = _members(data)
    assert {
        "README.txt",
        "case.json",
        "timeline.json",
        "timeline.csv",
        "movements.json",
        "movements.csv",
        "report.pdf",
        "audit_chain.json",
        "manifest.json",
        "receipt.json",
    } == set(members)
    case = json.loads(members["case.json"])
    assert case["loss"]["total"] == "88130.00"
    chain = json.loads(members["audit_chain.json"])
    assert chain["links_complete"] is True
    assert json.loads(members["receipt.json"])["seq"] == chain["anchor"]["seq"] + 1
    for name, content in members.items():
        tampered = dict(members)
        tampered[name] = _flip(content, len(content) // 2)
        result = verify_package(_rezip(tampered))
        assert not result.ok, name
        assert name in result.altered_files, (name, [str(p) for p in result.problems])
    # A byte changed in the archive itself (the stored data of one member) is named too.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("report.pdf")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = verify_package(_flip(data, start + info.compress_size // 2))
    assert "report.pdf" in raw.altered_files, [str(p) for p in raw.problems]
    # The CLI says the same, offline, with the exit code.
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    good.write_bytes(data)
    tampered = dict(members)
    tampered["movements.csv"] = members["movements.csv"].replace(b"50000.00", b"5000.00")
    bad.write_bytes(_rezip(tampered))
    runner = CliRunner()
    ok = runner.invoke(cli_app, ["evidence", "verify", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "evidence package OK" in ok.output
    broken = runner.invoke(cli_app, ["evidence", "verify", str(bad)])
    assert broken.exit_code == 1
    assert "movements.csv" in broken.output


def _forge(members: dict[str, bytes], chain: dict[str, Any]) -> dict[str, bytes]:
    """A careful forger: rewrites the chain proof, then the manifest and the receipt to match."""
    forged = dict(members)
    forged["audit_chain.json"] = json.dumps(chain, ensure_ascii=False).encode()
    manifest = json.loads(members["manifest.json"])
    digest = __import__("hashlib").sha256(forged["audit_chain.json"]).hexdigest()
    manifest["files"]["audit_chain.json"] = {
        "sha256": digest,
        "bytes": len(forged["audit_chain.json"]),
    }
    forged["manifest.json"] = json.dumps(manifest).encode()
    receipt = json.loads(members["receipt.json"])
    data = json.loads(receipt["data"])
    data["manifest_sha256"] = __import__("hashlib").sha256(forged["manifest.json"]).hexdigest()
    receipt["data"] = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    receipt["hash"] = _rehash(receipt)
    forged["receipt.json"] = json.dumps(receipt, ensure_ascii=False).encode()
    return forged


def _rehash(entry: dict[str, Any]) -> str:
    import uuid
    from datetime import datetime

    return entry_hash(
        seq=entry["seq"],
        at=datetime.fromisoformat(entry["at"]),
        event=entry["event"],
        holder_id=uuid.UUID(entry["holder_id"]) if entry["holder_id"] else None,
        device_id=uuid.UUID(entry["device_id"]) if entry["device_id"] else None,
        ip=entry["ip"],
        data=entry["data"],
        prev_hash=entry["prev_hash"],
    )


def test_a_tampered_chain_link_is_named(client: TestClient, drained: Drained) -> None:
    members = _members(_package(client, drained))
    chain = json.loads(members["audit_chain.json"])
    posted = next(e for e in chain["entries"] if e["event"] == "movement.posted")
    seq = posted["seq"]
    # 1. The amount of a drain edited in the proof: its hash no longer matches.
    edited = json.loads(json.dumps(chain))
    entry = next(e for e in edited["entries"] if e["seq"] == seq)
    entry["data"] = entry["data"].replace("5000000", "500000")
    result = verify_package(_zip_of(_forge(members, edited)))
    assert any(p.file == "audit_chain.json" and p.seq == seq for p in result.problems), [
        str(p) for p in result.problems
    ]
    # 2. The forger recomputes that entry's hash and its link: the next link breaks.
    entry["hash"] = _rehash(entry)
    for link in edited["links"]:
        if link[0] == seq:
            link[2] = entry["hash"]
    result = verify_package(_zip_of(_forge(members, edited)))
    messages = [str(p) for p in result.problems]
    assert any(p.file == "audit_chain.json" and p.seq == seq + 1 for p in result.problems), messages
    assert any(f"#{seq + 1} does not follow entry #{seq}" in m for m in messages), messages


def _zip_of(members: dict[str, bytes]) -> bytes:
    return _rezip(members)


PDFTOTEXT = shutil.which("pdftotext")


def pdf_text(data: bytes, tmp_path: Path) -> str:
    assert PDFTOTEXT is not None
    source = tmp_path / "doc.pdf"
    source.write_bytes(data)
    done = subprocess.run(
        [PDFTOTEXT, "-enc", "UTF-8", str(source), "-"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout.decode("utf-8")


@pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext (poppler-utils) is not installed")
def test_the_pdf_report_reads_in_chinese_with_the_loss_and_card_tails(
    client: TestClient, drained: Drained, tmp_path: Path
) -> None:
    extracted = pdf_text(_members(_package(client, drained))["report.pdf"], tmp_path)
    flat = "".join(extracted.split())
    assert VICTIM_NAME[0] + "*" in flat
    assert VICTIM_NAME not in flat
    assert "88,130.00" in flat
    assert "损失合计" in flat and "Totalloss" in flat
    for number in drained.numbers:
        assert number[-4:] in flat
        assert number not in flat


@pytest.mark.skipif(cjk_font_file() is None, reason="no TrueType CJK font (fonts-wqy-microhei)")
def test_the_pdf_embeds_its_chinese_font_so_any_reader_shows_it(
    client: TestClient, drained: Drained
) -> None:
    report = _members(_package(client, drained))["report.pdf"]
    # An embedded TrueType font program: the glyphs travel with the file.
    assert b"/FontFile2" in report
    assert b"STSong-Light" not in report


# -- "protected": a trusted second device, sync on, then the report -----------------------------


@pytest.fixture
def protected_settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


def test_protected_report_keeps_only_the_reporting_session(
    tmp_path: Path, db_url: str, clock: Any
) -> None:
    from walletguard.app import create_app
    from walletguard.bootstrap import build_container

    built = build_container(make_settings(tmp_path, db_url), clock=clock)
    try:
        with TestClient(create_app(built)) as client:
            victim, _, numbers = victim_with_cards(client, built)
            tablet = login_trusted(client, built, victim)
            step_up(client, built, victim.auth, victim.phone, "enable_sync")
            assert client.post("/api/v1/messages/sync", headers=victim.auth).status_code == 200
            reported = client.post("/api/v1/incidents", headers=tablet["auth"])
            assert reported.status_code == 201, reported.text
            assert reported.json()["sessions_revoked"] == 1
            assert reported.json()["sync_disabled"] == 1
            assert client.get("/api/v1/me", headers=victim.auth).status_code == 401
            assert client.get("/api/v1/me", headers=tablet["auth"]).status_code == 200
            assert all(_blocked_at_bank(built, number) for number in numbers)
            case = client.get(
                f"/api/v1/incidents/{reported.json()['case_id']}", headers=tablet["auth"]
            ).json()
            assert case["loss"]["total"] == "0.00"
    finally:
        built.close()
