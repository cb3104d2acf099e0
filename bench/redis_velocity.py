"""Velocity windows in Redis: a quiet key and a busy one, beside a bare Redis round trip.

    .venv/bin/python bench/redis_velocity.py [--redis-url URL] [--events N] [--reads N]

A merchant (``payee:…``) is paid ``--events`` times over the last 24 hours, a holder 10 times;
then both are read ``--reads`` times the way a risk decision reads them (the 10-minute, 1-hour
and 24-hour windows in one ``window_map``), each read beside a ``PING`` on the same client. It
prints the median wall time and this process's CPU of each, and the median time a payment's
``record`` took while the merchant's day was written. A read of the busy key should cost about
what a quiet one does: what comes back is the sums, not the day's payments. Uses its own key
prefix on database 15 of the given server and deletes its keys at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from walletguard.risk.velocity import RedisVelocity  # noqa: E402

SPANS = (timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24))


def timed(call: Callable[[], object], count: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this process, in µs, over ``count`` calls."""
    walls, cpus = [], []
    for _ in range(count):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls) * 1e6, statistics.median(cpus) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--events", type=int, default=20_000, help="the merchant's payments")
    parser.add_argument("--reads", type=int, default=2_000)
    args = parser.parse_args()
    if args.events < 1 or args.reads < 1:
        parser.error("--events and --reads must be at least 1")
    import redis

    client = redis.Redis.from_url(args.redis_url, socket_timeout=5)
    store = RedisVelocity(client, prefix=f"wg-bench-{uuid.uuid4().hex}:")
    now = datetime.now(UTC)
    merchant, holder = f"payee:{uuid.uuid4().hex}", f"holder:{uuid.uuid4()}"
    try:
        step = timedelta(hours=24) / args.events
        writes = []
        for i in range(args.events):
            started = time.perf_counter()
            store.record([merchant], now - timedelta(hours=24) + step * (i + 1), 1_000)
            writes.append(time.perf_counter() - started)
        for i in range(10):
            store.record([holder], now - timedelta(hours=2 * i), 5_000)
        busy = store.windows([merchant], now, SPANS)
        assert busy[(merchant, SPANS[-1])].count >= args.events - 1, busy
        quiet_wall, quiet_cpu = timed(lambda: store.windows([holder], now, SPANS), args.reads)
        busy_wall, busy_cpu = timed(lambda: store.windows([merchant], now, SPANS), args.reads)
        ping_wall, ping_cpu = timed(client.ping, args.reads)
        print(f"Redis {client.info('server')['redis_version']}; medians of {args.reads} reads")
        write_us = statistics.median(writes) * 1e6
        print(f"record, one payment (median of {args.events}): {write_us:.0f} µs")
        print(f"bare PING                     : wall {ping_wall:7.0f} µs, CPU {ping_cpu:6.0f} µs")
        print(
            f"quiet key (10 payments)       : wall {quiet_wall:7.0f} µs, CPU {quiet_cpu:6.0f} µs"
            f"  ({quiet_wall / ping_wall:.1f}x PING)"
        )
        print(
            f"busy key ({args.events:,} payments a day): wall {busy_wall:7.0f} µs, CPU "
            f"{busy_cpu:6.0f} µs  ({busy_wall / ping_wall:.1f}x PING)"
        )
    finally:
        for key in client.scan_iter(match=store.prefix + "*"):
            client.delete(key)


if __name__ == "__main__":
    main()
