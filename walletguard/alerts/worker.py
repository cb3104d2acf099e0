"""The delivery loop: claim due outbox rows, deliver them, record the outcome.

A claim is a **lease**: the row gets ``locked_until = now + WALLETGUARD_ALERT_LEASE_SECONDS`` and
the claim's token in one short transaction that commits before anything is sent. On PostgreSQL
the claim selects with ``FOR UPDATE SKIP LOCKED`` so concurrent workers take different rows
without waiting; on SQLite (writers queue behind ``BEGIN IMMEDIATE``) the conditional ``UPDATE``
re-checks the lease. Delivery happens outside any transaction. The outcome is written only
where the claim still holds (``claimed_by`` = our token): delivered, or back to pending with
exponential backoff, or ``dead`` after ``WALLETGUARD_ALERT_MAX_ATTEMPTS``.

A worker killed mid-delivery loses nothing: its rows stay pending, their leases expire, and the
next worker delivers them. Delivery is at-least-once (a worker that dies after the channel took
the alert but before recording it causes one repeat); webhook receivers deduplicate on
``X-Walletguard-Delivery``.

``deliver_due`` is the synchronous entry point (tests, the simulator, ``walletguard worker
--once``); ``run_worker`` loops; ``in_process_delivery`` runs that loop on a thread inside
``serve``/``demo`` on the embedded default (started from the app's lifespan). The loop also runs
the periodic jobs it is given between rounds (``walletguard worker`` and the in-process thread
give it the risk engine's housekeeping, every ``HOUSEKEEPING_SECONDS``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, Table, or_, select, update
from sqlalchemy.orm import Session

# Every table, so the outbox's foreign keys resolve in a process that imports nothing else.
import walletguard.models  # noqa: F401
from walletguard.alerts.channels import (
    EMAIL,
    IN_APP,
    SMS,
    WEBHOOK,
    ChannelAdapters,
    DeliveryFailed,
    Destination,
    OutgoingAlert,
    default_adapters,
)
from walletguard.alerts.models import Alert, AlertDelivery
from walletguard.alerts.service import (
    DEAD,
    DELIVERED,
    DESTINATION_CONTEXT,
    PENDING,
    channel_views,
    destination_of,
)
from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.kit.clock import SystemClock
from walletguard.kit.db import is_postgres, one_of, unit_of_work
from walletguard.kit.heap import frozen_heap
from walletguard.kit.i18n import Language

log = logging.getLogger("walletguard.alerts")

CLAIM_BATCH = 10


@dataclass(frozen=True)
class DeliveryJob:
    """One claimed outbox row, with everything needed to deliver it without the database."""

    delivery_id: int
    claim: str
    channel: str
    attempts: int
    alert: OutgoingAlert
    destination: Destination


def backoff(container: Container, attempts: int) -> timedelta:
    """The wait before the next try after ``attempts`` tries: base × 2^(attempts − 1), capped."""
    settings = container.settings
    seconds = settings.alert_retry_base_seconds * (2 ** max(0, min(attempts - 1, 20)))
    return timedelta(seconds=min(seconds, settings.alert_retry_max_seconds))


def _due(now: datetime) -> list[ColumnElement[bool]]:
    return [
        # 'pending' written into the SQL: the rows of the partial index of pending deliveries.
        one_of(cast(Table, AlertDelivery.__table__).c.status, [PENDING]),
        AlertDelivery.channel != IN_APP,
        AlertDelivery.due_at <= now,
        or_(AlertDelivery.locked_until.is_(None), AlertDelivery.locked_until <= now),
    ]


def _outgoing(row: AlertDelivery, alert: Alert) -> OutgoingAlert:
    language: Language = "en" if alert.language == "en" else "zh-CN"
    return OutgoingAlert(
        delivery_id=row.id,
        alert_id=alert.id,
        kind=alert.kind,
        severity=alert.severity,
        created_at=alert.created_at,
        language=language,
        titles={"zh-CN": alert.title_zh, "en": alert.title_en},
        bodies={"zh-CN": alert.body_zh, "en": alert.body_en},
        not_me_url=alert.not_me_url,
        data=json.loads(alert.data),
    )


def _destination(db: Session, container: Container, row: AlertDelivery) -> Destination | None:
    if row.channel == SMS:
        if row.destination_enc is None:
            return None
        return Destination(
            container.cipher.decrypt(row.destination_enc, context=DESTINATION_CONTEXT)
        )
    if row.channel in (EMAIL, WEBHOOK):
        view = channel_views(db, row.holder_id, container.clock.now())[row.channel]
        found = destination_of(container, view)
        if found is None:
            return None
        return Destination(found[0], found[1])
    return None


def _give_up(db: Session, container: Container, row: AlertDelivery, reason: str) -> None:
    row.status = DEAD
    row.locked_until = None
    row.last_error = reason[:255]
    audit.record(
        db,
        container.clock,
        "alerts.delivery_dead",
        holder_id=row.holder_id,
        data={
            "alert_id": str(row.alert_id),
            "delivery_id": row.id,
            "channel": row.channel,
            "attempts": row.attempts,
            "reason": reason[:255],
        },
    )


def claim_due(
    container: Container, *, limit: int = CLAIM_BATCH, adapters: ChannelAdapters | None = None
) -> list[DeliveryJob]:
    """Lease up to ``limit`` due rows to a new claim and commit; the jobs to deliver.

    Rows that cannot be delivered at all (no address any more, no adapter) are dead at once.
    """
    claim = uuid.uuid4().hex
    now = container.clock.now()
    lease_until = now + timedelta(seconds=container.settings.alert_lease_seconds)
    jobs: list[DeliveryJob] = []
    with unit_of_work(container.sessions) as db:
        query = (
            select(AlertDelivery.id)
            .where(*_due(now))
            .order_by(AlertDelivery.due_at, AlertDelivery.id)
            .limit(limit)
        )
        if is_postgres(db):
            query = query.with_for_update(skip_locked=True)
        ids = list(db.scalars(query))
        if not ids:
            return []
        db.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id.in_(ids), *_due(now))
            .values(
                locked_until=lease_until,
                claimed_by=claim,
                attempts=AlertDelivery.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        rows = db.scalars(
            select(AlertDelivery)
            .where(AlertDelivery.id.in_(ids), AlertDelivery.claimed_by == claim)
            .order_by(AlertDelivery.id)
        ).all()
        for row in rows:
            alert = db.get(Alert, row.alert_id)
            destination = _destination(db, container, row)
            if alert is None or destination is None:
                _give_up(db, container, row, "no destination")
                continue
            if adapters is not None and adapters.get(row.channel) is None:
                _give_up(db, container, row, f"no adapter for {row.channel}")
                continue
            jobs.append(
                DeliveryJob(
                    delivery_id=row.id,
                    claim=claim,
                    channel=row.channel,
                    attempts=row.attempts,
                    alert=_outgoing(row, alert),
                    destination=destination,
                )
            )
    return jobs


def _held(db: Session, job: DeliveryJob) -> AlertDelivery | None:
    """The row, if our claim still holds it (a lease that ran out may have passed on)."""
    row = db.scalar(
        select(AlertDelivery)
        .where(
            AlertDelivery.id == job.delivery_id,
            AlertDelivery.claimed_by == job.claim,
            AlertDelivery.status == PENDING,
        )
        .with_for_update()
    )
    if row is None:
        log.warning("alert delivery %s: the lease ran out before the outcome", job.delivery_id)
    return row


def record_delivered(container: Container, job: DeliveryJob) -> bool:
    with unit_of_work(container.sessions) as db:
        row = _held(db, job)
        if row is None:
            return False
        row.status = DELIVERED
        row.delivered_at = container.clock.now()
        row.locked_until = None
        row.last_error = None
    return True


def record_failure(container: Container, job: DeliveryJob, reason: str) -> str:
    """Schedule the next try, or give up; returns ``pending`` or ``dead``."""
    with unit_of_work(container.sessions) as db:
        row = _held(db, job)
        if row is None:
            return PENDING
        if row.attempts >= container.settings.alert_max_attempts:
            _give_up(db, container, row, reason)
            return DEAD
        row.last_error = reason[:255]
        row.locked_until = None
        row.due_at = container.clock.now() + backoff(container, row.attempts)
        return PENDING


def deliver(container: Container, job: DeliveryJob, adapters: ChannelAdapters) -> bool:
    adapter = adapters.get(job.channel)
    try:
        if adapter is None:
            raise DeliveryFailed(f"no adapter for {job.channel}")
        adapter.send(job.alert, job.destination)
    except DeliveryFailed as exc:
        outcome = record_failure(container, job, exc.reason)
        log.info("alert delivery %s (%s) failed: %s", job.delivery_id, job.channel, exc.reason)
        if outcome == DEAD:
            log.warning("alert delivery %s (%s) is dead", job.delivery_id, job.channel)
        return False
    except Exception as exc:
        # An adapter bug must not stop the loop; the row is retried like any failure.
        log.exception("alert delivery %s (%s) crashed", job.delivery_id, job.channel)
        record_failure(container, job, f"error: {type(exc).__name__}")
        return False
    return record_delivered(container, job)


def deliver_due(
    container: Container, *, limit: int = 100, adapters: ChannelAdapters | None = None
) -> int:
    """Deliver up to ``limit`` due outbox rows now, synchronously; how many were delivered."""
    adapters = adapters or default_adapters(container)
    delivered = 0
    handled = 0
    while handled < limit:
        jobs = claim_due(container, limit=min(CLAIM_BATCH, limit - handled), adapters=adapters)
        if not jobs:
            break
        for job in jobs:
            handled += 1
            if deliver(container, job, adapters):
                delivered += 1
    return delivered


# How often a worker runs the housekeeping it is given (expire holds, trim velocity buckets).
HOUSEKEEPING_SECONDS = 300.0


@dataclass(frozen=True)
class PeriodicJob:
    """A job the delivery loop runs every ``every_s`` seconds (the first time one period after
    it starts), in its own transaction; a failing run is logged and tried at the next period."""

    name: str
    every_s: float
    run: Callable[[], object]


def run_worker(
    container: Container,
    stop: threading.Event,
    *,
    interval: float | None = None,
    batch: int = 100,
    adapters: ChannelAdapters | None = None,
    report: Callable[[int], None] | None = None,
    periodic: Sequence[PeriodicJob] = (),
) -> None:
    """Deliver until ``stop`` is set, polling every ``interval`` seconds when idle, and run the
    ``periodic`` jobs when they are due."""
    interval = interval if interval is not None else container.settings.alert_poll_seconds
    adapters = adapters or default_adapters(container)
    due_at = [time.monotonic() + job.every_s for job in periodic]
    while not stop.is_set():
        try:
            delivered = deliver_due(container, limit=batch, adapters=adapters)
        except Exception:
            # The database may be briefly away; try again at the next poll.
            log.exception("alert delivery round failed")
            delivered = 0
        if delivered and report is not None:
            report(delivered)
        for index, job in enumerate(periodic):
            if time.monotonic() < due_at[index]:
                continue
            due_at[index] = time.monotonic() + job.every_s
            try:
                job.run()
            except Exception:
                log.exception("periodic job %s failed", job.name)
        if delivered < batch:
            stop.wait(interval)


def delivers_in_process(container: Container) -> bool:
    """Whether ``serve``/``demo`` deliver alerts on a thread of their own.

    ``WALLETGUARD_ALERTS_IN_PROCESS`` decides; unset, it is on for the embedded default (SQLite)
    with the real clock. With PostgreSQL, run ``walletguard worker`` processes. With a manual
    clock (tests, the simulator) time only moves when told, so delivery is driven by
    ``deliver_due`` instead of a poller.
    """
    configured = container.settings.alerts_in_process
    if configured is not None:
        return configured
    return container.settings.is_sqlite and isinstance(container.clock, SystemClock)


@contextlib.contextmanager
def in_process_delivery(
    container: Container, periodic: Sequence[PeriodicJob] = ()
) -> Iterator[threading.Thread | None]:
    """Run the delivery loop (and the ``periodic`` jobs) on a daemon thread for the duration of
    the block (if enabled)."""
    if not delivers_in_process(container):
        yield None
        return
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(container, stop),
        kwargs={"periodic": periodic},
        name="walletguard-alerts",
        daemon=True,
    )
    thread.start()
    log.info("alert delivery running in process")
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)


def run_worker_process(
    container: Container,
    *,
    once: bool,
    interval: float | None,
    batch: int,
    report: Callable[[str], None],
    periodic: Sequence[PeriodicJob] = (),
) -> int:
    """``walletguard worker``: deliver until SIGTERM / Ctrl-C (or once); how many delivered.
    The ``periodic`` jobs run while it loops (not with ``once``)."""
    if once:
        delivered = deliver_due(container, limit=batch)
        report(f"Delivered {delivered} alert(s).")
        return delivered
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    total = 0

    def _count(delivered: int) -> None:
        nonlocal total
        total += delivered
        report(f"Delivered {delivered} alert(s) ({total} since start).")

    report("Delivering alerts; stop with Ctrl-C.")
    # A process that runs for as long as a server's does: its start-up objects, and what its
    # first rounds leave for good, out of the collector's full walks, as a server's are.
    with frozen_heap():
        run_worker(
            container, stop, interval=interval, batch=batch, report=_count, periodic=periodic
        )
    report(f"Stopped after delivering {total} alert(s).")
    return total
