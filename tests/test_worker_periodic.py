"""The delivery loop's periodic jobs: the risk engine's housekeeping runs beside delivery."""

from __future__ import annotations

import threading
from datetime import timedelta

from tests.conftest import START
from walletguard.alerts.worker import PeriodicJob, run_worker
from walletguard.app import periodic_jobs
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work
from walletguard.risk.velocity import DatabaseVelocity


def test_the_loop_runs_due_jobs_and_outlives_a_failing_one(container: Container) -> None:
    stop = threading.Event()
    runs: list[str] = []

    def failing() -> None:
        runs.append("failing")
        raise RuntimeError("the database is away")

    def counting() -> None:
        runs.append("counting")
        if runs.count("counting") == 2:
            stop.set()

    jobs = [PeriodicJob("fails", 0.01, failing), PeriodicJob("counts", 0.01, counting)]
    worker = threading.Thread(
        target=run_worker, args=(container, stop), kwargs={"interval": 0.01, "periodic": jobs}
    )
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert runs.count("counting") == 2
    # The failing job was tried again after its failure, and did not stop the loop.
    assert runs.count("failing") >= 2


def test_the_workers_housekeeping_trims_old_velocity_buckets(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        velocity = DatabaseVelocity(db)
        velocity.record(["holder:old"], START - timedelta(days=3), 100)
        velocity.record(["holder:recent"], START - timedelta(hours=1), 200)
    (housekeeping,) = periodic_jobs(container)
    assert housekeeping.every_s == 300
    housekeeping.run()
    with unit_of_work(container.sessions) as db:
        velocity = DatabaseVelocity(db)
        assert velocity.count() == 1
        day = timedelta(days=1)
        assert velocity.windows(["holder:recent"], START, (day,))[("holder:recent", day)].count == 1
