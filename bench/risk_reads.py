"""What "several cards drained" reads: the 90-day history, or only the last half hour.

    .venv/bin/python bench/risk_reads.py [--database-url URL] [--rows 200] [--recent 3]
        [--reads 2000]

One holder with ``--rows`` decisions spread over two months, ``--recent`` of them in the last
half hour, in a migrated database (without ``--database-url``, a fresh PostgreSQL database
next to ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``, dropped on exit; ``sqlite``
uses a temporary SQLite file). Times, alternately in two rounds, the two ways the risk engine
can count the cards and payees of the last half hour (``cards_debited_30m``, ``payees_30m``):
reading the history (``repository.history``: up to 200 decisions, newest first, each made into
a ``Past``) or the short read of only its rows of the last half hour
(``repository.recent_cards_and_payees``). Prints the median CPU of this process for one read
(the driver's and SQLAlchemy's work included; the database's own is not in it), and what each
returned.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_risk import seed_holders  # noqa: E402
from bench.payment_statements import _settings, database  # noqa: E402
from walletguard.bootstrap import Container, build_container  # noqa: E402
from walletguard.kit.db import unit_of_work  # noqa: E402
from walletguard.migrations import upgrade  # noqa: E402
from walletguard.risk import repository  # noqa: E402
from walletguard.risk.models import RiskDecision  # noqa: E402
from walletguard.risk.signals import HISTORY_DAYS  # noqa: E402

HALF_HOUR = timedelta(minutes=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", help="a database to use as is, or 'sqlite'")
    parser.add_argument("--rows", type=int, default=200, help="the holder's decisions")
    parser.add_argument("--recent", type=int, default=3, help="of them in the last half hour")
    parser.add_argument("--reads", type=int, default=2000, help="timed reads of each, a round")
    args = parser.parse_args()
    if not 0 <= args.recent <= args.rows or args.reads < 1:
        raise SystemExit("--recent must be between 0 and --rows, --reads at least 1")
    now = datetime.now(UTC)
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as data:
        container = build_container(_settings(url, Path(data)))
        try:
            upgrade(container.engine)
            holder_id = _holder_with_history(container, now, args.rows, args.recent)
            since = now - timedelta(days=HISTORY_DAYS)
            ways: dict[str, Callable[[Any], Any]] = {
                "history (repository.history)": lambda db: repository.history(db, holder_id, since),
                "last half hour (repository.recent_cards_and_payees)": lambda db: (
                    repository.recent_cards_and_payees(db, holder_id, since, now - HALF_HOUR)
                ),
            }
            timed: dict[str, list[float]] = {name: [] for name in ways}
            returned: dict[str, str] = {}
            with container.sessions() as db:
                for _round in range(2):
                    for name, read in ways.items():
                        for _ in range(50):
                            found = read(db)
                        for _ in range(args.reads):
                            started = time.process_time()
                            read(db)
                            timed[name].append(time.process_time() - started)
                        returned[name] = _described(found)
            print(
                f"{container.engine.dialect.name}: one holder, {args.rows} decisions over two "
                f"months, {args.recent} in the last half hour; {2 * args.reads} reads of each"
            )
            for name, times in timed.items():
                median = statistics.median(times) * 1e6
                print(f"  {name:<55} {median:6.0f} µs a read (median)  {returned[name]}")
        finally:
            container.close()


def _described(found: Any) -> str:
    if isinstance(found, list):
        return f"{len(found)} rows"
    cards, payees = found
    return f"{len(cards)} cards, {len(payees)} payees"


def _holder_with_history(container: Container, now: datetime, rows: int, recent: int) -> uuid.UUID:
    chance = random.Random(6222)
    cards = [uuid.uuid4() for _ in range(3)]
    ((holder_id, _device_id),) = seed_holders(container, 1)
    with unit_of_work(container.sessions) as db:
        for index in range(rows):
            if index < recent:
                at = now - timedelta(minutes=5 * index + 1)
            else:
                at = now - timedelta(minutes=chance.randint(31, 60 * 24 * 60))
            db.add(
                RiskDecision(
                    holder_id=holder_id,
                    kind="movement",
                    action=chance.choice(["payment", "payment", "transfer", "top_up"]),
                    outcome="allow",
                    score=0,
                    rules="[]",
                    shadow_rules="[]",
                    reasons_zh="[]",
                    reasons_en="[]",
                    # About what an allowed payment's decision stores.
                    signals='{"signals": "' + "x" * 1500 + '"}',
                    created_at=at,
                    amount_fen=chance.randint(100, 100_000),
                    card_id=chance.choice([*cards, None]),
                    payee_key=f"payee-{chance.randint(1, 30)}",
                    place="上海/上海",
                    lat=31.23,
                    lon=121.47,
                )
            )
    return holder_id


if __name__ == "__main__":
    main()
