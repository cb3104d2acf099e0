"""What the number of SQL statements alone costs a request on this stack, under load.

    .venv/bin/python bench/statement_floor.py [--admin-url URL] [--statements 1,6,12,18,24]
        [--workers 2] [--concurrency 32] [--seconds 15] [--via core|connection]

``bench/bare_app.py``'s ``POST /bare/statements`` does ``n - 1`` primary-key SELECTs and the
bare endpoint's one INSERT, in one transaction, with nothing else: no authentication, no
Python work to speak of. The SELECTs go the way a payment's statements go
(``walletguard.kit.db.core``, straight to psycopg), or with ``--via connection`` through
SQLAlchemy's ``Connection.execute`` (how they went before kit.db.core did that). Each ``n`` is
run closed-loop like ``bench/bench_payments.py`` runs the bare endpoint (same uvicorn flags,
same load generator, a fresh PostgreSQL database), and its requests/s is printed as a share of
``n = 1``'s, measured in the same run. That share is the most a payment sending ``n``
statements could reach against the bare endpoint, even if everything else it does cost
nothing: the floor the spec's ">= 50 % of the bare endpoint" is
judged against. Noise as in the payment benchmark: compare runs by their ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_payments import (  # noqa: E402
    DEFAULT_ADMIN_URL,
    Children,
    bare_app_env,
    closed_loop,
    fresh_database,
    machine_busy_share,
    server,
    statement_requests,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--admin-url", default=os.environ.get("WALLETGUARD_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL)
    )
    parser.add_argument("--statements", default="1,6,12,18,24")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--via",
        choices=("core", "connection"),
        default="core",
        help="send the SELECTs with walletguard.kit.db.core (as a payment does) or with "
        "SQLAlchemy's Connection.execute",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.statements.split(",")]
    if 1 not in counts:
        counts.insert(0, 1)
    children = Children()
    busy_before = machine_busy_share()
    results: dict[int, tuple[float, float]] = {}
    try:
        with (
            fresh_database(make_url(args.admin_url)) as database_url,
            tempfile.TemporaryDirectory() as folder,
        ):
            env = bare_app_env(database_url)
            with server(children, ["bench.bare_app:app"], env, args.workers) as target:
                for n in counts:
                    print(f"... {n} statement(s) a request", file=sys.stderr, flush=True)
                    _, result = closed_loop(
                        children,
                        target,
                        lambda count, n=n: statement_requests(n, count, 16, args.via),
                        Path(folder),
                        seconds=args.seconds,
                        concurrency=args.concurrency,
                        warmup=args.warmup,
                    )
                    if result.errors:
                        raise SystemExit(f"{result.errors} errors: {result.statuses}")
                    results[n] = (result.rps, result.server_cpu_ms or 0.0)
    finally:
        children.stop_all()
    busy_after = machine_busy_share()
    print(
        f"uvicorn --workers {args.workers}; loadgen --concurrency {args.concurrency}; "
        f"runs of ~{args.seconds:.0f} s; statements via {args.via}; "
        f"CPU busy with other work before/after: "
        f"{busy_before:.0%}, {busy_after:.0%}"
    )
    base = results[1][0]
    for n, (rps, cpu_ms) in results.items():
        print(
            f"  {n:3d} statement(s): {rps:7.1f} req/s, server CPU {cpu_ms:5.2f} ms/req, "
            f"{rps / base:6.1%} of 1 statement"
        )


if __name__ == "__main__":
    main()
