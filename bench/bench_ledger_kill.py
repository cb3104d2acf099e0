"""SPEC section 3's ledger target on PostgreSQL: after 10,000 concurrent random transfers with
server workers killed mid-flight, every balance equals the sum of its postings and the total is
unchanged.

    .venv/bin/python bench/bench_ledger_kill.py [--transfers 10000] [--holders 64]
        [--concurrency 32] [--workers 2] [--kill-every 2] [--seed 0] [--admin-url URL]
        [--cheap-argon2]

A fresh database ``wg_bench_<random>`` next to the admin URL's database (dropped on exit, even
on Ctrl-C), walletguard under ``uvicorn --workers N`` with every control of the ``protected``
profile on, and ``--holders`` holders prepared through the public API as
``bench/bench_payments.py`` prepares them (register, payment password, bind a sandbox card, top
up 10,000.00 yuan with the bank's dynamic password). Their daily limit is raised (the servers'
``WALLETGUARD_DEFAULT_DAILY_LIMIT_FEN``): with fewer holders or more transfers a run moves more
in minutes than a holder may in a day, and the limit is not what is under test.

Then ``--transfers`` transfers, each from a random holder to one of the three holders after it
(a circle of family and friends: a recipient paid by eight or more holders in an hour is held
by the risk engine as a mule account, ``mule-collection``) for a random amount (0.01 to 100.00
yuan: a holder moving over 20,000.00 in 30 movements in ten minutes is stopped as a drained
account, ``holder-velocity``), through ``POST /api/v1/transfers`` with the payment password and an
Idempotency-Key, ``--concurrency`` at a time. Meanwhile a killer sends SIGKILL to one of the
server's worker processes, at random intervals of ``--kill-every`` seconds on average, once
every worker is up and answering: whatever it had in flight dies with it, at any point of its
transaction, COMMIT included. uvicorn's supervisor starts a new worker; the listening socket
stays open in the supervisor, so new connections wait for one. A client whose connection dies
does what a wallet app does: it sends the same request again, with the same key, until it
gets an answer. A transfer that committed before the kill is then answered from its stored
result, and one that did not runs again.

At the end (exit status 1 if any check fails):

- ``walletguard ledger check``: total debits equal total credits, and every cached balance
  equals the sum of its postings;
- the holders' balances add up to what they did before the transfers (a transfer only moves
  money between holders), and all accounts add up to zero;
- no holder's available balance (posted minus pending) is below zero;
- exactly once: the transfers posted in the ledger are exactly the ones the clients were
  answered "posted" for, one a key;
- ``walletguard audit verify``: the audit chain is whole.

It prints the answers by outcome (a refusal of the risk engine with the rules that fired), the
workers killed, how many requests a kill cut off (each sent again) and how many of those had
committed before it (answered from the stored result, ``Idempotent-Replayed``), the transfers
a second, and the checks. Not a speed benchmark: the kills and the restarts take much of the
time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_payments import (
    PIN,
    BenchHolder,
    Children,
    Server,
    _progress,
    add_admin_url_argument,
    at_least,
    healthz_status,
    ledger_and_audit_checks,
    live_processes,
    on_fresh_database,
    prepare_holders,
    server,
    server_env,
)
from walletguard.bootstrap import Container, build_container
from walletguard.migrations import upgrade
from walletguard.wallet.ledger import HOLDER
from walletguard.wallet.models import LedgerAccount, LedgerTransaction

# Up to 100.00 yuan: over 20,000.00 yuan in 30 movements in ten minutes is what the risk engine
# stops as a drained account (``holder-velocity``); 64 holders sending 10,000 transfers of
# 50.00 on average move some 7,800.00 each in the run.
MAX_AMOUNT_FEN = 100_00
# Whom a holder sends to: the next few holders, a circle of family and friends. Money from
# eight or more senders in an hour to one recipient is what the risk engine holds as a mule
# account's collection (``mule-collection``), and this run is about the ledger, not that rule.
CIRCLE = 3
# Fewer holders or more transfers than the defaults move more than a holder's default daily
# limit in minutes, and the limit is not what is under test.
DAILY_LIMIT_FEN = 10**12
# A request is sent again for as long as this after its first try before the run gives up.
GIVE_UP_S = 120.0


@dataclass
class Tally:
    """What the clients saw, shared between their threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    posted: set[str] = field(default_factory=set)  # movement ids answered "posted"
    posted_answers: int = 0
    cut_off: int = 0  # requests whose connection died before an answer (sent again)
    # Of the transfers sent again after a cut-off, those answered from the stored result
    # (``Idempotent-Replayed``): they had committed before the kill, the answer was lost.
    replayed: int = 0
    in_progress: int = 0  # 409 "the first request with this key is still running" (sent again)
    gave_up: int = 0


def transfer_plan(holders: int, count: int, seed: int) -> list[tuple[int, int, int]]:
    """(sender, recipient, amount in fen) for every transfer, the same for the same seed: a
    random sender, one of the ``CIRCLE`` holders after it (fewer when there are fewer others),
    a random amount."""
    rng = random.Random(seed)
    circle = min(CIRCLE, holders - 1)
    plan = []
    for _ in range(count):
        sender = rng.randrange(holders)
        recipient = (sender + rng.randint(1, circle)) % holders
        plan.append((sender, recipient, rng.randint(1, MAX_AMOUNT_FEN)))
    return plan


def _slug(problem: dict[str, Any]) -> str:
    """A problem's stable name: the end of its ``type`` (``urn:walletguard:problem:<slug>``)."""
    return str(problem.get("type", "")).rpartition(":")[2] or "problem"


class Client:
    """One client thread's keep-alive connection, made again after a kill cut it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], bool] | None:
        """The answer (status, document, whether it was replayed from the stored result), or
        None when the connection died before one came."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            self.conn.request("POST", "/api/v1/transfers", body=body, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            return None
        replayed = response.getheader("Idempotent-Replayed") == "true"
        return response.status, json.loads(raw) if raw else {}, replayed


def send_transfer(
    client: Client, tally: Tally, sender: BenchHolder, to_phone: str, amount_fen: int
) -> None:
    body = json.dumps(
        {
            "to_phone": to_phone,
            "amount": f"{amount_fen // 100}.{amount_fen % 100:02d}",
            "payment_password": PIN,
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {sender.token}",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    first_try = time.monotonic()
    while time.monotonic() - first_try < GIVE_UP_S:
        answer = client.send(body, headers)
        if answer is None:
            with tally.lock:
                tally.cut_off += 1
            time.sleep(0.05)
            continue
        status, document, replayed = answer
        if status == 409 and _slug(document) == "idempotency-request-in-progress":
            with tally.lock:
                tally.in_progress += 1
            time.sleep(0.05)
            continue
        with tally.lock:
            tally.replayed += replayed
            if status == 201:
                outcome = f"201 {document['status']}"
                if document["status"] == "posted":
                    tally.posted.add(document["id"])
                    tally.posted_answers += 1
            else:
                # A refusal of the risk engine names the rules that fired.
                rules = ",".join(document.get("rules", []))
                outcome = f"{status} {_slug(document)}" + (f" ({rules})" if rules else "")
            tally.outcomes[outcome] += 1
        return
    with tally.lock:
        tally.gave_up += 1


def worker_pids(master: int) -> list[int]:
    """uvicorn's worker processes under ``master`` (spawned: ``--multiprocessing-fork`` in their
    command line; the supervisor's other child, multiprocessing's resource tracker, is not one)."""
    found = []
    for stat, fields in live_processes():
        if int(fields[1]) != master:
            continue
        try:
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"--multiprocessing-fork" in command:
            found.append(int(stat.parent.name))
    return found


class Killer(threading.Thread):
    """SIGKILLs a random worker of ``target`` every ``every`` seconds on average (uniform over
    half to one and a half times it), each time once all ``workers`` are up and the server
    answers again."""

    def __init__(self, target: Server, workers: int, every: float, seed: int) -> None:
        super().__init__(name="killer", daemon=True)
        self.target, self.workers, self.every = target, workers, every
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.killed: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.5, 1.5) * self.every):
            while not self.stop.is_set():
                live = worker_pids(self.target.pid)
                up = healthz_status(self.target.port, timeout=5) == 200
                if len(live) >= self.workers and up:
                    break
                self.stop.wait(0.2)
            else:
                return
            victim = self.rng.choice(live)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append(victim)


def holder_totals(container: Container) -> tuple[int, int, int]:
    """The holders' balances added up, every account's, and the lowest available balance."""
    with container.sessions() as db:
        held = db.scalar(
            select(func.coalesce(func.sum(LedgerAccount.balance_fen), 0)).where(
                LedgerAccount.kind == HOLDER
            )
        )
        everything = db.scalar(select(func.coalesce(func.sum(LedgerAccount.balance_fen), 0)))
        lowest = db.scalar(
            select(func.min(LedgerAccount.balance_fen - LedgerAccount.pending_fen)).where(
                LedgerAccount.kind == HOLDER
            )
        )
    return int(held or 0), int(everything or 0), int(lowest or 0)


def run(args: argparse.Namespace, children: Children, workdir: Path, database_url: str) -> bool:
    env, settings = server_env(
        database_url,
        workdir,
        cheap_argon2=args.cheap_argon2,
        extra={"WALLETGUARD_DEFAULT_DAILY_LIMIT_FEN": str(DAILY_LIMIT_FEN)},
    )
    container = build_container(settings)
    upgrade(container.engine)

    app = ["walletguard.app:server_app", "--factory"]
    with server(children, app, env, args.workers) as target:
        _progress(f"preparing {args.holders} holders through the API")
        holders = prepare_holders(container, target.port, args.holders, args.workers)
        held_before, _, _ = holder_totals(container)

        plan = transfer_plan(len(holders), args.transfers, args.seed)
        tally = Tally()
        next_index = iter(range(len(plan)))
        index_lock = threading.Lock()

        def client_thread() -> None:
            client = Client(target.port)
            while True:
                with index_lock:
                    index = next(next_index, None)
                if index is None:
                    return
                sender, recipient, amount = plan[index]
                send_transfer(client, tally, holders[sender], holders[recipient].phone, amount)

        _progress(
            f"{args.transfers} transfers, {args.concurrency} at a time, a worker killed every "
            f"~{args.kill_every:g} s"
        )
        killer = Killer(target, args.workers, args.kill_every, args.seed)
        started = time.perf_counter()
        killer.start()
        threads = [threading.Thread(target=client_thread) for _ in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        killer.stop.set()
        killer.join()

    held_after, everything, lowest = holder_totals(container)
    with container.sessions() as db:
        in_ledger = {
            str(i)
            for i in db.scalars(
                select(LedgerTransaction.id).where(
                    LedgerTransaction.kind == "transfer", LedgerTransaction.status == "posted"
                )
            )
        }
    container.close()
    ledger, audit = ledger_and_audit_checks(env)

    answered = sum(tally.outcomes.values())
    print(
        f"{args.transfers} transfers between {len(holders)} holders, {args.concurrency} at a "
        f"time, on uvicorn --workers {args.workers}: {elapsed:.1f} s, "
        f"{answered / elapsed:.1f} answered a second"
    )
    print(
        f"workers killed (SIGKILL)       : {len(killer.killed)}, every "
        f"{elapsed / max(1, len(killer.killed)):.1f} s on average"
    )
    print(
        f"requests cut off by a kill     : {tally.cut_off}, each sent again with its key; "
        f"{tally.replayed} of them had committed before the kill and were answered from the "
        f"stored result ({tally.in_progress} answered 'still running' and sent again)"
    )
    print(
        "answers                        : "
        + ", ".join(f"{outcome} {count}" for outcome, count in tally.outcomes.most_common())
    )
    checks = [
        (
            "every transfer answered",
            tally.gave_up == 0 and answered == args.transfers,
            f"{answered} of {args.transfers}, {tally.gave_up} given up after {GIVE_UP_S:.0f} s",
        ),
        (
            "walletguard ledger check",
            ledger.returncode == 0,
            (ledger.stdout or ledger.stderr).strip(),
        ),
        (
            "holders' total unchanged",
            held_after == held_before,
            f"{held_before / 100:,.2f} before, {held_after / 100:,.2f} after",
        ),
        ("all accounts add up to zero", everything == 0, f"{everything / 100:,.2f}"),
        ("no available balance below 0", lowest >= 0, f"the lowest {lowest / 100:,.2f}"),
        (
            "each posted transfer once",
            in_ledger == tally.posted and tally.posted_answers == len(tally.posted),
            f"{len(in_ledger)} posted in the ledger, {tally.posted_answers} answered posted "
            f"({len(tally.posted)} distinct), {len(in_ledger - tally.posted)} in the ledger "
            f"unanswered, {len(tally.posted - in_ledger)} answered but not in the ledger",
        ),
        ("walletguard audit verify", audit.returncode == 0, (audit.stdout or audit.stderr).strip()),
    ]
    for name, ok, detail in checks:
        print(f"{name:<31}: {'holds' if ok else 'FAILS'}: {detail}")
    return all(ok for _, ok, _ in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_admin_url_argument(parser)
    parser.add_argument("--transfers", type=at_least(1), default=10_000)
    parser.add_argument("--holders", type=at_least(2), default=64)
    parser.add_argument("--concurrency", type=at_least(1), default=32, help="client threads")
    parser.add_argument("--workers", type=at_least(1), default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--kill-every", type=float, default=2.0, help="mean seconds between two kills"
    )
    parser.add_argument("--seed", type=int, default=0, help="the transfers' and kills' draw")
    parser.add_argument(
        "--cheap-argon2",
        action="store_true",
        help="Argon2id m=8 MiB, t=1 for the login passwords (a faster preparation)",
    )
    args = parser.parse_args()
    if args.kill_every <= 0:
        raise SystemExit("--kill-every must be more than 0 seconds")
    if not on_fresh_database(args.admin_url, "ledger", lambda *on: run(args, *on)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
