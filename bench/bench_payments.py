"""Payments per second on PostgreSQL, beside a bare endpoint doing one INSERT on the same stack.

    .venv/bin/python bench/bench_payments.py [--admin-url URL] [--workers 2] [--holders 64]
        [--concurrency 32] [--seconds 20] [--merchants 16] [--rounds 3] [--open-rate R]
        [--cheap-argon2] [--without CONTROLS]

What is measured: ``POST /api/v1/payments`` from the wallet balance to a merchant, with the
payment password and an Idempotency-Key — the full authorisation path (session, kill switch,
payment password (keyed-hash verify + attempt counter), idempotency claim, wallet-state lock,
limits, risk decision, ledger posting, alert and outbox, audit chain, commit). The baseline is
``bench/bare_app.py``: one INSERT per request, committed, on FastAPI + SQLAlchemy + psycopg 3.
Both run under uvicorn with the same flags and the same number of worker processes; the load
comes from ``bench/loadgen.py`` in a second process on the same machine (loopback only).

Both servers run side by side (the one not measured idles). ``--rounds`` times: a short
warm-up and a closed-loop run (max throughput) of payments, then the same of the bare endpoint;
the ratio is the median round's (the machine drifts by more between runs minutes apart than a
change moves it). Then, per endpoint, an open-loop run at half the median round's *payment*
throughput (latency from the scheduled send time, so queueing counts). The figure is the
ratio payments/s : bare/s (SPEC section 3: >= 50 %, p99 <= 50 ms at half load, measured 5 s
after the closed loop so that the disk has written out the burst before it). ``--open-rate R``
runs the open loop at R requests/s instead, so that two versions' latencies are compared at the
same load. At the end ``walletguard ledger check`` must reconcile and ``walletguard audit
verify`` find the chain whole.

Every control of the ``protected`` profile is on, whatever ``WALLETGUARD_DISABLED_CONTROLS``
says in the shell. ``--without risk_engine`` (any controls of ``walletguard.kit.controls``,
comma-separated) switches those off in the servers: the ratio then says what they cost a
payment (the header and the ratio line say so: it is not the figure SPEC section 3 measures).

A fresh database ``wg_bench_<random>`` is created next to the admin URL's database and dropped
on exit, even on Ctrl-C. The holders are prepared through the public API (register, payment
password, bind a sandbox card, top up with the bank's dynamic password read from the sandbox
phone inbox) with the server's own settings, so the stored hashes are the ones a payment really
verifies (the payment password is a keyed HMAC-SHA256 since issue #3; the login password
stays Argon2id). ``--cheap-argon2`` (m=8 MiB, t=1) makes the login-password hashing of the
preparation cheaper; it does not change what a payment costs any more.

Last, each endpoint is sent ``--alone`` requests one at a time and the server's CPU per request
is printed for them too (no other request in the way; Linux counts a process's CPU time in clock
ticks of 10 ms, so with fewer than 20 ticks for either endpoint, as ``--alone 3`` gives, the
line says so instead of printing a figure that is mostly rounding), with the number of
statements one payment sends (traced in process on a fresh database by
``bench/payment_statements.py``); and the bare endpoint is run closed-loop once more with that
many statements (``POST /bare/statements``: its INSERT after as many trivial primary-key SELECTs
sent the way a payment sends its statements (``walletguard.kit.db.core``), nothing else), whose
share of the bare endpoint is the most a payment sending that many statements could reach on
this stack even if all its other work were free (``bench/statement_floor.py`` draws that curve).
That share, and the next one, are of a closed loop of the plain bare endpoint run just before
(by requests a second, and by CPU a request): the machine's speed drifts over minutes, and
against the median round's bare figure, minutes earlier, the writes' share came out anywhere
between 58 % and 138 % in the runs of one day.
Only the CPU of that run is a figure: its latencies are those of one loopback connection used
back to back, which on this machine wait some 40 ms a request for nothing the server does.

Then, with every control on, the bare endpoint writes closed-loop what a payment must write and
nothing else (``POST /bare/spec-writes``): the rows of SPEC section 3's parts (the risk
decision, the ledger posting, the audit entries, the alert and its outbox rows) and the
idempotency key, copied from the latest payment (fresh ids and times) and written from the
prepared holders' wallets to the merchants' accounts in one prepared statement, then the audit
chain with COMMIT, as walletguard sends it. No authentication, payment password, reads, risk
rules or texts: its share of the bare endpoint, and its CPU a request beside the payment's, are
the most a payment writing those rows could reach on this stack and what all its other work
may cost at most for the 50 %. It runs last because its payments count towards the holders'
spending today, and its movements are in the ledger check.

During the payments' closed loop, ``pg_stat_activity`` is sampled every 50 ms and the share
of samples of the server's connections in a transaction that were waiting for a lock is
printed, with the statements they waited in: where payments queue on rows that every writer
touches (the audit head, a merchant's account, a busy velocity bucket), which no CPU figure
shows.

Beside each closed-loop line the CPU time per request is printed (from /proc): the server
processes', PostgreSQL's (its connections to the benchmark's database and its background
processes) and the whole machine's (the load generator, the kernel and anything else running
included). The closed loop keeps this machine's cores busy, so the ratio of the two endpoints'
throughput is about the inverse of their CPU a request on the whole machine, printed for the
median round: where a payment's CPU goes (Python or PostgreSQL) is what a change can win. These
move less than req/s when other work shares the machine, whose busy share is sampled before
and after the runs and printed too, but on a shared virtual machine they still moved by some
20 % between runs of the same code; to compare two versions of the payment path,
``bench/payment_statements.py --cpu 300`` (in process, one payment at a time, run alternately
on both) is the steadier figure.

Each server runs as ``walletguard serve`` runs it (``walletguard.app:server_app``: its start-up
heap frozen, ``walletguard.kit.heap``; the bare app freezes its own the same way), with
``bench/gc_watch`` on its ``PYTHONPATH``, whose ``sitecustomize`` logs every full garbage
collection of its processes: the collections that fell in each server's runs are printed, with
those of the payments' open loop and when they ended, since the process answers nothing while
one runs. Each open loop also prints its requests over 50 ms and when they were due (a stall
shows as one burst, and a burst without a collection in it has another cause), and the shares
of the machine's CPU time spent waiting on the disk and taken by the hypervisor for other guests
during it. During the payments' open loop ``pg_stat_activity`` is sampled every 20 ms, and what
their connections in a transaction were doing while the requests over 50 ms were in flight is
printed beside the rest of the run: the server's Python (``client``), PostgreSQL at work, or
the wait it names (a row lock, the WAL's fsync, ...).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parent.parent
GC_WATCH = REPO / "bench" / "gc_watch"  # its sitecustomize logs a process's full collections
# This checkout's walletguard, not whichever one is installed: the servers (started in REPO)
# run it, so the migrations and the checks here must be the same (a worktree, a clean clone).
sys.path.insert(0, str(REPO))

from walletguard.bank.service import sandbox_bank  # noqa: E402
from walletguard.bootstrap import Container, build_container  # noqa: E402
from walletguard.kit.controls import controls_for  # noqa: E402
from walletguard.kit.db import unit_of_work  # noqa: E402
from walletguard.kit.heap import freeze_long_lived  # noqa: E402
from walletguard.kit.settings import Settings  # noqa: E402
from walletguard.migrations import upgrade  # noqa: E402
from walletguard.wallet.ledger import HOLDER, MERCHANT, merchant_code  # noqa: E402
from walletguard.wallet.models import LedgerAccount, LedgerTransaction  # noqa: E402

_T = TypeVar("_T")

LOADGEN = REPO / "bench" / "loadgen.py"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

PASSWORD = "Bench-Marmot-4471"
PIN = "480915"
NAME = "测试"
BIRTHDAY = "1991-01-01"
TOP_UP = "10000.00"
CARD_BALANCE_FEN = 2_000_000
PAYMENT_AMOUNT = "1.00"
# Seconds between a closed-loop run and the open-loop run after it (see open_loop).
SETTLE_S = 5.0
_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


def _b64_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def _luhn_card(serial: int, prefix: str = "622202", length: int = 19) -> str:
    """A Luhn-valid ICBC card number (the BIN table knows 622202)."""
    body = prefix + str(serial).rjust(length - len(prefix) - 1, "0")
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # doubled: the check digit will sit to its right
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return body + str((10 - total % 10) % 10)


# -- processes ---------------------------------------------------------------------------------


class Children:
    """Every process this benchmark starts, each in its own process group, ended on exit."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, env=env, cwd=REPO, start_new_session=True, **kwargs)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            # The group is the uvicorn master and the workers it forked: ours, by id.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)


@dataclass(frozen=True)
class Server:
    port: int
    pid: int  # the uvicorn master, leader of the process group its workers share

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the server's group (Linux /proc)."""
        return processes_cpu_seconds(lambda _stat, fields: int(fields[2]) == self.pid)


def processes_cpu_seconds(keep: Callable[[Path, list[str]], bool]) -> float:
    """User + system CPU time of the live processes that ``keep`` (given the path of one's
    ``/proc/<pid>/stat`` and its ``proc_stat`` fields) keeps; one that ends while it is read,
    or whose files cannot be read, is left out."""
    total = 0.0
    for stat, fields in live_processes():
        with suppress(OSError, ValueError, IndexError):
            if keep(stat, fields):
                total += cpu_seconds_of(fields)
    return total


def live_processes() -> Iterator[tuple[Path, list[str]]]:
    """Each live process's ``/proc/<pid>/stat`` path and its ``proc_stat`` fields; one that
    ends while it is read is left out."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = proc_stat(stat)
        if fields is not None:
            yield stat, fields


def proc_stat(path: Path) -> list[str] | None:
    """The fields of a ``/proc/<pid>/stat`` after the parenthesised command (state ppid pgrp
    ... utime stime ...), or None once the process is gone."""
    with suppress(OSError):
        return path.read_text().rpartition(")")[2].split()
    return None


CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")  # /proc's unit of a process's CPU time
CLOCK_TICK_MS = 1000 / CLOCK_TICKS_PER_S
MIN_TICKS = 20  # fewer, and a figure of CPU per request is mostly the rounding to whole ticks


def cpu_ticks(result: LoadResult) -> int:
    """The server's CPU time over ``result``'s requests, in /proc's clock ticks."""
    return round((result.server_cpu_ms or 0.0) * result.requests / CLOCK_TICK_MS)


def cpu_seconds_of(fields: list[str]) -> float:
    """User + system CPU time in a process's ``proc_stat`` fields."""
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


@contextmanager
def server(
    children: Children,
    app: list[str],
    env: dict[str, str],
    workers: int,
    gc_log: Path | None = None,
) -> Iterator[Server]:
    """uvicorn on 127.0.0.1 with ``workers`` processes, once it answers; with ``gc_log``, every
    full garbage collection of its processes is written into that folder (``bench/gc_watch``)."""
    port = _free_port()
    if gc_log is not None:
        gc_log.mkdir(parents=True, exist_ok=True)
        path = os.pathsep.join(filter(None, [str(GC_WATCH), env.get("PYTHONPATH")]))
        env = {**env, "PYTHONPATH": path, "WALLETGUARD_BENCH_GC_LOG": str(gc_log)}
    process = children.start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            *app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env,
    )
    try:
        _wait_until_up(process, port)
        yield Server(port, process.pid)
    finally:
        children.stop(process)


def _wait_until_up(process: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        if healthz_status(port, timeout=2) is not None:
            return
        time.sleep(0.2)
    raise SystemExit(f"the server on port {port} did not answer within {timeout:.0f} s")


def healthz_status(port: int, *, timeout: float) -> int | None:
    """The status ``GET /healthz`` gets from the server on ``port``, or None if none answers."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status
    except (OSError, http.client.HTTPException):
        return None


def database_cpu_seconds(database: str) -> float:
    """User + system CPU time of PostgreSQL's live processes on this machine that serve
    ``database`` (the connections to it; this benchmark's sampler of ``pg_stat_activity``
    among them during the payments' closed loop) or the whole server (its background
    processes: WAL writer, checkpointer, ...), from Linux /proc; connections to other
    databases are left out. A connection closed during a run takes its CPU with it: the pools
    here keep theirs open."""

    def serves(stat: Path, _fields: list[str]) -> bool:
        if not stat.read_text().partition("(")[2].startswith("postgres)"):
            return False
        title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        # A connection's title names its user, database and client: "host(port)" or
        # "[local]"; a background process's does not.
        client = "(" in title or "[local]" in title
        return not client or f" {database} " in title

    return processes_cpu_seconds(serves)


def _cpu_times() -> list[int]:
    """The first line of /proc/stat: the whole machine's CPU time in each state, in ticks
    (user, nice, system, idle, iowait, ...)."""
    with open("/proc/stat", encoding="ascii") as handle:
        return [int(v) for v in handle.readline().split()[1:]]


def machine_cpu_seconds() -> float:
    """CPU time every process of the machine has used (all but idle and iowait)."""
    values = _cpu_times()
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def machine_busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (/proc/stat): load this benchmark did not make
    when sampled while it is idle, which skews every figure on a shared machine."""

    def sample() -> tuple[int, int]:
        values = _cpu_times()
        return values[3] + values[4], sum(values)  # idle + iowait, all

    idle_before, total_before = sample()
    time.sleep(seconds)
    idle_after, total_after = sample()
    return 1 - (idle_after - idle_before) / max(1, total_after - total_before)


# -- the database ------------------------------------------------------------------------------


@contextmanager
def fresh_database(admin_url: URL) -> Iterator[str]:
    name = f"wg_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- preparing holders through the API -----------------------------------------------------------


class Api:
    """A tiny JSON client for the walletguard API on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        key: str | None = None,
        expect: int = 200,
    ) -> Any:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if key:
            headers["Idempotency-Key"] = key
        payload = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        if response.status != expect:
            raise SystemExit(f"{method} {path}: {response.status} {raw[:300]!r}")
        return json.loads(raw) if raw else None

    def latest_code(self, phone: str) -> str:
        messages = self.call("GET", f"/api/v1/sandbox/phones/{phone}/messages")
        match = _CODE.search(messages[0]["body"])
        if match is None:
            raise SystemExit(f"no code in the latest SMS to {phone}")
        return match.group(1)

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class BenchHolder:
    phone: str
    token: str


def prepare_holder(port: int, index: int, open_card: Callable[[str, str], None]) -> BenchHolder:
    """Register, set the payment password, bind a sandbox card and top the wallet up."""
    phone = f"+86139{index:08d}"
    api = Api(port)
    try:
        started = api.call("POST", "/api/v1/registrations", {"phone": phone}, expect=202)
        done = api.call(
            "POST",
            f"/api/v1/registrations/{started['registration_id']}/complete",
            {
                "code": api.latest_code(phone),
                "name": NAME,
                "birthday": BIRTHDAY,
                "password": PASSWORD,
                "device": {"id": f"bench-{index}", "label": "bench"},
            },
            expect=201,
        )
        token = done["session_token"]
        api.call(
            "PUT",
            "/api/v1/me/payment-password",
            {"login_password": PASSWORD, "payment_password": PIN},
            token=token,
            expect=204,
        )
        number = _luhn_card(index + 1)
        open_card(number, phone)
        # Binding a card is a sensitive action: an SMS step-up first (nothing stronger enrolled).
        challenge = api.call(
            "POST",
            "/api/v1/step-up/challenges",
            {"action": "bind_card", "factor": "sms"},
            token=token,
            expect=201,
        )
        api.call(
            "POST",
            "/api/v1/step-up",
            {
                "action": "bind_card",
                "factor": "sms",
                "challenge_id": challenge["challenge_id"],
                "code": api.latest_code(phone),
            },
            token=token,
            expect=201,
        )
        card = api.call(
            "POST",
            "/api/v1/cards",
            {"number": number, "reserved_phone": phone},
            token=token,
            expect=202,
        )
        api.call(
            "POST",
            f"/api/v1/cards/{card['card_id']}/verify",
            {"code": api.latest_code(phone)},
            token=token,
        )
        top_up = api.call(
            "POST",
            "/api/v1/top-ups",
            {"card_id": card["card_id"], "amount": TOP_UP, "payment_password": PIN},
            token=token,
            key=str(uuid.uuid4()),
            expect=202,
        )
        api.call(
            "POST",
            f"/api/v1/movements/{top_up['movement_id']}/confirm",
            {"dynamic_password": api.latest_code(phone)},
            token=token,
            key=str(uuid.uuid4()),
        )
        return BenchHolder(phone=phone, token=token)
    finally:
        api.close()


def prepare_holders(container: Container, port: int, count: int, workers: int) -> list[BenchHolder]:
    """``count`` holders prepared through the API of the server on ``port`` (``prepare_holder``),
    a sandbox bank card account opened in ``container``'s database for each."""

    def open_card(number: str, phone: str) -> None:
        with unit_of_work(container.sessions) as db:
            sandbox_bank(db, container).open_card_account(
                number=number,
                holder_name=NAME,
                reserved_phone_e164=phone,
                balance_fen=CARD_BALANCE_FEN,
            )

    # The first holder alone: on an empty database the audit chain's head row does not exist
    # yet, and two first entries written at once collide on it.
    holders = [prepare_holder(port, 0, open_card)]
    with ThreadPoolExecutor(max_workers=2 * workers) as pool:
        holders += pool.map(lambda i: prepare_holder(port, i, open_card), range(1, count))
    return holders


# -- load ----------------------------------------------------------------------------------------


def payment_requests(holders: list[BenchHolder], count: int, merchants: int) -> list[str]:
    lines = []
    for i in range(count):
        holder = holders[i % len(holders)]
        lines.append(
            json.dumps(
                {
                    "method": "POST",
                    "path": "/api/v1/payments",
                    "headers": {
                        "authorization": f"Bearer {holder.token}",
                        "Idempotency-Key": str(uuid.uuid4()),
                    },
                    "json": {
                        "merchant": f"便利店{i % merchants:02d}",
                        "amount": PAYMENT_AMOUNT,
                        "payment_password": PIN,
                    },
                },
                ensure_ascii=False,
            )
        )
    return lines


def bare_requests(count: int, merchants: int) -> list[str]:
    return [
        json.dumps(
            {
                "method": "POST",
                "path": "/bare/payments",
                "json": {"payee": f"便利店{i % merchants:02d}", "amount": PAYMENT_AMOUNT},
            },
            ensure_ascii=False,
        )
        for i in range(count)
    ]


def statement_requests(statements: int, count: int, merchants: int, via: str = "core") -> list[str]:
    """``bench/bare_app.py``'s bare INSERT after ``statements - 1`` primary-key SELECTs, sent
    ``via`` walletguard's executor (``core``, as a payment's are) or SQLAlchemy's
    (``connection``)."""
    return [
        json.dumps(
            {
                "method": "POST",
                "path": "/bare/statements",
                "json": {
                    "payee": f"便利店{i % merchants:02d}",
                    "amount": PAYMENT_AMOUNT,
                    "reads": statements - 1,
                    "via": via,
                },
            },
            ensure_ascii=False,
        )
        for i in range(count)
    ]


def spec_writes_requests(
    wallets: list[tuple[str, str]], merchants: list[tuple[str, str]], count: int
) -> list[str]:
    """``bench/bare_app.py``'s ``POST /bare/spec-writes``: copies of a payment's essential rows,
    from each prepared holder's wallet (holder id, account id) to the merchants' accounts
    (payee, account id), in the payments' order."""
    lines = []
    for i in range(count):
        holder_id, wallet_id = wallets[i % len(wallets)]
        payee, merchant_id = merchants[i % len(merchants)]
        lines.append(
            json.dumps(
                {
                    "method": "POST",
                    "path": "/bare/spec-writes",
                    "json": {
                        "payee": payee,
                        "amount": PAYMENT_AMOUNT,
                        "holder_id": holder_id,
                        "wallet_account_id": wallet_id,
                        "merchant_account_id": merchant_id,
                    },
                },
                ensure_ascii=False,
            )
        )
    return lines


def bare_app_env(database_url: str) -> dict[str, str]:
    """The environment ``bench/bare_app.py`` runs in, its table created (and emptied) first."""
    env = {**os.environ, "WALLETGUARD_DATABASE_URL": database_url}
    subprocess.run(
        [sys.executable, "-c", "from bench.bare_app import create_table; create_table()"],
        env=env,
        cwd=REPO,
        check=True,
    )
    return env


@dataclass
class LoadResult:
    requests: int
    errors: int
    statuses: dict[str, int]
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms: float | None = None  # server CPU time per request, all workers
    # Closed loop only: PostgreSQL's CPU, and the whole machine's (load generator, kernel and
    # anything else running included), per request.
    database_cpu_ms: float | None = None
    machine_cpu_ms: float | None = None
    # The requests over 50 ms: [when due, s after the load generator's start; latency, ms].
    slow: list[list[float]] = field(default_factory=list)
    slow_count: int = 0
    # Open loop only: shares of the machine's CPU time waiting on the disk, and taken by the
    # hypervisor for other guests (a shared virtual machine), during the run.
    iowait_share: float | None = None
    steal_share: float | None = None
    started_at: float | None = None  # open loop only: unix time the load generator was started


def run_load(
    children: Children,
    port: int,
    lines: list[str],
    workdir: Path,
    *,
    concurrency: int,
    rate: float = 0.0,
) -> LoadResult:
    requests_file = workdir / f"requests-{uuid.uuid4().hex[:8]}.jsonl"
    requests_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [
        sys.executable,
        str(LOADGEN),
        "--url",
        f"http://127.0.0.1:{port}",
        "--requests-file",
        str(requests_file),
        "--concurrency",
        str(concurrency),
    ]
    if rate:
        args += ["--rate", f"{rate:.3f}"]
    process = children.start(args, os.environ.copy(), stdout=subprocess.PIPE)
    out, _ = process.communicate()
    children.running.remove(process)
    requests_file.unlink()
    if process.returncode != 0:
        raise SystemExit(f"loadgen failed with code {process.returncode}")
    return LoadResult(**json.loads(out))


def closed_loop(
    children: Children,
    target: Server,
    make_lines: Callable[[int], list[str]],
    workdir: Path,
    *,
    seconds: float,
    concurrency: int,
    warmup: int,
    database: str,
) -> tuple[LoadResult, LoadResult]:
    """A warm-up, which also estimates the rate, then a closed-loop run of about ``seconds``;
    its CPU a request: the server's, PostgreSQL's for ``database`` and the whole machine's."""
    probe = run_load(children, target.port, make_lines(warmup), workdir, concurrency=concurrency)
    lines = make_lines(max(warmup, int(probe.rps * seconds)))
    cpu_before = target.cpu_seconds()
    database_before = database_cpu_seconds(database)
    machine_before = machine_cpu_seconds()
    result = run_load(children, target.port, lines, workdir, concurrency=concurrency)
    result.server_cpu_ms = (target.cpu_seconds() - cpu_before) * 1000 / result.requests
    database_cpu = database_cpu_seconds(database) - database_before
    result.database_cpu_ms = database_cpu * 1000 / result.requests
    result.machine_cpu_ms = (machine_cpu_seconds() - machine_before) * 1000 / result.requests
    return probe, result


_ACTIVITY = text(
    "SELECT state, wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 60)"
    " FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
    " AND state IN ('active', 'idle in transaction')"
)


@contextmanager
def connection_states(
    database_url: str,
    every_s: float = 0.05,
    *,
    timeline: list[tuple[float, str]] | None = None,
) -> Iterator[Counter[str]]:
    """What the server's connections to the database are doing, sampled from
    ``pg_stat_activity`` every ``every_s`` while the block runs: each sample of a connection in
    a transaction counted as ``lock: <statement>`` (waiting for a row or transaction lock another
    holds), ``running`` (PostgreSQL at work) or ``client`` (idle in transaction: the server's
    Python has the turn). Where payments queue on rows every writer touches shows as locks.

    With ``timeline``, each sample is also appended to it as (unix time, what the connection
    was doing): ``client``, ``running``, or the wait PostgreSQL names (``Lock:transactionid``,
    ``IO:WALSync``, ``LWLock:WALWrite``, ...), so that a stall can be matched with what the
    connections waited on while it lasted (``_waits_lines``)."""
    url = make_url(database_url)
    found: Counter[str] = Counter()
    stop = threading.Event()
    engine = create_engine(url, poolclass=NullPool)

    def sample() -> None:
        with engine.connect() as conn:
            while not stop.wait(every_s):
                at = time.time()
                rows = conn.execute(_ACTIVITY, {"db": url.database})
                for state, wait_type, wait, statement in rows:
                    doing = "running" if state == "active" else "client"
                    found[f"lock: {statement}" if wait_type == "Lock" else doing] += 1
                    if timeline is not None:
                        # An idle-in-transaction connection waits for its client (ClientRead).
                        waiting = wait_type is not None and state == "active"
                        timeline.append((at, f"{wait_type}:{wait}" if waiting else doing))
                conn.rollback()

    thread = threading.Thread(target=sample, name="pg_stat_activity", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(timeout=5)
        engine.dispose()


def _states_lines(found: Counter[str], top: int = 4) -> list[str]:
    total = sum(found.values())
    if not total:
        return []
    locks = sum(n for key, n in found.items() if key.startswith("lock: "))
    lines = [
        f"  of {total} samples: waiting for a lock {locks / total:.0%}, PostgreSQL running "
        f"{found['running'] / total:.0%}, the server's Python (idle in transaction) "
        f"{found['client'] / total:.0%}"
    ]
    waits = [(key, n) for key, n in found.most_common() if key.startswith("lock: ")]
    lines += [f"  {n / total:4.0%} {key}" for key, n in waits[:top]]
    return lines


def one_at_a_time(
    children: Children,
    target: Server,
    make_lines: Callable[[int], list[str]],
    workdir: Path,
    *,
    count: int,
) -> LoadResult:
    """``count`` requests on one connection, each sent when the last is answered: what a
    request costs the server when it has the machine to itself (no other request's threads,
    connections and caches in its way)."""
    cpu_before = target.cpu_seconds()
    result = run_load(children, target.port, make_lines(count), workdir, concurrency=1)
    result.server_cpu_ms = (target.cpu_seconds() - cpu_before) * 1000 / result.requests
    return result


def open_loop(
    children: Children,
    target: Server,
    make_lines: Callable[[int], list[str]],
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    concurrency: int,
) -> LoadResult:
    # It follows a closed loop that kept the disk busy: on this machine the first COMMITs after
    # one waited 100-170 ms on the WAL fsync, every other request queued behind them on the
    # audit head, and that half second decided the p99 of the whole run. Half load is measured
    # once the burst before it has been written out.
    time.sleep(SETTLE_S)
    lines = make_lines(max(50, int(rate * seconds)))
    started_at, before = time.time(), _cpu_times()
    result = run_load(children, target.port, lines, workdir, concurrency=concurrency, rate=rate)
    after = _cpu_times()
    result.started_at = started_at
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = max(1, sum(spent))
    # /proc/stat's columns: user nice system idle iowait irq softirq steal ...
    result.iowait_share, result.steal_share = spent[4] / total, spent[7] / total
    return result


def without(names: str) -> list[str]:
    """The controls named in ``--without`` (comma-separated), as the servers' setting reads them;
    an unknown name ends the run with one line saying so."""
    off = [name.strip() for name in names.split(",") if name.strip()]
    try:
        controls_for("protected", off)
    except ValueError as exc:
        raise SystemExit(f"--without: {exc}") from None
    return off


# -- report --------------------------------------------------------------------------------------


def _beside(run: LoadResult, bare: LoadResult) -> str:
    """``run``'s share of the bare endpoint's run made just before it, by requests a second and
    by CPU a request on the whole machine."""
    by_cpu = (
        f"{bare.machine_cpu_ms / run.machine_cpu_ms:6.1%}"
        if bare.machine_cpu_ms and run.machine_cpu_ms
        else "  n/a"
    )
    return (
        f"{run.rps / bare.rps:6.1%} of the bare endpoint just before it ({bare.rps:.1f} req/s), "
        f"by CPU a request {by_cpu}"
    )


def _line(label: str, result: LoadResult) -> str:
    cpu = f", server CPU {result.server_cpu_ms:.1f} ms/req" if result.server_cpu_ms else ""
    if result.database_cpu_ms is not None and result.machine_cpu_ms is not None:
        cpu += (
            f", PostgreSQL {result.database_cpu_ms:.1f}, whole machine {result.machine_cpu_ms:.1f}"
        )
    errors = f"  ERRORS {result.errors} {result.statuses}" if result.errors else ""
    return (
        f"  {label:<26} {result.rps:7.1f} req/s  p50 {result.p50_ms:7.1f}  "
        f"p95 {result.p95_ms:7.1f}  p99 {result.p99_ms:7.1f} ms  "
        f"({result.requests} req in {result.seconds:.1f} s{cpu}){errors}"
    )


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum`` (a count of 0 workers,
    rounds or requests would end the run in a division by zero after minutes of work)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {number}")
        return number

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_admin_url_argument(parser)
    parser.add_argument("--workers", type=at_least(1), default=2, help="uvicorn worker processes")
    parser.add_argument("--holders", type=at_least(1), default=64)
    parser.add_argument("--merchants", type=at_least(1), default=16)
    parser.add_argument("--concurrency", type=at_least(1), default=32, help="loadgen connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument(
        "--open-rate",
        type=float,
        default=0.0,
        help="open-loop requests/s (default: half the measured payment throughput); a fixed "
        "rate compares two versions' latency at the same load",
    )
    parser.add_argument("--warmup", type=at_least(0), default=200, help="requests before each run")
    parser.add_argument(
        "--rounds",
        type=at_least(1),
        default=3,
        help="closed loops of payments and of the bare endpoint, alternated; the ratio is the "
        "median round's",
    )
    parser.add_argument(
        "--alone", type=at_least(1), default=200, help="requests sent one at a time, each endpoint"
    )
    parser.add_argument(
        "--cheap-argon2",
        action="store_true",
        help="Argon2id m=8 MiB, t=1 for the login passwords (a faster preparation)",
    )
    parser.add_argument(
        "--without",
        default="",
        metavar="CONTROLS",
        help="switch these controls off in the servers (comma-separated, e.g. risk_engine; "
        "walletguard.kit.controls): what they cost a payment. Not the payment SPEC section 3 "
        "measures; the default is every control on, whatever WALLETGUARD_DISABLED_CONTROLS says",
    )
    args = parser.parse_args()
    without(args.without)  # an unknown control ends the run before anything starts
    on_fresh_database(args.admin_url, "payments", lambda *on: run(args, *on))


def add_admin_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--admin-url``: where ``on_fresh_database`` makes the run's database."""
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("WALLETGUARD_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL URL with CREATE DATABASE rights (env WALLETGUARD_BENCH_ADMIN_URL)",
    )


def on_fresh_database(
    admin_url_text: str, name: str, body: Callable[[Children, Path, str], _T]
) -> _T:
    """``body(children, workdir, database_url)`` on a fresh database next to ``admin_url_text``
    (PostgreSQL on the loopback address, else the run ends before anything starts), with a
    scratch folder and the processes it starts, all three gone however it ends."""
    admin_url = make_url(admin_url_text)
    if not admin_url.drivername.startswith("postgresql"):
        raise SystemExit("--admin-url must be a PostgreSQL URL")
    if admin_url.host not in LOOPBACK:
        raise SystemExit("this benchmark only talks to a database on the loopback address")

    # Ctrl-C (even when started in the background, where it is inherited as ignored) and
    # SIGTERM end the run through the finally blocks below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix=f"wg-bench-{name}-"))
    try:
        with fresh_database(admin_url) as database_url:
            return body(children, workdir, database_url)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers and dropping the database", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def server_env(
    database_url: str,
    workdir: Path,
    *,
    cheap_argon2: bool,
    disabled: str = "",
    extra: dict[str, str] | None = None,
) -> tuple[dict[str, str], Settings]:
    """The environment a benchmark's walletguard servers (and its CLI checks) run with, fresh
    keys and the sandbox bank, and exactly the settings they read from it. ``disabled``: the
    controls switched off (``without``); ``extra``: more variables, set last."""
    env = {
        **os.environ,
        "WALLETGUARD_DATABASE_URL": database_url,
        "WALLETGUARD_DATA_DIR": str(workdir / "data"),
        "WALLETGUARD_FIELD_KEYS": json.dumps({"b1": _b64_key()}),
        "WALLETGUARD_FIELD_ACTIVE_KEY": "b1",
        "WALLETGUARD_INDEX_KEY": _b64_key(),
        "WALLETGUARD_SANDBOX": "true",
        "WALLETGUARD_PROFILE": "protected",
        # Set here, never inherited: a variable left in the shell must not make the measured
        # payment one with fewer controls.
        "WALLETGUARD_DISABLED_CONTROLS": ",".join(without(disabled)),
    }
    if cheap_argon2:
        env |= {"WALLETGUARD_ARGON2_TIME_COST": "1", "WALLETGUARD_ARGON2_MEMORY_KIB": "8192"}
    env |= extra or {}
    prefix = "WALLETGUARD_"
    settings = Settings.model_validate(
        {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    )
    return env, settings


def run(args: argparse.Namespace, children: Children, workdir: Path, database_url: str) -> None:
    env, settings = server_env(
        database_url, workdir, cheap_argon2=args.cheap_argon2, disabled=args.without
    )
    container = build_container(settings)
    upgrade(container.engine)
    _progress("counting the statements of one payment")
    from bench.payment_statements import count_payment_statements

    statements = count_payment_statements(args.admin_url, disabled_controls=args.without)
    busy_before = machine_busy_share()
    print(
        f"PostgreSQL {_server_version(container.engine)}; {os.cpu_count()} CPUs; "
        f"uvicorn --workers {args.workers}; loadgen --concurrency {args.concurrency}; "
        f"{args.holders} holders, {args.merchants} merchants; runs of ~{args.seconds:.0f} s"
    )
    print(
        "payment password: keyed HMAC-SHA256; login password (preparation only): Argon2id "
        f"m={settings.argon2_memory_kib} KiB, t={settings.argon2_time_cost}, "
        f"p={settings.argon2_parallelism}" + ("   << --cheap-argon2" if args.cheap_argon2 else "")
    )
    off = without(args.without)
    if off:
        print(
            f"controls switched off: {', '.join(off)}   << --without: what they cost a payment, "
            "not the payment SPEC section 3 measures"
        )

    app = ["walletguard.app:server_app", "--factory"]
    bare_env = bare_app_env(database_url)
    pay_gc, bare_gc = workdir / "gc-payments", workdir / "gc-bare"
    with (
        server(children, app, env, args.workers, pay_gc) as target,
        server(children, ["bench.bare_app:app"], bare_env, args.workers, bare_gc) as bare_target,
    ):
        _progress(f"preparing {args.holders} holders through the API")
        started = time.perf_counter()
        holders = prepare_holders(container, target.port, args.holders, args.workers)
        print(
            f"prepared {len(holders)} holders through the API in "
            f"{time.perf_counter() - started:.1f} s (balance {TOP_UP} yuan each)"
        )
        # This process (its container, walletguard's imports, the holders) out of its own full
        # collections, as the servers' are: one took 170 ms of a core during the measured runs,
        # a core the servers share, while it sampled pg_stat_activity beside the payments.
        freeze_long_lived()

        def pay_lines(count: int) -> list[str]:
            return payment_requests(holders, count, args.merchants)

        def bare_lines(count: int) -> list[str]:
            return bare_requests(count, args.merchants)

        # (start, end) of every measured run, each endpoint's: the garbage collections of its
        # server that fell inside them are reported.
        measured: dict[Server, list[tuple[float, float]]] = {target: [], bare_target: []}
        pay_open_window: list[tuple[float, float]] = []
        pay_open_waits: list[tuple[float, str]] = []

        def closed(on: Server, lines: Callable[[int], list[str]]) -> tuple[LoadResult, LoadResult]:
            started = time.time()
            try:
                return closed_loop(
                    children,
                    on,
                    lines,
                    workdir,
                    seconds=args.seconds,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    database=str(make_url(database_url).database),
                )
            finally:
                measured[on].append((started, time.time()))

        def opened(on: Server, lines: Callable[[int], list[str]], rate: float) -> LoadResult:
            # The payments' connections sampled every 20 ms: what they waited on during a stall.
            sampled = (
                connection_states(database_url, 0.02, timeline=pay_open_waits)
                if on == target
                else nullcontext()
            )
            with sampled:
                result = open_loop(
                    children,
                    on,
                    lines,
                    workdir,
                    rate=rate,
                    seconds=args.seconds,
                    concurrency=args.concurrency,
                )
            # From when the load began (after open_loop's settling pause).
            window = (result.started_at or 0.0, time.time())
            measured[on].append(window)
            if on == target:
                pay_open_window.append(window)
            return result

        # Both servers are up (the one not measured idles): their closed loops alternate, so
        # that each round's ratio is of two runs made minutes apart at most, and the figure is
        # the median round's.
        rounds: list[tuple[LoadResult, LoadResult]] = []
        pay_runs: list[LoadResult] = []
        pay_states: Counter[str] = Counter()
        for number in range(1, args.rounds + 1):
            _progress(f"round {number} of {args.rounds}: payments, warm-up then closed loop")
            with connection_states(database_url) as states:
                pay_warmup, pay_closed = closed(target, pay_lines)
            pay_states.update(states)
            pay_runs += [pay_warmup, pay_closed]
            _progress(f"round {number} of {args.rounds}: bare endpoint, warm-up then closed loop")
            _, bare_closed = closed(bare_target, bare_lines)
            rounds.append((pay_closed, bare_closed))
        by_ratio = sorted(rounds, key=lambda pair: pair[0].rps / pair[1].rps)
        pay_closed, bare_closed = by_ratio[len(by_ratio) // 2]

        half = args.open_rate or pay_closed.rps / 2
        _progress(f"payments: open loop at {half:.1f} req/s")
        pay_open = opened(target, pay_lines, half)
        _progress(f"bare endpoint: open loop at {half:.1f} req/s")
        bare_open = opened(bare_target, bare_lines, half)

        _progress("payments: one at a time")
        pay_alone = one_at_a_time(children, target, pay_lines, workdir, count=args.alone)
        _progress("bare endpoint: one at a time")
        bare_alone = one_at_a_time(children, bare_target, bare_lines, workdir, count=args.alone)

        def floor_lines(count: int) -> list[str]:
            return statement_requests(statements, count, args.merchants)

        # Each ceiling beside a run of the bare endpoint made just before it (module docstring).
        _progress("bare endpoint again, just before the next run: closed loop")
        _, floor_bare = closed(bare_target, bare_lines)
        _progress(f"bare endpoint with as many statements as a payment ({statements}): closed loop")
        _, floor_closed = closed(bare_target, floor_lines)

        # Last: its payments count towards the holders' spending today, which the payments'
        # runs above must not see. It copies a payment's rows, every control on: with controls
        # off a payment writes other rows (no risk decision without the risk engine).
        writes_runs: tuple[LoadResult, LoadResult] | None = None
        writes_bare: LoadResult | None = None
        writes_answered = 0
        if not off:
            with container.sessions() as db:
                accounts = db.execute(
                    select(
                        LedgerAccount.kind,
                        LedgerAccount.holder_id,
                        LedgerAccount.code,
                        LedgerAccount.id,
                    )
                    .where(LedgerAccount.kind.in_((HOLDER, MERCHANT)))
                    .order_by(LedgerAccount.code)
                ).all()
            wallets = [(str(a.holder_id), str(a.id)) for a in accounts if a.kind == HOLDER]
            merchants = [
                (a.code.removeprefix(merchant_code("")), str(a.id))
                for a in accounts
                if a.kind == MERCHANT
            ]

            def writes_lines(count: int) -> list[str]:
                return spec_writes_requests(wallets, merchants, count)

            _progress("bare endpoint writing a payment's essential rows: a first pass")
            # A first pass of its own: each server process reads the rows it copies and prepares
            # its statement on first use, which would make closed_loop's warm-up underestimate
            # the rate and so shorten the measured run.
            first = run_load(
                children,
                bare_target.port,
                writes_lines(args.warmup),
                workdir,
                concurrency=args.concurrency,
            )
            _progress("bare endpoint again, just before the next run: closed loop")
            _, writes_bare = closed(bare_target, bare_lines)
            _progress("bare endpoint writing a payment's essential rows: closed loop")
            writes_runs = closed(bare_target, writes_lines)
            writes_answered = first.requests - first.errors

    # The audit chain too: the bare endpoint's copies of a payment's rows chain entries.
    ledger, audit = ledger_and_audit_checks(env)
    with container.sessions() as db:
        posted = db.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == "payment", LedgerTransaction.status == "posted")
        )
    container.close()
    answered = sum(r.requests - r.errors for r in (*pay_runs, pay_open, pay_alone))
    # The essential writes post payments of their own.
    answered += writes_answered + sum(r.requests - r.errors for r in writes_runs or ())

    busy_after = machine_busy_share()
    print(
        f"CPU busy with other work, sampled before and after the runs: {busy_before:.0%}, "
        f"{busy_after:.0%}"
        + ("  << shared machine: figures are low" if max(busy_before, busy_after) > 0.1 else "")
    )
    print()
    print(f"closed loop (max throughput), {len(rounds)} rounds of payments then bare:")
    for number, (pay, bare) in enumerate(rounds, start=1):
        median = "  << the median round" if (pay, bare) == (pay_closed, bare_closed) else ""
        print(f" round {number}: ratio {pay.rps / bare.rps:6.1%}{median}")
        print(_line("payments POST /payments", pay))
        print(_line("bare one-INSERT endpoint", bare))
    load = "fixed by --open-rate" if args.open_rate else "half the payment throughput"
    print(f"open loop at {half:.1f} req/s ({load}):")
    print(_line("payments POST /payments", pay_open))
    print(f"    {_slow_line(pay_open)}")
    for line in _waits_lines(pay_open, pay_open_waits):
        print(f"    {line}")
    print(_line("bare one-INSERT endpoint", bare_open))
    print(f"    {_slow_line(bare_open)}")
    print()
    ratios = ", ".join(f"{pay.rps / bare.rps:.1%}" for pay, bare in rounds)
    goal = f"without {', '.join(off)}: no target" if off else "target >= 50 %"
    print(
        f"ratio payments / bare          : {pay_closed.rps / bare_closed.rps:6.1%} ({goal};"
        f" the median of {len(rounds)} rounds: {ratios})"
    )
    at = "the fixed rate" if args.open_rate else "half load"
    print(f"payments p99 at {at:<15}: {pay_open.p99_ms:6.1f} ms (target <= 50 ms at half load)")
    # The CPU of a request with the machine to itself, beside the statements a payment sends.
    bare_ms, pay_ms = bare_alone.server_cpu_ms or 0.0, pay_alone.server_cpu_ms or 0.0
    ticks = cpu_ticks(pay_alone), cpu_ticks(bare_alone)
    if min(ticks) < MIN_TICKS:
        print(
            f"server CPU, one at a time      : not read, {ticks[0]} and {ticks[1]} clock ticks of "
            f"{CLOCK_TICK_MS:.0f} ms in all (fewer than {MIN_TICKS}: rounding); --alone 200 "
            "gives enough"
        )
    elif bare_ms and pay_ms:
        print(
            f"server CPU, one at a time      : payment {pay_ms:.1f} ms, bare {bare_ms:.1f} ms: "
            f"ratio {bare_ms / pay_ms:6.1%}"
        )
    if pay_closed.machine_cpu_ms and bare_closed.machine_cpu_ms:
        # On a machine the closed loop keeps busy, the ratio is about the inverse of the two
        # requests' CPU on the whole machine: where a payment's goes says what a change can win.
        print(
            "CPU a request, median round    : payment "
            f"{pay_closed.machine_cpu_ms:.1f} ms (server {pay_closed.server_cpu_ms or 0:.1f}, "
            f"PostgreSQL {pay_closed.database_cpu_ms or 0:.1f}), bare "
            f"{bare_closed.machine_cpu_ms:.1f} ms (server {bare_closed.server_cpu_ms or 0:.1f}, "
            f"PostgreSQL {bare_closed.database_cpu_ms or 0:.1f}): ratio "
            f"{bare_closed.machine_cpu_ms / pay_closed.machine_cpu_ms:6.1%}"
        )
    print(f"statements of one payment      : {statements} (bare: 1)")
    print("payments' connections in a transaction (closed loop, pg_stat_activity):")
    for line in _states_lines(pay_states):
        print(line)
    print(
        f"bare + {statements - 1} trivial SELECTs        : {floor_closed.rps:.1f} req/s, "
        f"{_beside(floor_closed, floor_bare)}: the most a payment of {statements} statements "
        "could reach here"
    )
    if writes_runs is None or writes_bare is None:
        print("bare writing a payment's rows  : not run (--without: a payment writes other rows)")
    else:
        writes = writes_runs[1]
        print(
            "the bare endpoint writing a payment's risk decision, ledger posting, audit entries,"
            " alert and outbox rows and idempotency key (copies, no reads, checks or Python):"
        )
        print(_line("bare + a payment's writes", writes))
        invalid = "  << errors: not a figure" if writes.errors else ""
        print(
            f"bare writing a payment's rows  : {_beside(writes, writes_bare)}, CPU a request "
            f"{writes.machine_cpu_ms or 0:.1f} ms: the most a payment writing those rows could "
            f"reach here{invalid}"
        )
    print("full garbage collections in the servers' processes during their runs (warm-ups in):")
    for name, folder, windows in (
        ("payments", pay_gc, measured[target]),
        ("bare endpoint", bare_gc, measured[bare_target]),
    ):
        print(f"  {name:<14}: {_pauses(collections_in(folder, windows))}")
    in_open = collections_in(pay_gc, pay_open_window)
    print(f"  payments' open loop alone: {_pauses(in_open)}")
    if in_open:
        opened_at = pay_open_window[0][0]
        ends = ", ".join(f"+{at - opened_at:.1f} s ({ms:.0f} ms)" for at, ms in sorted(in_open))
        print(f"    ended at {ends} of the run (its start: the load generator's, within ~0.3 s)")
    print(f"payments posted in the ledger  : {posted} ({answered} answered 2xx, warm-up included)")
    verdict = "reconciles" if ledger.returncode == 0 else "DOES NOT reconcile"
    print(f"walletguard ledger check       : {verdict}: {ledger.stdout.strip()}")
    if ledger.returncode != 0:
        print(ledger.stderr.strip(), file=sys.stderr)
    verdict = "holds" if audit.returncode == 0 else "DOES NOT hold"
    print(f"walletguard audit verify       : {verdict}: {audit.stdout.strip()}")
    if audit.returncode != 0:
        print(audit.stderr.strip(), file=sys.stderr)
    if ledger.returncode != 0 or audit.returncode != 0 or posted != answered:
        raise SystemExit(1)


def ledger_and_audit_checks(
    env: dict[str, str],
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``walletguard ledger check`` and ``walletguard audit verify`` on the servers' settings
    (``env``), run as an operator would, their output kept."""
    ledger, audit = (
        subprocess.run(
            [sys.executable, "-m", "walletguard.cli", *command],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        for command in (["ledger", "check"], ["audit", "verify"])
    )
    return ledger, audit


def collections_in(folder: Path, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(when it ended, unix time; how long it took, ms) of each full garbage collection logged
    in ``folder`` (``bench/gc_watch``) that ended inside one of ``windows``, in any of the
    server's processes."""
    found: list[tuple[float, float]] = []
    for log in folder.glob("*.log"):
        for line in log.read_text().splitlines():
            at, ms = (float(part) for part in line.split())
            if any(start <= at <= end for start, end in windows):
                found.append((at, ms))
    return found


def _slow_line(result: LoadResult) -> str:
    """The requests of a run over 50 ms, and when they were due: one burst is a stall."""
    machine = (
        f"; the machine meanwhile: waiting on the disk {result.iowait_share:.1%}, taken by the "
        f"hypervisor {result.steal_share:.1%} of its CPU time"
        if result.iowait_share is not None and result.steal_share is not None
        else ""
    )
    if not result.slow_count:
        return "none over 50 ms" + machine
    due = [at for at, _ms in result.slow]
    seconds = len({int(at) for at in due})
    return (
        f"{result.slow_count} over 50 ms (the worst {max(ms for _at, ms in result.slow):.0f} ms), "
        f"due between +{min(due):.1f} and +{max(due):.1f} s of the run, in {seconds} distinct "
        f"second(s){machine}"
    )


def _waits_lines(result: LoadResult, timeline: list[tuple[float, str]], top: int = 4) -> list[str]:
    """What the payments' connections in a transaction were doing while the run's requests over
    50 ms were in flight (each from when it was due to when it was answered; the first 500 the
    load generator reports), beside the rest of the run: a stall on the WAL's fsync shows as
    ``IO:WALSync`` and ``LWLock:WALWrite``, one on a row as ``Lock:...``, one in the server's
    Python as ``client``."""
    if result.started_at is None or not result.slow:
        return []
    opened = result.started_at
    slow = [(opened + at, opened + at + ms / 1000) for at, ms in result.slow]
    ended = opened + result.seconds
    inside: Counter[str] = Counter()
    rest: Counter[str] = Counter()
    for at, doing in timeline:
        if any(start <= at <= end for start, end in slow):
            inside[doing] += 1
        elif opened <= at <= ended:
            rest[doing] += 1

    def shares(found: Counter[str]) -> str:
        total = sum(found.values())
        if not total:
            return "no samples"
        return f"{total} samples: " + ", ".join(
            f"{doing} {n / total:.0%}" for doing, n in found.most_common(top)
        )

    return [
        f"the payments' connections in a transaction while those were in flight: {shares(inside)}",
        f"the rest of the run: {shares(rest)}",
    ]


def _pauses(found: list[tuple[float, float]]) -> str:
    if not found:
        return "none"
    took = [ms for _at, ms in found]
    return (
        f"{len(took)}, {sum(took):.0f} ms in all, the longest {max(took):.1f} ms (the process "
        "answers nothing meanwhile)"
    )


def _server_version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SHOW server_version")).scalar_one())


if __name__ == "__main__":
    main()
