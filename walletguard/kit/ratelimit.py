"""Atomic attempt counters for everything an attacker could guess (passwords, PINs, codes).

An attempt is *reserved* before the secret is checked: one atomic upsert both refuses a locked
key and counts the attempt, so parallel guesses cannot slip past the limit between a read and a
write (the Zitadel GHSA-7h8m-vrxx-vr4m class of bug). A correct guess then resets or refunds it.

Where one secret is checked on every payment (the payment password), ``hold`` does it the other
way round, just as safely: one upsert locks the key's row (creating it at zero) to the end of the
transaction, so every other attempt on that key waits for this one to commit and then sees its
count; a wrong guess is counted (``count_failure``) before the refusal commits, and a right one
writes nothing more unless there were failures to clear. Same limits, one statement fewer for the
holder who types the right one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, String, Table, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.sql.selectable import CTE

from walletguard.kit.clock import Clock
from walletguard.kit.db import Base, UtcDateTime, core

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


# Built once (Core, from the table): every payment, login and code check runs them.
_COUNTERS = cast(Table, AttemptCounter.__table__)
_KEY = _COUNTERS.c.key == bindparam("counter_key")
_LOCKED_UNTIL = select(_COUNTERS.c.locked_until).where(_KEY)
_LOCK = (
    update(_COUNTERS)
    .where(_KEY)
    .values(
        locked_until=bindparam("new_locked_until", type_=UtcDateTime()),
        lock_count=bindparam("new_lock_count"),
    )
)
_RESET = update(_COUNTERS).where(_KEY).values(failures=0, locked_until=None)
_COUNT_FAILURE = (
    update(_COUNTERS)
    .where(_KEY)
    .values(
        failures=bindparam("new_failures"),
        locked_until=bindparam("new_locked_until", type_=UtcDateTime()),
        lock_count=bindparam("new_lock_count"),
    )
)


@functools.cache
def _hold_statement(dialect: str) -> ReturningInsert[int, datetime | None, int]:
    """Create the key's row at zero or, if it exists, lock it as it is; return its state."""
    c = _COUNTERS.c
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert_fn(_COUNTERS)
        .values(
            key=bindparam("counter_key"),
            failures=0,
            window_start=bindparam("at", type_=UtcDateTime()),
            locked_until=None,
            lock_count=0,
        )
        # Setting a column to itself changes nothing but takes the row lock (ON CONFLICT DO
        # NOTHING would neither lock nor return the row).
        .on_conflict_do_update(index_elements=[c.key], set_={"failures": c.failures})
        .returning(c.failures, c.locked_until, c.lock_count)
    )


@functools.cache
def held_counter() -> CTE:
    """``AttemptCounters.hold``'s statement as a data-modifying WITH (PostgreSQL), for a
    statement of the caller's own that reads other rows beside the counter it holds: one round
    trip instead of two. Its columns: ``failures``, ``locked_until``, ``lock_count``; its
    parameters: ``counter_key`` and ``at`` (``AttemptCounters.held`` makes the ``Held``)."""
    return _hold_statement("postgresql").cte("held")


@dataclass(frozen=True)
class Held:
    """A key's counter as ``AttemptCounters.hold`` found it, its row locked by this transaction."""

    key: str
    failures: int
    locked_until: datetime | None
    lock_count: int
    at: datetime

    @property
    def retry_after_s(self) -> int:
        """Seconds until the key's lock ends; 0 when it is not locked."""
        if self.locked_until is None or self.locked_until <= self.at:
            return 0
        return math.ceil((self.locked_until - self.at).total_seconds())


@functools.cache
def _reserve_statement(dialect: str, windowed: bool) -> ReturningInsert[int, int]:
    """Count one attempt unless the key is locked (no row back then), in one upsert."""
    c = _COUNTERS.c
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = bindparam("at", type_=UtcDateTime())
    stmt = insert_fn(_COUNTERS).values(
        key=bindparam("counter_key"), failures=1, window_start=now, locked_until=None, lock_count=0
    )
    new_failures: ColumnElement[int] = c.failures + 1
    new_start: ColumnElement[datetime] = c.window_start
    if windowed:
        expired = c.window_start < bindparam("window_floor", type_=UtcDateTime())
        new_failures = case((expired, 1), else_=c.failures + 1)
        new_start = case((expired, stmt.excluded.window_start), else_=c.window_start)
    return stmt.on_conflict_do_update(
        index_elements=[c.key],
        set_={"failures": new_failures, "window_start": new_start},
        where=(c.locked_until.is_(None)) | (c.locked_until <= now),
    ).returning(c.failures, c.lock_count)


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
        now = self.clock.now()
        params: dict[str, object] = {"counter_key": key, "at": now}
        if window is not None:
            params["window_floor"] = now - window
        upsert = _reserve_statement(self.db.get_bind().dialect.name, window is not None)
        row = core(self.db).execute(upsert, params).first()
        if row is None:
            locked_until = self.db.scalar(_LOCKED_UNTIL, {"counter_key": key})
            wait = (locked_until - now).total_seconds() if locked_until else 1
            return Reservation(False, -1, math.ceil(wait))
        failures, lock_count = int(row[0]), int(row[1])
        lock = schedule(failures)
        if lock is not None:
            self.db.execute(
                _LOCK,
                {
                    "counter_key": key,
                    "new_locked_until": now + lock,
                    "new_lock_count": lock_count + 1,
                },
            )
        return Reservation(True, failures, 0)

    def hold(self, key: str) -> Held:
        """Lock ``key``'s counter to the end of the transaction and return it: concurrent
        attempts on the key wait here until this transaction ends. The caller refuses if
        ``retry_after_s`` says it is locked, then checks the secret and calls ``count_failure``
        for a wrong one, ``reset`` for a right one when ``failures`` or a lock are to clear."""
        now = self.clock.now()
        statement = _hold_statement(self.db.get_bind().dialect.name)
        row = core(self.db).execute(statement, {"counter_key": key, "at": now}).one()
        return self.held(key, now, row[0], row[1], row[2])

    def held(
        self, key: str, at: datetime, failures: int, locked_until: datetime | None, lock_count: int
    ) -> Held:
        """The ``Held`` of a counter that a caller's statement held through ``held_counter``
        (``at``: the statement's parameter)."""
        return Held(key, int(failures), locked_until, int(lock_count), at)

    def count_failure(self, held: Held, schedule: EscalatingSchedule) -> int:
        """Count a wrong attempt on a held key, locking it as ``schedule(n, earlier locks)``
        says; returns the consecutive failures now. One statement: the row is this
        transaction's, so the values are written as they are, not re-read."""
        failures = held.failures + 1
        lock = schedule(failures, held.lock_count)
        core(self.db).execute(
            _COUNT_FAILURE,
            {
                "counter_key": held.key,
                "new_failures": failures,
                "new_locked_until": held.at + lock if lock is not None else held.locked_until,
                "new_lock_count": held.lock_count + (1 if lock is not None else 0),
            },
        )
        return failures

    def reset(self, key: str) -> None:
        core(self.db).execute(_RESET, {"counter_key": key})

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
