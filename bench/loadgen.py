"""HTTP load from a second process: closed-loop (max throughput) or open-loop (fixed rate).

    python bench/loadgen.py --url URL --requests-file FILE.jsonl --concurrency 32 [--rate R]

Each line of the requests file is {"method", "path", "headers", "json"}; they are sent in order,
round-robin over connections. Prints one JSON object: requests, errors, seconds, rps, latency
percentiles in ms, and the requests that took over 50 ms (the first 500 by when each was due,
seconds after the start, with its latency: a stall shows as one burst). Open-loop mode
(``--rate``) schedules requests at fixed times and measures latency from the scheduled time,
so a slow server cannot hide its queueing (coordinated omission).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from itertools import count
from typing import Any
from urllib.parse import urlsplit


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


SLOW_MS = 50.0  # SPEC section 3's p99 bound at half load
MAX_SLOW = 500


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests-file", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop requests/s; 0 = closed")
    args = parser.parse_args()

    with open(args.requests_file, encoding="utf-8") as handle:
        requests: list[dict[str, Any]] = [json.loads(line) for line in handle if line.strip()]
    target = urlsplit(args.url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    next_index: Iterator[int] = count()
    index_lock = threading.Lock()
    latencies: list[float] = []
    # (when it was due, seconds after the start; its latency, ms) of the requests over SLOW_MS
    slow: list[tuple[float, float]] = []
    statuses: dict[int, int] = {}
    errors = 0
    results_lock = threading.Lock()
    started = time.perf_counter()

    def worker() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while True:
            with index_lock:
                i = next(next_index)
            if i >= len(requests):
                break
            request = requests[i]
            scheduled = started + i / args.rate if args.rate else time.perf_counter()
            if args.rate:
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            body = (
                json.dumps(request.get("json")).encode()
                if request.get("json") is not None
                else None
            )
            headers = {"content-type": "application/json", **request.get("headers", {})}
            try:
                conn.request(request["method"], request["path"], body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                status = 0
            elapsed = (time.perf_counter() - scheduled) * 1000
            with results_lock:
                latencies.append(elapsed)
                if elapsed > SLOW_MS:
                    slow.append((scheduled - started, elapsed))
                statuses[status] = statuses.get(status, 0) + 1
                if not 200 <= status < 300:
                    errors += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    json.dump(
        {
            "requests": len(latencies),
            "errors": errors,
            "statuses": statuses,
            "seconds": round(seconds, 3),
            "rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
            "p95_ms": round(percentile(latencies, 95), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "slow": [[round(at, 3), round(ms, 1)] for at, ms in sorted(slow)[:MAX_SLOW]],
            "slow_count": len(slow),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
