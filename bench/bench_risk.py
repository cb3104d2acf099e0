"""Risk decision latency in process (SPEC §3: p99 ≤ 2 ms with 50 rules).

    python bench/bench_risk.py [--events 100000] [--holders 2000] [--database-url URL]

Plays ``--events`` movement decisions (``RiskService.decide``: the signals its rules reach read
— the generated rules' ``any`` reach the history's on nearly every event, the default rules
mostly only travel's short read —, the rules run, the decision stored — audited when a rule
fired — and velocity counted) against a migrated
database — an SQLite file by default, the embedded setup — first with 50 rules (the defaults
plus generated ones), then with the default rules, and beside them a bare baseline measured in
the same run on the same session: one indexed SELECT. The simulated clock moves 30 s per event,
so 100,000 events span about a month and every holder builds a history. Transactions commit
every 100 events; only the ``decide`` call with the flush of what it wrote (or the baseline
SELECT) is timed. Prints p50 / p99 per configuration.
"""

from __future__ import annotations

import argparse
import base64
import random
import secrets
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import select

from walletguard.bootstrap import Container, build_container
from walletguard.identity.models import Device, Holder
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import create_db_engine, unit_of_work
from walletguard.kit.settings import Settings
from walletguard.migrations import upgrade
from walletguard.risk.rules import default_rules_text, parse_rules
from walletguard.risk.service import RiskEvent, RiskService

MERCHANTS = [f"商户{i:03d}" for i in range(300)]
IPS = ["116.228.10.21", "113.108.77.5", "61.135.169.121", "101.227.12.3", "183.14.20.7"]
START = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
BATCH = 100


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def extra_rules(count: int, seed: int) -> str:
    """Generated rules over numeric signals with thresholds that rarely fire (realistic load:
    every rule is evaluated, few act)."""
    rng = random.Random(seed)
    numeric = [
        ("holder_sum_24h", 50_000_000),
        ("holder_count_1h", 40),
        ("card_sum_1h", 30_000_000),
        ("payee_count_1h", 500),
        ("ip_count_1h", 500),
        ("amount_vs_p95", 50),
        ("travel_kmh", 5000),
        ("payees_30m", 20),
    ]
    lines = []
    for index in range(count):
        a, a_limit = rng.choice(numeric)
        b, b_limit = rng.choice(numeric)
        lines += [
            f"  - id: generated-{index:02d}",
            "    kinds: [movement]",
            "    when:",
            "      any:",
            f"        - {{signal: {a}, gt: {a_limit * rng.uniform(1, 2):.0f}}}",
            "        - all:",
            f"            - {{signal: {b}, ge: {b_limit * rng.uniform(1, 2):.0f}}}",
            "            - {signal: payee_trusted, is: false}",
            f"    action: {rng.choice(['challenge', 'hold'])}",
            "    score: 10",
            f"    reasons: {{zh-CN: 生成规则 {index}, en: generated rule {index}}}",
        ]
    return "\n".join(lines) + "\n"


def seed_holders(container: Container, count: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Holders with one registered device each, written straight to the tables (fast)."""
    cipher = container.cipher
    made: list[tuple[uuid.UUID, uuid.UUID]] = []
    with unit_of_work(container.sessions) as db:
        for index in range(count):
            phone = f"+86139{index:08d}"
            holder = Holder(
                id=uuid.uuid4(),
                phone_enc=cipher.encrypt(phone, context="holders.phone"),
                phone_index=cipher.blind_index(phone, context="phone"),
                name_enc=cipher.encrypt("测试", context="holders.name"),
                birthday_enc=cipher.encrypt("1990-01-01", context="holders.birthday"),
                password_hash="not-a-hash",  # noqa: S106 - nobody signs in during the bench
                password_changed_at=START - timedelta(days=200),
                created_at=START - timedelta(days=200),
            )
            db.add(holder)
            db.flush()
            device = Device(
                id=uuid.uuid4(),
                holder_id=holder.id,
                client_device_id=f"phone-{index}",
                label="phone",
                user_agent="bench",
                first_seen_ip=IPS[index % len(IPS)],
                last_seen_ip=IPS[index % len(IPS)],
                first_seen_at=START - timedelta(days=200),
                last_seen_at=START - timedelta(days=1),
                trust="trusted",
                token_hash=secrets.token_hex(32),
            )
            db.add(device)
            made.append((holder.id, device.id))
    return made


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Samples:
    """Milliseconds per event: wall time and the thread's CPU time, of decide and baseline."""

    decide: list[float] = field(default_factory=list)
    decide_cpu: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_cpu: list[float] = field(default_factory=list)


def machine_busy_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (/proc/stat), before this bench loads them."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total_a, idle_a = sample()
    time.sleep(seconds)
    total_b, idle_b = sample()
    return 1 - (idle_b - idle_a) / max(1, total_b - total_a)


def play(
    container: Container,
    clock: ManualClock,
    holders: list[tuple[uuid.UUID, uuid.UUID]],
    events: int,
    seed: int,
) -> Samples:
    rng = random.Random(seed)
    samples = Samples()
    done = 0
    while done < events:
        with unit_of_work(container.sessions) as db:
            risk = RiskService(db, container)
            for _ in range(min(BATCH, events - done)):
                clock.advance(timedelta(seconds=30))
                holder_id, device_id = holders[rng.randrange(len(holders))]
                favourite = rng.random() < 0.7
                merchant = MERCHANTS[hash(holder_id) % 5] if favourite else rng.choice(MERCHANTS)
                event = RiskEvent(
                    kind="movement",
                    holder_id=holder_id,
                    action="payment",
                    device_id=device_id,
                    ip=IPS[hash(holder_id) % len(IPS)],
                    amount_fen=rng.randint(500, 60_000),
                    payee=merchant,
                    payee_label=merchant,
                    source_balance_fen=rng.randint(100_000, 2_000_000),
                )
                began, began_cpu = time.perf_counter_ns(), time.thread_time_ns()
                risk.decide(event)
                db.flush()  # its inserts belong to its cost, not to the next statement's
                samples.decide_cpu.append((time.thread_time_ns() - began_cpu) / 1e6)
                samples.decide.append((time.perf_counter_ns() - began) / 1e6)
                began, began_cpu = time.perf_counter_ns(), time.thread_time_ns()
                db.execute(select(Device.id).where(Device.holder_id == holder_id)).all()
                samples.baseline_cpu.append((time.thread_time_ns() - began_cpu) / 1e6)
                samples.baseline.append((time.perf_counter_ns() - began) / 1e6)
                done += 1
    return samples


def run(label: str, settings: Settings, holders_count: int, events: int) -> None:
    clock = ManualClock(START)
    container = build_container(settings, clock=clock)
    try:
        holders = seed_holders(container, holders_count)
        rules = RiskService(container.sessions(), container).book.current()
        # Warm up (imports, caches, the rules' first compile) outside the measurement.
        play(container, clock, holders, min(1000, events), seed=1)
        samples = play(container, clock, holders, events, seed=2)
    finally:
        container.close()
    for what, decide, baseline in (
        ("wall", samples.decide, samples.baseline),
        ("cpu ", samples.decide_cpu, samples.baseline_cpu),
    ):
        p50, p99 = percentile(decide, 0.50), percentile(decide, 0.99)
        b50, b99 = percentile(baseline, 0.50), percentile(baseline, 0.99)
        print(
            f"{label:<14} rules={len(rules.rules):>3} {what} decide p50={p50:6.3f} ms "
            f"p99={p99:6.3f} ms mean={statistics.fmean(decide):6.3f} ms | baseline SELECT "
            f"p50={b50:6.3f} ms p99={b99:6.3f} ms | p50 ratio {p50 / b50:5.1f}x "
            f"(n={len(decide)})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--holders", type=int, default=2_000)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    busy = machine_busy_share()
    print(
        f"CPU busy with other work before the runs: {busy:.0%}"
        + ("  << shared machine: the wall-clock tail is waiting for a core" if busy > 0.1 else ""),
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="wg-bench-risk-"))
    default_count = len(parse_rules(default_rules_text()).rules)
    fifty = work / "fifty_rules.yaml"
    fifty.write_text(default_rules_text() + extra_rules(50 - default_count, seed=7), "utf-8")
    assert len(parse_rules(fifty.read_text("utf-8")).rules) == 50
    for label, rules_path in (("50 rules", fifty), ("default rules", None)):
        folder = work / label.replace(" ", "-")
        folder.mkdir()
        url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
        engine = create_db_engine(url)
        upgrade(engine)
        engine.dispose()
        settings = Settings(
            data_dir=folder,
            database_url=url,
            field_keys=SecretStr(f'{{"b1": "{_key()}"}}'),
            field_active_key="b1",
            index_key=SecretStr(_key()),
            risk_rules=rules_path,
        )
        run(label, settings, args.holders, args.events)


if __name__ == "__main__":
    main()
