"""Atomic attempt counters for everything an attacker could guess (passwords, PINs, codes).

An attempt is *reserved* before the secret is checked: one atomic upsert both refuses a locked
key and counts the attempt, so parallel guesses cannot slip past the limit between a read and a
write (the Zitadel GHSA-7h8m-vrxx-vr4m class of bug). A correct guess then resets or refunds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, String, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from walletguard.kit.clock import Clock
from walletguard.kit.db import Base

LockSchedule = Callable[[int], timedelta | None]
# A schedule that also knows how many locks the key has had before (locks that grow each time).
EscalatingSchedule = Callable[[int, int], timedelta | None]


class AttemptCounter(Base):
    __tablename__ = "attempt_counters"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_start: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    lock_count: Mapped[int] = mapped_column(default=0)


@dataclass(frozen=True)
class Reservation:
    allowed: bool
    failures: int
    retry_after_s: int


class AttemptCounters:
    def __init__(self, db: Session, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def reserve(
        self, key: str, schedule: LockSchedule, *, window: timedelta | None = None
    ) -> Reservation:
        """Count one attempt on ``key`` unless it is locked; lock it as ``schedule`` says.

        ``schedule(n)`` gives the lock to apply after the n-th consecutive counted attempt (None
        for no lock). With ``window``, counts older than the window start again from one.
        """
        return self.reserve_escalating(
            key, lambda failures, _locks: schedule(failures), window=window
        )

    def reserve_escalating(
        self, key: str, schedule: EscalatingSchedule, *, window: timedelta | None = None
    ) -> Reservation:
        """``reserve`` whose ``schedule(n, locks)`` also gets the number of earlier locks, read
        in the same statement that counts the attempt."""
        now = self.clock.now()
        table = AttemptCounter.__table__
        dialect = self.db.get_bind().dialect.name
        insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert_fn(AttemptCounter).values(
            key=key, failures=1, window_start=now, locked_until=None, lock_count=0
        )
        new_failures: ColumnElement[int] = table.c.failures + 1
        new_start: ColumnElement[datetime] = table.c.window_start
        if window is not None:
            expired = table.c.window_start < now - window
            new_failures = case((expired, 1), else_=table.c.failures + 1)
            new_start = case((expired, stmt.excluded.window_start), else_=table.c.window_start)
        upsert = stmt.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={"failures": new_failures, "window_start": new_start},
            where=(table.c.locked_until.is_(None)) | (table.c.locked_until <= now),
        ).returning(table.c.failures, table.c.lock_count)
        row = self.db.execute(upsert).first()
        if row is None:
            locked_until = self.db.scalar(
                select(AttemptCounter.locked_until).where(AttemptCounter.key == key)
            )
            wait = (locked_until - now).total_seconds() if locked_until else 1
            return Reservation(False, -1, math.ceil(wait))
        failures, lock_count = int(row[0]), int(row[1])
        lock = schedule(failures, lock_count)
        if lock is not None:
            self.db.execute(
                update(AttemptCounter)
                .where(AttemptCounter.key == key)
                .values(locked_until=now + lock, lock_count=lock_count + 1)
            )
        return Reservation(True, failures, 0)

    def reset(self, key: str) -> None:
        self.db.execute(
            update(AttemptCounter)
            .where(AttemptCounter.key == key)
            .values(failures=0, locked_until=None)
        )

    def refund(self, key: str) -> None:
        """Take back one reserved attempt (a success that must not reset the whole count)."""
        self.db.execute(
            update(AttemptCounter)
            .where(AttemptCounter.key == key, AttemptCounter.failures > 0)
            .values(failures=AttemptCounter.failures - 1)
        )

    def lock_count(self, key: str) -> int:
        return int(
            self.db.scalar(select(AttemptCounter.lock_count).where(AttemptCounter.key == key)) or 0
        )
