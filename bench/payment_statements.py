"""The SQL statements of one ``POST /api/v1/payments``, numbered, with where each comes from.

    .venv/bin/python bench/payment_statements.py [--database-url URL] [--verbose] [--cpu N]
        [--without CONTROLS]

Without ``--database-url`` a fresh PostgreSQL database is created next to
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres`` and dropped on exit; ``sqlite`` uses a
temporary SQLite file. A holder is prepared through the API in process (TestClient), pays twice
to warm every cache and lazily created row, and the third payment is traced: every statement
the session sends (savepoints included), the module and line of walletguard that sent it, and
the total. A statement SQLAlchemy compiled afresh instead of taking from its cache is flagged
(on the third payment every statement should come from the cache). Counting statements is what
this is for; the time of a payment under load is measured by ``bench/bench_payments.py``.

``--cpu N`` then times N more payments one at a time, each beside a ``GET /healthz`` on the
same client, and prints the median CPU of this process for each (the app's threads and the test
client's together) and, on PostgreSQL, the mean CPU of the database's server processes a
payment (a change that moves work from Python into SQL shows there: on this machine both share
the same cores). ``--without risk_engine`` (any controls of ``walletguard.kit.controls``,
comma-separated) times the payment with those controls off, which is what they cost it; every
control is on otherwise, whatever ``WALLETGUARD_DISABLED_CONTROLS`` says. Nothing else runs
in the process and nothing waits on another request, so it moves far less from run to run than
HTTP load does on a shared machine: it is for telling whether a change to the payment path made
it cheaper (run it on both versions, alternately).
"""

from __future__ import annotations

import argparse
import base64
import secrets
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_payments import cpu_seconds_of, fresh_database, proc_stat, without  # noqa: E402
from walletguard.app import create_app  # noqa: E402
from walletguard.bank.service import sandbox_bank  # noqa: E402
from walletguard.bootstrap import build_container  # noqa: E402
from walletguard.kit.db import _PREPARED, unit_of_work  # noqa: E402
from walletguard.kit.settings import Settings  # noqa: E402
from walletguard.migrations import upgrade  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PHONE = "+8613912345678"
PASSWORD = "Bench-Marmot-4471"
PIN = "480915"
CARD = "6222020000000000018"


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/walletguard.db"
        return
    if url is not None:
        yield url
        return
    with fresh_database(make_url(DEFAULT_ADMIN_URL)) as fresh:
        yield fresh


_EXECUTOR = ("execute", "_through_sqlalchemy", "send_before_commit")


def _origin() -> str:
    """The innermost walletguard frame that led to this statement, kit.db's executor left out;
    marked ``+COMMIT`` when it is one that PostgreSQL gets in the same message as COMMIT
    (``walletguard.kit.db.send_before_commit`` while the commit queues are written: with a
    listener on the statements, as here, it is executed on its own instead)."""
    stack = traceback.extract_stack()
    at_commit = any(f.name == "write_all" for f in stack) and any(
        f.name == "send_before_commit" for f in stack
    )
    for frame in reversed(stack):
        path = frame.filename.replace("\\", "/")
        if path.endswith("/walletguard/kit/db.py") and frame.name in _EXECUTOR:
            continue
        if "/walletguard/" in path and "site-packages" not in path:
            where = path.split("/walletguard/", 1)[1]
            return f"{where}:{frame.lineno} {frame.name}" + (" +COMMIT" if at_commit else "")
    return "?"


def _code(client: TestClient, phone: str) -> str:
    import re

    messages = client.get(f"/api/v1/sandbox/phones/{phone}/messages").json()
    match = re.search(r"(?<!\d)(\d{6})(?!\d)", messages[0]["body"])
    assert match is not None
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", help="a database to use as is, or 'sqlite'")
    parser.add_argument("--verbose", action="store_true", help="print each statement's SQL")
    parser.add_argument(
        "--cpu",
        type=int,
        metavar="N",
        help="also time N payments one at a time (median CPU of this process a payment)",
    )
    parser.add_argument(
        "--without",
        default="",
        metavar="CONTROLS",
        help="switch these controls off (comma-separated, e.g. risk_engine): what they cost a "
        "payment; the default is every control on, whatever WALLETGUARD_DISABLED_CONTROLS says",
    )
    args = parser.parse_args()
    off = without(args.without)
    if off:
        print(f"controls switched off: {', '.join(off)}")
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as data:
        container = build_container(_settings(url, Path(data), args.without))
        upgrade(container.engine)
        with paying_holder(container) as pay:
            trace(container, pay, verbose=args.verbose)
            if args.cpu:
                cost = cpu_per_request(pay, args.cpu, container.engine)
                print(
                    f"CPU a payment (median of {args.cpu}, in process, test client included): "
                    f"{cost.payment_ms:.2f} ms; a GET /healthz on the same client: "
                    f"{cost.health_ms:.2f} ms"
                )
                if cost.database_ms is not None:
                    print(
                        f"PostgreSQL's CPU a payment (mean of {args.cpu}): "
                        f"{cost.database_ms:.2f} ms"
                    )
                if cost.wal_bytes is not None:
                    print(f"WAL a payment (mean of {args.cpu}): {cost.wal_bytes:,.0f} bytes")
        container.close()


def trace(container: Any, pay: _Payer, *, verbose: bool) -> None:
    seen = statements_of_one_payment(container, pay)
    sql = [s for s in seen if s[0] not in ("BEGIN", "COMMIT")]
    print(f"{container.engine.dialect.name}: {len(sql)} statements in one POST /api/v1/payments")
    for number, (statement, origin, cache) in enumerate(seen, start=1):
        first = " ".join(statement.split())
        shown = first if verbose else first[:90]
        print(f"{number:3d}  {origin:<60} {shown}")
        if cache and not cache.startswith("cached"):
            # SQLAlchemy compiled it for this execution: a statement it cannot cache (a
            # multi-row VALUES list, say) is compiled again every time, which costs more CPU
            # than the round trip.
            print(f"     ^ NOT FROM SQLALCHEMY'S CACHE: {cache}")


def count_payment_statements(admin_url: str, *, disabled_controls: str = "") -> int:
    """How many SQL statements (BEGIN and COMMIT not counted) one payment sends, traced on a
    fresh PostgreSQL database next to ``admin_url`` (dropped afterwards), with these controls
    switched off (``--without``)."""
    with fresh_database(make_url(admin_url)) as url, tempfile.TemporaryDirectory() as data:
        container = build_container(_settings(url, Path(data), disabled_controls))
        try:
            upgrade(container.engine)
            with paying_holder(container) as pay:
                seen = statements_of_one_payment(container, pay)
        finally:
            container.close()
    return len([s for s in seen if s[0] not in ("BEGIN", "COMMIT")])


def _settings(url: str, data: Path, disabled_controls: str = "") -> Settings:
    return Settings(
        data_dir=data,
        database_url=url,
        # Given, never read from the environment: every control on unless ``--without`` says.
        profile="protected",
        disabled_controls=",".join(without(disabled_controls)),
        field_keys=SecretStr(f'{{"s1": "{_key()}"}}'),
        field_active_key="s1",
        index_key=SecretStr(_key()),
        argon2_time_cost=1,
        argon2_memory_kib=8192,
    )


def statements_of_one_payment(container: Any, pay: _Payer) -> list[tuple[str, str, str]]:
    """(statement, origin, SQLAlchemy's cache status) of the third payment of a holder prepared
    through the API."""
    pay()
    pay()
    seen: list[tuple[str, str, str]] = []

    def before(conn: Any, cursor: Any, statement: str, _params: Any, context: Any, *_: Any) -> None:
        # "cached since …" or "generated in …" (what SQLAlchemy's own echo log prints); a
        # statement kit.db's executor compiled on an earlier payment is sent from there when
        # nothing listens, so its SQLAlchemy cache status does not matter.
        compiled = getattr(getattr(context, "compiled", None), "statement", None)
        if compiled is not None and _PREPARED.get(compiled) is not None:
            cache = "cached: compiled once by kit.db.Core"
        elif hasattr(context, "_get_cache_stats"):
            cache = str(context._get_cache_stats())
        else:
            cache = ""
        seen.append((statement, _origin(), cache))

    def on_begin(conn: Any) -> None:
        seen.append(("BEGIN", _origin(), ""))

    def on_commit(conn: Any) -> None:
        seen.append(("COMMIT", _origin(), ""))

    engine = container.engine
    listeners = [
        ("before_cursor_execute", before),
        ("begin", on_begin),
        ("commit", on_commit),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        pay()
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)
    return seen


class Cost(NamedTuple):
    """What one payment costs, from ``cpu_per_request``."""

    payment_ms: float
    health_ms: float
    database_ms: float | None
    wal_bytes: float | None


def cpu_per_request(pay: _Payer, count: int, engine: Any) -> Cost:
    """Median CPU of this process (every thread: the app's and the test client's) for one
    payment, and for one ``GET /healthz`` on the same client (what the client and the framework
    cost around any request), in ms, over ``count`` of each after a warm-up; and, on
    PostgreSQL, the mean CPU of the database's server processes a payment (Linux /proc, whole
    ticks: a total over the run, divided) and the mean WAL a payment writes (the server's
    insert position before and after: every row and index entry written, the commit's record;
    unlike CPU it does not move with the machine's load, though anything else written to the
    same server in the meantime counts too). Requests run one at a time, nothing else in the
    process: a steadier figure than HTTP load on a shared machine, for comparing two versions
    of the payment path (both sides: work moved into SQL shows in the third figure)."""
    client = pay.client
    for _ in range(10):
        pay()
        client.get("/healthz")
    backends = _backends(engine)
    wal_started = _wal_position(engine)
    database_started = _cpu_seconds(backends)
    payments, health = [], []
    for _ in range(count):
        started = time.process_time()
        pay()
        payments.append(time.process_time() - started)
        started = time.process_time()
        client.get("/healthz")
        health.append(time.process_time() - started)
    database_ms = wal_bytes = None
    if backends:
        database_ms = (_cpu_seconds(backends) - database_started) / count * 1000
    wal_ended = _wal_position(engine)
    if wal_started is not None and wal_ended is not None:
        wal_bytes = (wal_ended - wal_started) / count
    return Cost(
        statistics.median(payments) * 1000, statistics.median(health) * 1000, database_ms, wal_bytes
    )


def _wal_position(engine: Any) -> int | None:
    """PostgreSQL's WAL insert position, in bytes from the start (None on SQLite)."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
        )
        return int(found.scalar_one())


def _backends(engine: Any) -> list[int]:
    """The PostgreSQL server processes connected to this database (the pool's, by then)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
        return [int(pid) for pid in found.scalars()]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc, whole clock ticks)."""
    stats = (proc_stat(Path(f"/proc/{pid}/stat")) for pid in pids)
    return sum(cpu_seconds_of(fields) for fields in stats if fields is not None)


class _Payer:
    """Pays 1.00 yuan from the prepared holder's balance; ``client`` is the test client."""

    def __init__(self, client: TestClient, auth: dict[str, str]) -> None:
        self.client = client
        self.auth = auth

    def __call__(self) -> int:
        response = self.client.post(
            "/api/v1/payments",
            json={"merchant": "便利店01", "amount": "1.00", "payment_password": PIN},
            headers={**self.auth, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 201, response.text
        return response.status_code


@contextmanager
def paying_holder(container: Any) -> Iterator[_Payer]:
    """A holder registered, with a payment password, a bound card and a topped-up balance,
    all through the API in process; yields what pays from that balance."""
    with TestClient(create_app(container)) as client:
        started = client.post("/api/v1/registrations", json={"phone": PHONE}).json()
        done = client.post(
            f"/api/v1/registrations/{started['registration_id']}/complete",
            json={
                "code": _code(client, PHONE),
                "name": "测试",
                "birthday": date(1991, 1, 1).isoformat(),
                "password": PASSWORD,
                "device": {"id": "statements", "label": "bench"},
            },
        ).json()
        auth = {"authorization": f"Bearer {done['session_token']}"}
        client.put(
            "/api/v1/me/payment-password",
            json={"login_password": PASSWORD, "payment_password": PIN},
            headers=auth,
        )
        with unit_of_work(container.sessions) as db:
            sandbox_bank(db, container).open_card_account(
                number=CARD, holder_name="测试", reserved_phone_e164=PHONE, balance_fen=10**7
            )
        # Binding a card is a sensitive action: an SMS step-up first.
        challenge = client.post(
            "/api/v1/step-up/challenges",
            json={"action": "bind_card", "factor": "sms"},
            headers=auth,
        ).json()
        client.post(
            "/api/v1/step-up",
            json={
                "action": "bind_card",
                "factor": "sms",
                "challenge_id": challenge["challenge_id"],
                "code": _code(client, PHONE),
            },
            headers=auth,
        )
        card = client.post(
            "/api/v1/cards", json={"number": CARD, "reserved_phone": PHONE}, headers=auth
        ).json()
        client.post(
            f"/api/v1/cards/{card['card_id']}/verify",
            json={"code": _code(client, PHONE)},
            headers=auth,
        )
        top_up = client.post(
            "/api/v1/top-ups",
            json={"card_id": card["card_id"], "amount": "1000.00", "payment_password": PIN},
            headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
        ).json()
        client.post(
            f"/api/v1/movements/{top_up['movement_id']}/confirm",
            json={"dynamic_password": _code(client, PHONE)},
            headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
        )

        yield _Payer(client, auth)


if __name__ == "__main__":
    main()
