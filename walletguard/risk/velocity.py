"""Velocity: how many movements, and how much money, under one key in a sliding window.

Keys are ``holder:<id>``, ``card:<id>``, ``payee:<blind index>``, ``ip:<blind index>``. Two stores
with one interface: the database (the embedded default; per-minute buckets in ``risk_velocity``,
written in the caller's transaction so a rolled-back movement is not counted — as the last
writes before COMMIT, because a busy IP's or merchant's bucket is a row every payment updates:
written mid-request, it would stay locked, and queue every other payment, until COMMIT) and Redis
(production: the same per-minute buckets and per-hour ones, in hashes shared by every process,
summed in Redis; a write is not transactional with the database, so a refused movement may still
count — it errs on the side of caution).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, case, delete, func, null, select, text, union_all
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from walletguard.kit.db import CommitQueue, core, send_before_commit
from walletguard.risk.models import RiskVelocityBucket

# Nothing older than this is ever asked for; older entries are trimmed.
RETENTION = timedelta(days=2)
# Each minute of a key is kept in up to this many rows; a transaction adds to one of them.
SHARDS = 16


@dataclass(frozen=True)
class Window:
    count: int
    sum_fen: int


@dataclass(frozen=True)
class WindowQuery:
    """What ``DatabaseVelocity.window_query`` asks: its statement (one per ``shape``, the
    number of spans of each key), its parameters, and each key with its spans, sorted."""

    shape: tuple[int, ...]
    statement: Any
    params: dict[str, Any]
    asked: list[tuple[str, list[timedelta]]]


class VelocityStore(Protocol):
    def record(self, keys: Iterable[str], at: datetime, amount_fen: int) -> None:
        """Count one event of ``amount_fen`` under each key at ``at``."""
        ...

    def window_map(
        self, wanted: Mapping[str, Sequence[timedelta]], now: datetime
    ) -> dict[tuple[str, timedelta], Window]:
        """Count and sum under each key over each of *its* spans ending at ``now`` (a key is
        read only as far back as its longest span: a busy IP's day is not read for its hour)."""
        ...

    def windows(
        self, keys: Sequence[str], now: datetime, spans: Sequence[timedelta]
    ) -> dict[tuple[str, timedelta], Window]:
        """Count and sum under each key over each span ending at ``now``."""
        ...


def _same_spans(keys: Sequence[str], spans: Sequence[timedelta]) -> dict[str, Sequence[timedelta]]:
    return dict.fromkeys(keys, spans)


class DatabaseVelocity:
    """Per-minute buckets (in shards), upserted in the caller's transaction just before it
    commits; a window sums the buckets that start inside it (minute resolution: an event up to
    a minute older than the span may count, which errs on the side of caution)."""

    def __init__(self, db: Session) -> None:
        self.db = db

    @staticmethod
    def minute_of(at: datetime) -> datetime:
        return at.replace(second=0, microsecond=0)

    def record(self, keys: Iterable[str], at: datetime, amount_fen: int) -> None:
        """Queued in the caller's transaction and upserted just before it commits (see
        ``_write_buckets``); reads of this session count what it queued."""
        minute = self.minute_of(at)
        for key in set(keys):  # ordered when written
            _QUEUE.add(self.db, _Count(key, minute, amount_fen))

    def window_map(
        self, wanted: Mapping[str, Sequence[timedelta]], now: datetime
    ) -> dict[tuple[str, timedelta], Window]:
        """One round trip: per key, an aggregate over the primary key (key, minute) back to the
        start of that key's longest span, glued with UNION ALL. Each key carries only its own
        spans (the longest one is the plain sum), and the spans are parameters: one cached
        statement serves every event with the same shape."""
        query = self.window_query(wanted, now)
        if query is None:
            return {}
        return self.windows_from(query, core(self.db).execute(query.statement, query.params), now)

    def window_query(
        self, wanted: Mapping[str, Sequence[timedelta]], now: datetime
    ) -> WindowQuery | None:
        """``window_map``'s statement, for a caller that reads it with a statement of its own
        (the risk engine's first read: ``repository.holder_and_events``); None when nothing is
        asked. ``windows_from`` then makes the windows of its rows."""
        asked = [(key, sorted(set(key_spans))) for key, key_spans in wanted.items() if key_spans]
        if not asked:
            return None
        params: dict[str, Any] = {"now": now}
        for index, (key, key_spans) in enumerate(asked):
            params[f"key_{index}"] = key
            params[f"since_{index}"] = self.minute_of(now - key_spans[-1])
            for inner, span in enumerate(key_spans[:-1]):
                params[f"start_{index}_{inner}"] = self.minute_of(now - span)
        shape = tuple(len(key_spans) for _key, key_spans in asked)
        return WindowQuery(shape, _windows_query(shape), params, asked)

    def windows_from(
        self, query: WindowQuery, rows: Iterable[Sequence[Any]], now: datetime
    ) -> dict[tuple[str, timedelta], Window]:
        """The windows of ``query`` from its rows (each the key, then count and sum for each
        of its spans, shortest first), with what this session has queued and not written."""
        out: dict[tuple[str, timedelta], Window] = {}
        found: dict[str, Any] = {}
        for row in rows:
            found[row[0]] = row[1:]
        queued = _QUEUE.pending(self.db)
        for key, key_spans in query.asked:
            sums = found.get(key)
            for index, span in enumerate(key_spans):
                count = sum_fen = 0
                if sums is not None:
                    count, sum_fen = int(sums[2 * index] or 0), int(sums[2 * index + 1] or 0)
                start = self.minute_of(now - span)
                for mine in queued:
                    if mine.key == key and start <= mine.minute <= now:
                        count += 1
                        sum_fen += mine.amount_fen
                out[(key, span)] = Window(count, sum_fen)
        return out

    def windows(
        self, keys: Sequence[str], now: datetime, spans: Sequence[timedelta]
    ) -> dict[tuple[str, timedelta], Window]:
        return self.window_map(_same_spans(keys, spans), now)

    def trim(self, now: datetime) -> int:
        """Delete buckets no window reaches any more (a worker may call it)."""
        _QUEUE.write_now(self.db)
        result = self.db.execute(
            delete(RiskVelocityBucket)
            .where(RiskVelocityBucket.minute < now - RETENTION)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def count(self) -> int:
        _QUEUE.write_now(self.db)
        total = self.db.scalar(select(func.sum(RiskVelocityBucket.count)))
        return int(total or 0)


_BUCKETS = cast(Table, RiskVelocityBucket.__table__)


def _upsert_sqlite() -> Any:
    """INSERT … ON CONFLICT (key, minute, shard) DO UPDATE adding to the bucket (SQLite; one
    parameter set a bucket, executed as a batch)."""
    statement = sqlite_insert(_BUCKETS)
    return statement.on_conflict_do_update(
        index_elements=[_BUCKETS.c.key, _BUCKETS.c.minute, _BUCKETS.c.shard],
        set_={
            "count": _BUCKETS.c.count + statement.excluded.count,
            "sum_fen": _BUCKETS.c.sum_fen + statement.excluded.sum_fen,
        },
    )


_UPSERT_SQLITE = _upsert_sqlite()


@dataclass(frozen=True)
class _Count:
    key: str
    minute: datetime
    amount_fen: int


def _write_buckets(db: Session, counts: list[_Count]) -> None:
    """One upsert of every bucket (on SQLite a batch, one parameter set a bucket) into one shard,
    drawn once for the session: two movements under the same busy key meet on a row only when
    they drew the same shard. Every write of a transaction goes to its one shard, buckets in a
    fixed order, so that writers meeting on a shard lock its rows in the same order (no
    deadlock, even for a transaction that writes its queue twice)."""
    shard: int = db.info.setdefault(_SHARD, secrets.randbelow(SHARDS))
    buckets: dict[tuple[str, datetime], list[int]] = {}
    for count in counts:
        bucket = buckets.setdefault((count.key, count.minute), [0, 0])
        bucket[0] += 1
        bucket[1] += count.amount_fen
    ordered = sorted(buckets.items())
    if db.get_bind().dialect.name == "postgresql":
        # One statement, not a batch of one per bucket: the rows as one JSON array, in the same
        # order (psycopg builds array parameters element by element in Python; json is C).
        rows = [[key, minute.isoformat(), n, total] for (key, minute), (n, total) in ordered]
        # At COMMIT, sent with it (``send_before_commit``): the rows are locked only while
        # the server writes them.
        send_before_commit(
            db, _UPSERT_JSON_POSTGRESQL, {"buckets": json.dumps(rows), "shard": shard}
        )
        return
    core(db).execute(
        _UPSERT_SQLITE,
        [
            {"key": key, "minute": minute, "shard": shard, "count": number, "sum_fen": total}
            for (key, minute), (number, total) in ordered
        ],
    )


# The buckets' rows, each [key, minute (ISO 8601, UTC), count, sum], added in array order, so
# that conflicting rows are locked in the order the writer sorted them (migration 0010).
_UPSERT_JSON_POSTGRESQL = text(
    "SELECT walletguard_velocity_add(CAST(:shard AS smallint), CAST(:buckets AS json))"
)

_SHARD = "walletguard.risk.velocity_shard"
# Before the audit chain (order 100): the head is the one row locked by every writer.
_QUEUE: CommitQueue[_Count] = CommitQueue("risk_velocity", _write_buckets, order=10)


@lru_cache(maxsize=64)
def _windows_query(shape: tuple[int, ...]) -> Any:
    """Per key ``key_<k>`` with ``shape[k]`` spans (read back to ``since_<k>``, the longest):
    the key, then count and sum since ``start_<k>_<i>`` for each shorter span, then the plain
    count and sum; shorter rows are padded with NULLs for the UNION."""
    minute = _BUCKETS.c.minute
    width = max(shape)
    selects = []
    for key, spans in enumerate(shape):
        columns: list[Any] = [_BUCKETS.c.key]
        for inner in range(spans - 1):
            inside = minute >= bindparam(f"start_{key}_{inner}", type_=minute.type)
            columns.append(func.sum(case((inside, _BUCKETS.c.count), else_=0)))
            columns.append(func.sum(case((inside, _BUCKETS.c.sum_fen), else_=0)))
        columns += [func.sum(_BUCKETS.c.count), func.sum(_BUCKETS.c.sum_fen)]
        columns += [null()] * (2 * (width - spans))
        selects.append(
            select(*columns)
            .where(
                _BUCKETS.c.key == bindparam(f"key_{key}", type_=_BUCKETS.c.key.type),
                minute >= bindparam(f"since_{key}", type_=minute.type),
                minute <= bindparam("now", type_=minute.type),
            )
            .group_by(_BUCKETS.c.key)
        )
    return selects[0] if len(shape) == 1 else union_all(*selects)


# Sums one key's buckets over several windows, in Redis. KEYS: the key's minute hashes (one an
# hour: fields "<minute>c" = count and "<minute>s" = sum, minutes since the epoch), then its hour
# hashes (one a day: fields "<hour>c", "<hour>s"). ARGV: the minute of "now", the number of
# windows, each window's first minute, the number of minute hashes, the hour of each. A window
# is its first hour's minutes from its first minute, the last hour's minutes up to "now", and
# the whole hours between from the hour totals. Returns count, sum for each window.
_SUM_WINDOWS = """
local now = tonumber(ARGV[1])
local last = math.floor(now / 60)
local windows = tonumber(ARGV[2])
local firsts, totals = {}, {}
for i = 1, windows do
  firsts[i] = tonumber(ARGV[2 + i])
  totals[2 * i - 1] = 0
  totals[2 * i] = 0
end
local hashes = tonumber(ARGV[3 + windows])
for k = 1, #KEYS do
  local flat = redis.call('HGETALL', KEYS[k])
  local hour = k <= hashes and tonumber(ARGV[3 + windows + k]) or nil
  for j = 1, #flat, 2 do
    local field = flat[j]
    local at = tonumber(string.sub(field, 1, -2))
    local slot = (string.sub(field, -1) == 'c') and 1 or 0
    local value = tonumber(flat[j + 1])
    for i = 1, windows do
      local first = firsts[i]
      local start = math.floor(first / 60)
      local counted
      if hour then
        counted = (hour == start or hour == last) and at >= first and at <= now
      else
        counted = at > start and at < last
      end
      if counted then
        totals[2 * i - slot] = totals[2 * i - slot] + value
      end
    end
  end
end
return totals
"""


# Redis names a script by its SHA-1.
_SUM_WINDOWS_SHA = hashlib.sha1(_SUM_WINDOWS.encode(), usedforsecurity=False).hexdigest()


def _epoch_minute(at: datetime) -> int:
    return int(at.timestamp()) // 60


class RedisVelocity:
    """Buckets by the minute, as in the database, and by the hour: per key, one hash an hour of
    its minutes (``<prefix>{<key>}:m:<hour>``, fields ``<minute>c`` count and ``<minute>s``
    sum) and one hash a day of its hours (``<prefix>{<key>}:h:<day>``, fields ``<hour>c`` and
    ``<hour>s``); the braces keep a key's hashes in one Redis Cluster slot, and each hash
    expires ``RETENTION`` (and an hour) after its last write. A Lua script sums a window in
    Redis from its first and last hours' minutes and the whole hours between: a busy IP's or
    merchant's day is read from at most a few hundred fields whatever its number of payments,
    and only the sums come back."""

    def __init__(self, client: Any, prefix: str = "wg:vel:") -> None:
        self.client = client
        self.prefix = prefix

    def _minutes(self, key: str, hour: int) -> str:
        return f"{self.prefix}{{{key}}}:m:{hour}"

    def _hours(self, key: str, day: int) -> str:
        return f"{self.prefix}{{{key}}}:h:{day}"

    def record(self, keys: Iterable[str], at: datetime, amount_fen: int) -> None:
        minute = _epoch_minute(at)
        hour = minute // 60
        lifetime = int((RETENTION + timedelta(hours=1)).total_seconds())
        pipe = self.client.pipeline(transaction=False)
        for key in set(keys):
            for name, bucket in (
                (self._minutes(key, hour), minute),
                (self._hours(key, hour // 24), hour),
            ):
                pipe.hincrby(name, f"{bucket}c", 1)
                pipe.hincrby(name, f"{bucket}s", amount_fen)
                pipe.expire(name, lifetime)
        pipe.execute()

    def window_map(
        self, wanted: Mapping[str, Sequence[timedelta]], now: datetime
    ) -> dict[tuple[str, timedelta], Window]:
        """One round trip: one call of the script a key, over the hashes its spans reach."""
        import redis

        asked = [(key, list(spans)) for key, spans in wanted.items() if spans]
        if not asked:
            return {}
        last = _epoch_minute(now)
        calls = []
        for key, spans in asked:
            firsts = [_epoch_minute(now - span) for span in spans]
            hours = sorted({first // 60 for first in firsts} | {last // 60})
            between = range(min(firsts) // 60 + 1, last // 60)  # whole hours, from their totals
            days = range(between.start // 24, (between.stop - 1) // 24 + 1) if between else range(0)
            keys = [self._minutes(key, hour) for hour in hours]
            keys += [self._hours(key, day) for day in days]
            calls.append((keys, [last, len(firsts), *firsts, len(hours), *hours]))
        try:
            results = self._sum(calls)
        except redis.exceptions.NoScriptError:  # new to this Redis, or it restarted or flushed
            results = self._sum(calls, send_script=True)
        out: dict[tuple[str, timedelta], Window] = {}
        for (key, spans), totals in zip(asked, results, strict=True):
            for index, span in enumerate(spans):
                out[(key, span)] = Window(int(totals[2 * index]), int(totals[2 * index + 1]))
        return out

    def _sum(
        self, calls: list[tuple[list[str], list[int]]], *, send_script: bool = False
    ) -> list[Any]:
        """The script called by its hash (known here: a store is made for each request, and
        loading it each time would be one more round trip), or sent whole when Redis did not
        know it (EVAL keeps it for the next call; no flush can come between)."""
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            if send_script:
                pipe.eval(_SUM_WINDOWS, len(keys), *keys, *args)
            else:
                pipe.evalsha(_SUM_WINDOWS_SHA, len(keys), *keys, *args)
        return list(pipe.execute())

    def windows(
        self, keys: Sequence[str], now: datetime, spans: Sequence[timedelta]
    ) -> dict[tuple[str, timedelta], Window]:
        return self.window_map(_same_spans(keys, spans), now)


_REDIS_CLIENTS: dict[str, Any] = {}


def redis_client(url: str) -> Any:
    """One connection pool per URL per process."""
    client = _REDIS_CLIENTS.get(url)
    if client is None:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        _REDIS_CLIENTS[url] = client
    return client


def velocity_store(db: Session, redis_url: str | None) -> VelocityStore:
    if redis_url:
        return RedisVelocity(redis_client(redis_url))
    return DatabaseVelocity(db)
