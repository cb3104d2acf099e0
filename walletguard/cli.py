"""The ``walletguard`` command line."""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from walletguard.bootstrap import Container, build_container
from walletguard.kit.settings import Settings

app = typer.Typer(
    help="walletguard: a mobile wallet built around the cloud-SMS-sync account takeover.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
keys_app = typer.Typer(help="Field-encryption keys.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")

# soft_wrap: one message is one line, whatever the terminal width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A failure to report as one readable line."""


def _container(settings: Settings | None = None) -> Container:
    container = build_container(settings)
    if container.created_key_file is not None:
        err.print(
            f"Created a new field-encryption key file at {container.created_key_file} "
            "(back it up: without it the personal data in this database cannot be read)."
        )
    return container


def _migrate(container: Container) -> None:
    from walletguard.migrations import upgrade

    upgrade(container.engine)


def _ensure_schema(container: Container) -> None:
    from walletguard.migrations import current_heads

    if current_heads(container.engine):
        return
    if container.settings.is_sqlite:
        _migrate(container)
        return
    raise CliError("the database has no schema yet: run `walletguard migrate` first")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) to the latest version."""
    container = _container()
    _migrate(container)
    out.print(f"Database is up to date: {_safe_url(container.settings.effective_database_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    container = _container()
    _ensure_schema(container)
    container.close()
    uvicorn.run(
        "walletguard.app:server_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


@app.command()
def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver what is due now, then exit.")
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between polls when idle (default WALLETGUARD_ALERT_POLL_SECONDS)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Most deliveries per round.")] = 100,
) -> None:
    """Deliver alerts from the outbox (email, webhook, SMS) until stopped; run as many as you
    like (production: PostgreSQL). A worker killed mid-delivery loses nothing. Every 5 minutes
    it also runs the risk engine's housekeeping (expire holds, trim velocity buckets)."""
    from walletguard.alerts.worker import run_worker_process
    from walletguard.app import periodic_jobs

    container = _container()
    _ensure_schema(container)
    try:
        run_worker_process(
            container,
            once=once,
            interval=interval,
            batch=batch,
            report=lambda line: out.print(line, highlight=False),
            periodic=periodic_jobs(container),
        )
    finally:
        container.close()


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the whole audit chain; name every edited, deleted or reordered entry."""
    from walletguard.audit.service import verify
    from walletguard.kit.db import unit_of_work

    container = _container()
    with unit_of_work(container.sessions) as session:
        report = verify(session)
    if report.ok:
        out.print(f"audit log OK: {report.entries} entries, chain intact up to #{report.head_seq}")
        return
    for problem in report.problems:
        err.print(f"audit log BROKEN at entry {problem.seq} ({problem.kind}): {problem.message}")
    raise typer.Exit(code=1)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new field key active (embedded key file) and re-encrypt every stored value."""
    from walletguard.kit.crypto import add_key_to_file, key_file_path, load_cipher, reencrypt_all
    from walletguard.models import Base

    settings = Settings()
    if settings.field_keys is None:
        kid = add_key_to_file(key_file_path(settings))
        out.print(f"New active key {kid} added to {key_file_path(settings)}")
    container = _container(settings)
    cipher, _ = load_cipher(settings, create=False)
    with container.engine.begin() as conn:
        changed = reencrypt_all(conn, Base.metadata, cipher)
    out.print(f"Re-encrypted {changed} rows under key {cipher.active_key_id}")


@app.command()
def inbox(phone: str) -> None:
    """Sandbox: print the SMS a simulated phone number has received."""
    from walletguard.identity.phone import parse_mobile
    from walletguard.kit.db import unit_of_work
    from walletguard.kit.errors import WalletguardError
    from walletguard.messages.service import PhoneInbox

    container = _container()
    _ensure_schema(container)
    try:
        e164 = parse_mobile(phone)
    except WalletguardError as exc:
        raise CliError(exc.detail("zh-CN") or str(exc)) from exc
    with unit_of_work(container.sessions) as session:
        for message in PhoneInbox(session, container.cipher, container.clock).messages(e164):
            stamp = message.received_at.strftime("%Y-%m-%d %H:%M:%S")
            out.print(f"{stamp}  {message.sender}: {message.body}", highlight=False)


@app.command("otp-check")
def otp_check(
    file: Annotated[
        Path | None,
        typer.Argument(help="Messages, one a line: plain text or JSON with a text field."),
    ] = None,
) -> None:
    """Run the OTP guard's recogniser over messages and print one JSON verdict per message."""
    import json

    from walletguard.messages.otp_guard import recognise_otp

    try:
        raw = file.read_bytes() if file else sys.stdin.buffer.read()
        content = raw.decode("utf-8-sig")
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"cannot read {file or 'standard input'}: not UTF-8 text") from exc
    # Split on newlines only: str.splitlines() would also cut a message at U+2028 or U+0085.
    for line in (raw_line.rstrip("\r") for raw_line in content.split("\n")):
        if not line.strip():
            continue
        body = line
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                body = record["text"]
        match = recognise_otp(body)
        verdict = {
            "text": body,
            "otp": match is not None,
            "code": match.code if match else None,
            "span": list(match.span) if match else None,
            "keyword": match.keyword if match else None,
        }
        typer.echo(json.dumps(verdict, ensure_ascii=False))


DEMO_PHONE = "+8613800138000"
DEMO_NAME = "李明"
DEMO_BIRTHDAY = date(1990, 5, 17)
DEMO_PASSWORD = "Lantern-Orchid-2718"  # noqa: S105 - the documented demo account
DEMO_PIN = "480915"


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the demo server.")] = 8000,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server after setting up.")
    ] = True,
) -> None:
    """Set up the embedded default with a demo holder, print what to try, and start the server."""
    from walletguard.demo import ensure_demo_holder, instructions

    settings = Settings()
    container = _container(settings)
    _migrate(container)
    created = ensure_demo_holder(
        container,
        phone=DEMO_PHONE,
        name=DEMO_NAME,
        birthday=DEMO_BIRTHDAY,
        password=DEMO_PASSWORD,
        pin=DEMO_PIN,
    )
    container.close()
    from walletguard.demo import replay_seed_case

    out.print("The 88,130-yuan case (scenarios/seed-000-sms-sync-drain.yaml), replayed:")
    for line in replay_seed_case():
        out.print(line, highlight=False, markup=False)
    out.print(
        instructions(
            base_url=f"http://127.0.0.1:{port}",
            phone=DEMO_PHONE,
            password=DEMO_PASSWORD,
            pin=DEMO_PIN,
            created=created,
            data_dir=settings.data_dir,
        ),
        highlight=False,
    )
    if serve_after:
        serve(host="127.0.0.1", port=port, workers=1)


risk_app = typer.Typer(help="The risk engine.", no_args_is_help=True)
app.add_typer(risk_app, name="risk")


@risk_app.command("housekeeping")
def risk_housekeeping() -> None:
    """Expire unanswered holds and trim velocity buckets older than any window (`walletguard
    worker` and the embedded server do it every 5 minutes; run it from cron where neither runs)."""
    from walletguard.risk.service import run_housekeeping

    container = _container()
    _ensure_schema(container)
    try:
        expired, trimmed = run_housekeeping(container)
        out.print(f"risk housekeeping: {expired} holds expired, {trimmed} velocity buckets trimmed")
    finally:
        container.close()


ledger_app = typer.Typer(help="The wallet's double-entry ledger.", no_args_is_help=True)
bank_app = typer.Typer(help="Sandbox bank back office.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
app.add_typer(bank_app, name="bank")


@ledger_app.command("check")
def ledger_check() -> None:
    """Reconcile: debits equal credits, every transaction balances, every cached balance and
    hold equals its postings. Exit 1 naming each mismatch."""
    from walletguard.kit.db import unit_of_work
    from walletguard.kit.money import format_yuan
    from walletguard.wallet.ledger import reconcile

    container = _container()
    _ensure_schema(container)
    with unit_of_work(container.sessions) as session:
        report = reconcile(session)
    if report.ok:
        out.print(
            f"ledger OK: {report.transactions} transactions, {report.postings} postings, "
            f"debits = credits = {format_yuan(report.total_debits_fen)} yuan"
        )
        return
    for mismatch in report.mismatches:
        err.print(f"ledger MISMATCH: {mismatch}", highlight=False)
    raise typer.Exit(code=1)


@ledger_app.command("refund")
def ledger_refund(
    movement_id: Annotated[str, typer.Argument(help="The movement to refund.")],
    amount: Annotated[
        str | None, typer.Option(help="Yuan to refund (default: all that is left).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "operator refund",
    operator: Annotated[str, typer.Option(help="Who refunds, for the audit log.")] = "cli",
) -> None:
    """Operator refund: a reversing movement, in part or in full, never beyond the original."""
    import uuid

    from walletguard.kit.db import unit_of_work
    from walletguard.kit.errors import WalletguardError
    from walletguard.kit.i18n import text
    from walletguard.kit.money import InvalidAmount, format_yuan, parse_yuan
    from walletguard.wallet.service import WalletService

    try:
        target = uuid.UUID(movement_id)
        amount_fen = parse_yuan(amount) if amount is not None else None
    except ValueError as exc:
        code = exc.code if isinstance(exc, InvalidAmount) else None
        raise CliError(text(code, "en") if code else "not a movement id") from exc
    container = _container()
    _ensure_schema(container)
    try:
        with unit_of_work(container.sessions) as session:
            refund = WalletService(session, container).refund(
                target, amount_fen, operator=operator, reason=reason
            )
            refund_id, refunded = refund.id, refund.amount_fen
    except WalletguardError as exc:
        raise CliError(exc.detail("en") or exc.slug) from exc
    out.print(f"Refunded {format_yuan(refunded)} yuan of {target}: refund movement {refund_id}")


@bank_app.command("open-card")
def bank_open_card(
    bank: Annotated[str, typer.Option(help="Issuing bank code, e.g. ICBC.")],
    number: Annotated[str, typer.Option(help="Card number (Luhn-valid, BIN of that bank).")],
    phone: Annotated[str, typer.Option(help="Phone number reserved at the bank.")],
    name: Annotated[str, typer.Option(help="The card holder's real name.")],
    balance: Annotated[str, typer.Option(help="Opening balance in yuan.")] = "0.00",
) -> None:
    """Sandbox: issue a card account the wallet can bind and debit."""
    from walletguard.bank.sandbox import SandboxBankError
    from walletguard.bank.service import sandbox_bank
    from walletguard.identity.phone import parse_mobile
    from walletguard.kit.db import unit_of_work
    from walletguard.kit.errors import WalletguardError
    from walletguard.kit.i18n import text
    from walletguard.kit.money import InvalidAmount, format_yuan, parse_yuan
    from walletguard.wallet.bins import last4

    try:
        balance_fen = parse_yuan(balance, allow_zero=True)
        e164 = parse_mobile(phone)
    except InvalidAmount as exc:
        raise CliError(text(exc.code, "en")) from exc
    except WalletguardError as exc:
        raise CliError(exc.detail("en") or exc.slug) from exc
    container = _container()
    _ensure_schema(container)
    try:
        with unit_of_work(container.sessions) as session:
            account = sandbox_bank(session, container).open_card_account(
                number=number,
                holder_name=name,
                reserved_phone_e164=e164,
                balance_fen=balance_fen,
                bank_code=bank,
            )
            bank_code = account.bank_code
    except SandboxBankError as exc:
        raise CliError(str(exc)) from exc
    out.print(
        f"Opened {bank_code} card ending {last4(number)} with {format_yuan(balance_fen)} yuan; "
        "dynamic passwords go to the reserved phone."
    )


@app.command()
def simulate(
    scenario: Annotated[
        Path | None, typer.Argument(help="Scenario file (YAML), see docs/scenarios.md.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="protected or vulnerable (default: the scenario's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ablate: Annotated[
        bool,
        typer.Option(
            "--ablate", help="Re-run with each control off alone, and with each control alone."
        ),
    ] = False,
    evidence_dir: Annotated[
        Path | None,
        typer.Option(help="Save the evidence package of every incident case the run opens here."),
    ] = None,
    population: Annotated[
        int | None,
        typer.Option(
            "--population",
            help="Instead of a scenario: N benign holders mixed with attack campaigns.",
        ),
    ] = None,
    days: Annotated[
        int | None, typer.Option(help="With --population: how many days they live (default 3).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="With --population: the generator's seed (default 0).")
    ] = None,
) -> None:
    """Play an attack scenario (or, with --population, many holders and attack campaigns)
    against a fresh in-process walletguard with a simulated clock."""
    from walletguard.kit.controls import PROFILES
    from walletguard.simulator import report as simulation_report
    from walletguard.simulator.runner import ablate as run_ablation
    from walletguard.simulator.runner import run as run_scenario
    from walletguard.simulator.scenario import ScenarioError, load_scenario

    if profile is not None and profile not in PROFILES:
        raise CliError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if (scenario is None) == (population is None):
        raise CliError("give either a SCENARIO file or --population N, not both or neither")
    if population is not None:
        if ablate or evidence_dir is not None:
            raise CliError("--ablate and --evidence-dir play one scenario, not a population")
        _simulate_population(population, days, seed, profile, as_json)
        return
    if days is not None or seed is not None:
        raise CliError("--days and --seed go with --population")
    assert scenario is not None
    try:
        loaded = load_scenario(scenario)
    except ScenarioError as exc:
        raise CliError(str(exc)) from exc
    if ablate:
        with simulation_report.progress(err, enabled=not as_json) as advance:
            ablation = run_ablation(loaded, profile=profile, progress=advance)
        if as_json:
            out.print_json(data=ablation.as_json())
        else:
            simulation_report.print_ablation(out, ablation)
        return
    with simulation_report.progress(err, enabled=not as_json) as advance:
        result = run_scenario(
            loaded, profile=profile, on_step=lambda s: advance(s.do), evidence_dir=evidence_dir
        )
    if as_json:
        out.print_json(data=result.as_json())
    else:
        simulation_report.print_run(out, result)
    for failure in result.expectations_failed:
        err.print(f"walletguard: expectation failed: {failure}", highlight=False, markup=False)
    if result.expectations_failed:
        raise typer.Exit(code=1)


def _simulate_population(
    holders: int, days: int | None, seed: int | None, profile: str | None, as_json: bool
) -> None:
    """``simulate --population``: one profile, or both side by side."""
    from walletguard.simulator import report as simulation_report
    from walletguard.simulator.population import PopulationSpec, run_population

    try:
        spec = PopulationSpec(holders, 3 if days is None else days, 0 if seed is None else seed)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    profiles = [profile] if profile else ["vulnerable", "protected"]
    with simulation_report.population_progress(err, enabled=not as_json) as advance:
        result = run_population(spec, profiles, on_step=advance)
    if as_json:
        out.print_json(data=result.as_json())
    else:
        simulation_report.print_population(out, result)


evidence_app = typer.Typer(help="Incident evidence packages.", no_args_is_help=True)
app.add_typer(evidence_app, name="evidence")


@evidence_app.command("verify")
def evidence_verify(
    package: Annotated[Path, typer.Argument(help="An evidence package (ZIP) to check offline.")],
) -> None:
    """Check an evidence package offline: every file against its SHA-256 manifest, every audit
    entry's hash and chain link. Names each altered file and broken link; exit 1 if any."""
    from walletguard.incidents.evidence import verify_package

    if not package.is_file():
        raise CliError(f"no such file: {package}")
    report = verify_package(package)
    if report.ok:
        anchor = report.receipt or {}
        out.print(
            f"evidence package OK: case {report.reference}, {report.files} files intact, "
            f"{report.entries} audit entries recomputed, chain unbroken up to receipt "
            f"#{anchor.get('seq')} ({anchor.get('hash')}); compare that entry with the "
            "wallet's audit log to prove where the package came from",
            highlight=False,
        )
        return
    for problem in report.problems:
        err.print(f"evidence package BROKEN: {problem}", highlight=False, markup=False)
    raise typer.Exit(code=1)


@evidence_app.command("export")
def evidence_export(
    case: Annotated[str, typer.Argument(help="The case id or reference (WG-…).")],
    output: Annotated[Path, typer.Option("--out", help="Where to write the ZIP.")],
) -> None:
    """Operator: write a case's evidence package (the export is recorded in the audit log)."""
    from walletguard.incidents.evidence import export_package
    from walletguard.incidents.service import IncidentService
    from walletguard.kit.db import unit_of_work
    from walletguard.kit.errors import WalletguardError

    container = _container()
    _ensure_schema(container)
    try:
        with unit_of_work(container.sessions) as session:
            service = IncidentService(session, container)
            data = export_package(service, service.case_by_id_or_reference(case))
    except WalletguardError as exc:
        raise CliError(exc.detail("en") or exc.slug) from exc
    output.write_bytes(data)
    out.print(f"Wrote {output} ({len(data)} bytes)")


def main() -> None:
    try:
        app()
    except CliError as exc:
        err.print(f"walletguard: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("WALLETGUARD_DEBUG"):
            raise
        err.print(f"walletguard: {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
