"""``walletguard worker``: delivers the outbox from its own process, once or until stopped."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from tests.alerts_support import all_deliveries, raise_security_alerts
from tests.conftest import make_settings, register
from walletguard.alerts.worker import PeriodicJob, delivers_in_process, run_worker_process
from walletguard.app import create_app
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import Clock, ManualClock, SystemClock
from walletguard.kit.settings import Settings
from walletguard.messages.service import PhoneInbox

PHONE = "+8613812345678"


@pytest.fixture
def cli_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLETGUARD_")}
    env.update(
        WALLETGUARD_DATA_DIR=str(tmp_path / "data"),
        WALLETGUARD_DATABASE_URL=db_url,
        WALLETGUARD_ARGON2_TIME_COST="1",
        WALLETGUARD_ARGON2_MEMORY_KIB="8192",
    )
    return env


@pytest.fixture
def shared(cli_env: dict[str, str]) -> Iterator[Container]:
    """A container on the same database and key file the CLI process will use."""
    settings = Settings(
        data_dir=Path(cli_env["WALLETGUARD_DATA_DIR"]),
        database_url=cli_env["WALLETGUARD_DATABASE_URL"],
        argon2_time_cost=1,
        argon2_memory_kib=8192,
    )
    container = build_container(settings)
    yield container
    container.close()


def _sms_count(container: Container) -> int:
    with container.sessions() as db:
        inbox = PhoneInbox(db, container.cipher, container.clock)
        return sum(1 for m in inbox.messages(PHONE) if m.purpose == "alert")


def test_worker_once_delivers_what_is_due(cli_env: dict[str, str], shared: Container) -> None:
    with TestClient(create_app(shared)) as client:
        holder = register(client, shared, PHONE)
    raise_security_alerts(shared, holder, 2)
    done = subprocess.run(
        [sys.executable, "-m", "walletguard.cli", "worker", "--once"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Delivered 2 alert(s)." in done.stdout
    assert _sms_count(shared) == 2
    assert all(row.status == "delivered" for row in all_deliveries(shared))


def test_worker_runs_until_stopped(cli_env: dict[str, str], shared: Container) -> None:
    with TestClient(create_app(shared)) as client:
        holder = register(client, shared, PHONE)
    worker = subprocess.Popen(
        [sys.executable, "-m", "walletguard.cli", "worker", "--interval", "0.1"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        raise_security_alerts(shared, holder, 3)
        deadline = time.monotonic() + 60
        while _sms_count(shared) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sms_count(shared) == 3
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "Stopped after delivering 3 alert(s)." in out


def test_the_worker_keeps_what_it_started_with_out_of_full_collections(shared: Container) -> None:
    """``walletguard worker`` runs as long as a server process does: what it started with is
    frozen as a server's is (``kit.heap.frozen_heap``), and once it stops the collector is as
    it was."""
    frozen_while_running: list[int] = []

    def look_then_stop() -> None:
        frozen_while_running.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGTERM)

    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    gc.unfreeze()
    try:
        run_worker_process(
            shared,
            once=False,
            interval=0.05,
            batch=10,
            report=lambda _line: None,
            periodic=[PeriodicJob("look", 0.0, look_then_stop)],
        )
        assert frozen_while_running and frozen_while_running[0] > 0
        assert gc.get_freeze_count() == 0
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        gc.unfreeze()


def test_the_server_delivers_in_process_when_asked(
    tmp_path: Path, db_url: str, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, db_url, alerts_in_process=True, alert_poll_seconds=0.05)
    container = build_container(settings, clock=clock)
    try:
        with TestClient(create_app(container)) as client:
            holder = register(client, container, PHONE)
            raise_security_alerts(container, holder, 2)
            deadline = time.monotonic() + 30
            while _sms_count(container) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _sms_count(container) == 2
        # The thread stops with the app.
        assert not any(t.name == "walletguard-alerts" for t in threading.enumerate())
    finally:
        container.close()


def test_in_process_delivery_is_the_embedded_default(tmp_path: Path, clock: ManualClock) -> None:
    sqlite = make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    postgres = make_settings(tmp_path, "postgresql+psycopg://u@127.0.0.1/x")
    real = SystemClock()

    def decides(settings: Settings, chosen: Clock) -> bool:
        return delivers_in_process(SimpleNamespace(settings=settings, clock=chosen))  # type: ignore[arg-type]

    assert decides(sqlite, real)
    assert not decides(postgres, real)
    # Scenarios and tests move a manual clock; they deliver with deliver_due.
    assert not decides(sqlite, clock)
    forced = make_settings(tmp_path, "postgresql+psycopg://u@127.0.0.1/x", alerts_in_process=True)
    assert decides(forced, real)
