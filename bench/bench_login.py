"""Logins per second with the production Argon2id parameters, beside a bare Argon2id verify.

    .venv/bin/python bench/bench_login.py [--database-url URL] [--seconds 5] [--threads 2]

A login is: throttle reservation, holder lookup, Argon2id verify, device + session rows, audit
entry, commit. The baseline is the Argon2id verify alone, measured in the same run; the ratio
says how much the rest of a login costs. Figures are medians over repeated rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from walletguard.bootstrap import build_container
from walletguard.identity.service import DeviceInfo, IdentityService
from walletguard.kit.db import unit_of_work
from walletguard.kit.settings import Settings
from walletguard.messages.otp_guard import recognise_otp
from walletguard.messages.service import PhoneInbox
from walletguard.migrations import upgrade

PHONE = "+8613811112222"
PASSWORD = "Bench-Marmot-4471"


def throughput(work: Callable[[], None], seconds: float, threads: int) -> float:
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            work()
            done[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="wg-bench-"))
    settings = Settings(data_dir=data_dir, database_url=args.database_url)
    container = build_container(settings)
    upgrade(container.engine)
    with unit_of_work(container.sessions) as db:
        identity = IdentityService(db, container)
        pending = identity.start_registration(PHONE, ip=None)
        body = PhoneInbox(db, container.cipher, container.clock).messages(PHONE, limit=1)[0].body
        match = recognise_otp(body)
        assert match is not None, "the registration SMS carries a code"
        code = match.code
        identity.complete_registration(
            pending.id,
            code=code,
            name="测试",
            birthday=date(1991, 1, 1),
            password=PASSWORD,
            id_number=None,
            device=DeviceInfo("bench", "bench", "bench", None),
        )
        stored_hash = identity._holder_by_phone(PHONE).password_hash  # type: ignore[union-attr]

    device = DeviceInfo("bench", "bench", "bench", "127.0.0.1")
    hasher = container.hasher

    def bare_verify() -> None:
        hasher.verify(stored_hash, PASSWORD)

    def login() -> None:
        with unit_of_work(container.sessions) as db:
            IdentityService(db, container).login(PHONE, PASSWORD, device, device_token=None)

    s = container.settings
    print(
        f"Argon2id parameters: m={s.argon2_memory_kib} KiB, t={s.argon2_time_cost}, "
        f"p={s.argon2_parallelism}, hash 32 B, salt 16 B"
    )
    print(
        f"database: {container.engine.dialect.name}; threads: {args.threads}; "
        f"{args.rounds} rounds of {args.seconds:.0f} s"
    )
    bare_rounds, login_rounds = [], []
    for _ in range(args.rounds):
        bare_rounds.append(throughput(bare_verify, args.seconds, args.threads))
        login_rounds.append(throughput(login, args.seconds, args.threads))
    latencies = []
    for _ in range(30):
        started = time.perf_counter()
        login()
        latencies.append((time.perf_counter() - started) * 1000)
    bare, full = statistics.median(bare_rounds), statistics.median(login_rounds)
    print(f"bare Argon2id verify : {bare:8.1f} /s (median of rounds)")
    print(f"full login           : {full:8.1f} /s (median of rounds)")
    print(f"ratio login / bare   : {full / bare:8.2f}")
    print(f"single login latency : median {statistics.median(latencies):.1f} ms")
    container.close()


if __name__ == "__main__":
    main()
