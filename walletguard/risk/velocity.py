"""Velocity: how many movements, and how much money, under one key in a sliding window.

Keys are ``holder:<id>``, ``card:<id>``, ``payee:<blind index>``, ``ip:<blind index>``. Two stores
with one interface: the database (the embedded default; per-minute buckets in ``risk_velocity``,
written in the caller's transaction so a rolled-back movement is not counted) and Redis
(production: one sorted set per key, scored by time, shared by every process; a write is not
transactional with the database, so a refused movement may still count — it errs on the side of
caution).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from walletguard.risk.models import RiskVelocityBucket

# Nothing older than this is ever asked for; older entries are trimmed.
RETENTION = timedelta(days=2)


@dataclass(frozen=True)
class Window:
    count: int
    sum_fen: int


class VelocityStore(Protocol):
    def record(self, keys: Iterable[str], at: datetime, amount_fen: int) -> None:
        """Count one event of ``amount_fen`` under each key at ``at``."""
        ...

    def windows(
        self, keys: Sequence[str], now: datetime, spans: Sequence[timedelta]
    ) -> dict[tuple[str, timedelta], Window]:
        """Count and sum under each key over each span ending at ``now``."""
        ...


class DatabaseVelocity:
    """Per-minute buckets, upserted in the caller's transaction; a window sums the buckets that
    start inside it (minute resolution: an event up to a minute older than the span may count,
    which errs on the side of caution)."""

    def __init__(self, db: Session) -> None:
        self.db = db

    @staticmethod
    def minute_of(at: datetime) -> datetime:
        return at.replace(second=0, microsecond=0)

    def record(self, keys: Iterable[str], at: datetime, amount_fen: int) -> None:
        minute = self.minute_of(at)
        dialect = self.db.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        table = RiskVelocityBucket.__table__
        for key in keys:
            statement = insert(RiskVelocityBucket).values(
                key=key, minute=minute, count=1, sum_fen=amount_fen
            )
            self.db.execute(
                statement.on_conflict_do_update(
                    index_elements=["key", "minute"],
                    set_={
                        "count": table.c.count + 1,
                        "sum_fen": table.c.sum_fen + amount_fen,
                    },
                )
            )

    def windows(
        self, keys: Sequence[str], now: datetime, spans: Sequence[timedelta]
    ) -> dict[tuple[str, timedelta], Window]:
        """One aggregate query over the primary key (key, minute)."""
        minute = RiskVelocityBucket.minute
        columns: list[Any] = [RiskVelocityBucket.key]
        for span in spans:
            inside = minute > self.minute_of(now - span) - timedelta(seconds=1)
            columns.append(func.sum(case((inside, RiskVelocityBucket.count), else_=0)))
            columns.append(func.sum(case((inside, RiskVelocityBucket.sum_fen), else_=0)))
        rows = self.db.execute(
            select(*columns)
            .where(
                RiskVelocityBucket.key.in_(list(keys)),
                minute >= self.minute_of(now - max(spans)),
                minute <= now,
            )
            .group_by(RiskVelocityBucket.key)
        ).all()
        found = {row[0]: row[1:] for row in rows}
        out: dict[tuple[str, timedelta], Window] = {}
        for key in keys:
            sums = found.get(key)
            for index, span in enumerate(spans):
                if sums is None:
                    out[(key, span)] = Window(0, 0)
                else:
                    out[(key, span)] = Window(
                        int(sums[2 * index] or 0), int(sums[2 * index + 1] or 0)
                    )
        return out

    def trim(self, now: datetime) -> int:
        """Delete buckets no window reaches any more (a worker may call it)."""
        result = self.db.execute(
            delete(RiskVelocityBucket)
            .where(RiskVelocityBucket.minute < now - RETENTION)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def count(self) -> int:
        total = self.db.scalar(select(func.sum(RiskVelocityBucket.count)))
        return int(total or 0)


class RedisVelocity:
    """One sorted set per key: member ``<uuid>:<amount>``, score = epoch seconds."""

    def __init__(self, client: Any, prefix: str = "wg:vel:") -> None:
        self.client = client
        self.prefix = prefix

    def record(self, keys: Iterable[str], at: datetime, amount_fen: int) -> None:
        score = at.timestamp()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            name = self.prefix + key
            pipe.zadd(name, {f"{uuid.uuid4().hex}:{amount_fen}": score})
            pipe.zremrangebyscore(name, "-inf", score - RETENTION.total_seconds())
            pipe.expire(name, int(RETENTION.total_seconds()))
        pipe.execute()

    def windows(
        self, keys: Sequence[str], now: datetime, spans: Sequence[timedelta]
    ) -> dict[tuple[str, timedelta], Window]:
        longest = max(spans)
        end = now.timestamp()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebyscore(
                self.prefix + key, f"({end - longest.total_seconds()}", end, withscores=True
            )
        results = pipe.execute()
        out: dict[tuple[str, timedelta], Window] = {}
        for key, members in zip(keys, results, strict=True):
            parsed = [
                (float(score), int(member.decode().rsplit(":", 1)[1])) for member, score in members
            ]
            for span in spans:
                since = end - span.total_seconds()
                hits = [amount for at, amount in parsed if at > since]
                out[(key, span)] = Window(len(hits), sum(hits))
        return out


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
