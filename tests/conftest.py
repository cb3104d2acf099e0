"""Test fixtures: every test runs on a real, migrated database — SQLite or PostgreSQL.

``WALLETGUARD_TEST_DATABASE_URL`` selects PostgreSQL (``postgresql+psycopg://user@host/db``:
a fresh database is created next to it for the run and dropped afterwards); without it the suite
runs on SQLite. Each test starts from an empty schema.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from walletguard.app import create_app
from walletguard.bootstrap import Container, build_container
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import create_db_engine
from walletguard.kit.settings import Settings
from walletguard.messages.service import PhoneInbox
from walletguard.migrations import upgrade
from walletguard.models import Base

START = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)
PG_URL = os.environ.get("WALLETGUARD_TEST_DATABASE_URL")


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Database:
    url: str
    template: Path | None  # SQLite: a migrated file copied for each test

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")


@contextmanager
def scratch_postgres(beside: str, name: str) -> Iterator[str]:
    """A PostgreSQL database ``name`` created on the server of ``beside`` (a URL whose user may
    create databases); yields its URL, and drops it afterwards, connections and all."""
    admin_url = make_url(beside)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def schema_differences(engine: Engine) -> list[Any]:
    """What Alembic's autogenerate finds between the migrated schema and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    if PG_URL:
        with scratch_postgres(PG_URL, f"wg_test_{uuid.uuid4().hex[:12]}") as url:
            engine = create_db_engine(url)
            upgrade(engine)
            engine.dispose()
            yield Database(url=url, template=None)
        return
    folder = tmp_path_factory.mktemp("db")
    template = folder / "template.db"
    engine = create_db_engine(f"sqlite:///{template}")
    upgrade(engine)
    engine.dispose()
    # Fold the write-ahead log into the file so a plain copy is the whole database.
    with closing(sqlite3.connect(template)) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield Database(url=f"sqlite:///{template}", template=template)


def _wipe_postgres(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        # Test set-up only: replica mode skips the audit log's append-only triggers so each
        # test starts empty. The application never runs in this mode.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def make_settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": url,
        "field_keys": SecretStr(f'{{"t1": "{_key()}"}}'),
        "field_active_key": "t1",
        "index_key": SecretStr(_key()),
        # Cheaper Argon2 in tests only; the OWASP defaults are measured in bench/.
        "argon2_time_cost": 1,
        "argon2_memory_kib": 8192,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def db_url(database: Database, tmp_path: Path) -> str:
    if database.template is not None:
        target = tmp_path / "walletguard.db"
        shutil.copyfile(database.template, target)
        return f"sqlite:///{target}"
    engine = create_db_engine(database.url, pool_size=1)
    _wipe_postgres(engine)
    engine.dispose()
    return database.url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def container(settings: Settings, clock: ManualClock) -> Iterator[Container]:
    built = build_container(settings, clock=clock)
    yield built
    built.close()


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container)) as test_client:
        yield test_client


@pytest.fixture
def client_at(container: Container) -> Iterator[Any]:
    """Clients calling from a given IP address: ``client_at("203.0.113.9")``."""
    opened: list[TestClient] = []
    app = create_app(container)

    def make(ip: str) -> TestClient:
        test_client = TestClient(app, client=(ip, 50000))
        opened.append(test_client)
        return test_client

    yield make
    for test_client in opened:
        test_client.close()


@pytest.fixture
def is_postgres(database: Database) -> bool:
    return database.is_postgres


# -- helpers shared by the tests ------------------------------------------------------------

STRONG_PASSWORD = "Vermilion-Kite-42"
DEFAULT_PHONE = "+8613812345678"
_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


def latest_code(container: Container, phone: str) -> str:
    with container.sessions() as db:
        messages = PhoneInbox(db, container.cipher, container.clock).messages(phone, limit=1)
    match = _CODE.search(messages[0].body)
    assert match, messages[0].body
    return match.group(1)


@dataclass
class Holder:
    phone: str
    password: str
    token: str
    device_token: str
    holder_id: str
    session_id: str
    device_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def register(
    client: TestClient,
    container: Container,
    phone: str = DEFAULT_PHONE,
    *,
    name: str = "张伟",
    birthday: date = date(1985, 3, 12),
    password: str = STRONG_PASSWORD,
    id_number: str | None = None,
    device_id: str = "phone-1",
) -> Holder:
    started = client.post("/api/v1/registrations", json={"phone": phone})
    assert started.status_code == 202, started.text
    body: dict[str, Any] = {
        "code": latest_code(container, phone),
        "name": name,
        "birthday": birthday.isoformat(),
        "password": password,
        "device": {"id": device_id, "label": "我的手机"},
    }
    if id_number:
        body["id_number"] = id_number
    done = client.post(
        f"/api/v1/registrations/{started.json()['registration_id']}/complete", json=body
    )
    assert done.status_code == 201, done.text
    issued = done.json()
    return Holder(
        phone=phone,
        password=password,
        token=issued["session_token"],
        device_token=issued["device_token"],
        holder_id=issued["holder_id"],
        session_id=issued["session_id"],
        device_id=issued["device_id"],
    )


def login(
    client: TestClient,
    phone: str,
    password: str,
    *,
    device_id: str = "phone-2",
    device_token: str | None = None,
) -> Any:
    body: dict[str, Any] = {
        "phone": phone,
        "password": password,
        "device": {"id": device_id, "label": "另一台设备"},
    }
    if device_token:
        body["device_token"] = device_token
    return client.post("/api/v1/sessions", json=body)


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:walletguard:problem:{slug}", body
    assert body["status"] == status
    assert body["title"]
    return body


def step_up(
    client: TestClient,
    container: Container,
    auth: dict[str, str],
    phone: str,
    action: str,
    factor: str = "sms",
    *,
    code: str | None = None,
) -> dict[str, Any]:
    """Pass a step-up for ``action``; an SMS code is read from the bound phone's inbox."""
    body: dict[str, Any] = {"action": action, "factor": factor}
    if factor == "sms":
        started = client.post(
            "/api/v1/step-up/challenges", json={"action": action, "factor": "sms"}, headers=auth
        )
        assert started.status_code == 201, started.text
        body["challenge_id"] = started.json()["challenge_id"]
        body["code"] = latest_code(container, phone)
    else:
        body["code"] = code
    done = client.post("/api/v1/step-up", json=body, headers=auth)
    assert done.status_code == 201, done.text
    result: dict[str, Any] = done.json()
    return result


def login_trusted(
    client: TestClient, container: Container, holder: Holder, *, device_id: str = "tablet"
) -> dict[str, Any]:
    """Sign in from another device and have the holder's trusted phone approve it.

    A login from a new device is only ``new`` now (it can see its status, nothing else); this is
    the quickest way to a second device that may do everything.
    """
    response = login(client, holder.phone, holder.password, device_id=device_id)
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    step_up(client, container, holder.auth, holder.phone, "add_device")
    approved = client.post(f"/api/v1/devices/{issued['device_id']}/approve", headers=holder.auth)
    assert approved.status_code == 200, approved.text
    issued["device_trust"] = "trusted"
    issued["auth"] = {"authorization": f"Bearer {issued['session_token']}"}
    return issued
