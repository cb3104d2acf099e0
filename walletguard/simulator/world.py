"""The world a scenario runs in: a fresh walletguard instance, a manual clock, and the actors'
phones — which device holds which SIM, which codes each actor can see, which secrets each knows.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from walletguard.app import create_app
from walletguard.bootstrap import Container, build_container
from walletguard.identity.phone import parse_mobile
from walletguard.kit.clock import ManualClock
from walletguard.kit.db import create_db_engine
from walletguard.kit.settings import Settings
from walletguard.migrations import upgrade
from walletguard.simulator.scenario import ActorSpec, DeviceSpec, Scenario

with warnings.catch_warnings():
    # Starlette's in-process client is how scenarios reach the API without a socket; its
    # deprecation notice about httpx is not for the people running `walletguard simulate`.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

_TEMPLATES: dict[str, Path] = {}


def _migrated_template() -> Path:
    """One migrated SQLite file per process, copied for every run (runs start in milliseconds)."""
    if "sqlite" not in _TEMPLATES:
        folder = Path(tempfile.mkdtemp(prefix="wg-sim-template-"))
        path = folder / "template.db"
        engine = create_db_engine(f"sqlite:///{path}")
        upgrade(engine)
        engine.dispose()
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(path)) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _TEMPLATES["sqlite"] = path
    return _TEMPLATES["sqlite"]


def _fresh_postgres(admin_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"wg_sim_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_db_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def _drop_postgres(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Login:
    token: str
    device_id: uuid.UUID


@dataclass
class CaseRef:
    case_id: str
    reporter: tuple[str, str]  # (actor, device) that reported: it can read the case


@dataclass
class World:
    scenario: Scenario
    container: Container
    clock: ManualClock
    workdir: Path
    clients: dict[tuple[str, str], TestClient] = field(default_factory=dict)
    # (account owner, actor, device) -> the session that actor holds on that account
    sessions: dict[tuple[str, str, str], Login] = field(default_factory=dict)
    # (account owner, device) -> device token the device keeps for that account
    device_tokens: dict[tuple[str, str], str] = field(default_factory=dict)
    # phone (E.164) -> (actor, device) holding its SIM
    sim_holder: dict[str, tuple[str, str]] = field(default_factory=dict)
    # (account owner, card index) -> card id in the wallet
    cards: dict[tuple[str, int], str] = field(default_factory=dict)
    # secrets each actor knows about each account: (actor, owner) -> {"password": …, "totp": …}
    knowledge: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    holder_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    recoveries: dict[str, str] = field(default_factory=dict)
    # account owner -> the incident case a report opened
    cases: dict[str, CaseRef] = field(default_factory=dict)
    app: Any = None
    postgres_admin_url: str | None = None

    @classmethod
    def create(
        cls,
        scenario: Scenario,
        profile: str,
        disabled: list[str],
        *,
        postgres_admin_url: str | None = None,
    ) -> World:
        """A fresh instance: a copy of a migrated SQLite file, or — given the URL of a
        PostgreSQL server's admin database — a new PostgreSQL database dropped on close."""
        workdir = Path(tempfile.mkdtemp(prefix="wg-sim-"))
        dropped_by_close: str | None = None
        if postgres_admin_url:
            database_url = _fresh_postgres(postgres_admin_url)
            dropped_by_close = postgres_admin_url
        else:
            db_path = workdir / "walletguard.db"
            shutil.copyfile(_migrated_template(), db_path)
            database_url = f"sqlite:///{db_path}"
        settings = Settings(
            data_dir=workdir,
            database_url=database_url,
            field_keys=SecretStr(f'{{"s1": "{_key()}"}}'),
            field_active_key="s1",
            index_key=SecretStr(_key()),
            profile=profile,
            disabled_controls=",".join(disabled),
            # The simulator's accounts are throwaway: cheap Argon2 keeps runs fast.
            argon2_time_cost=1,
            argon2_memory_kib=8192,
            sandbox=True,
        )
        clock = ManualClock(scenario.start)
        container = build_container(settings, clock=clock)
        world = cls(scenario=scenario, container=container, clock=clock, workdir=workdir)
        world.postgres_admin_url = dropped_by_close
        world.app = create_app(container)
        for name, actor in scenario.actors.items():
            world.knowledge[(name, name)] = {
                "password": actor.password,
                "payment_password": actor.payment_password,
            }
            for owner, leaked in actor.knows.items():
                world.knowledge.setdefault((name, owner), {}).update(leaked)
            for device in actor.devices:
                if device.sim and actor.phone:
                    world.sim_holder[parse_mobile(actor.phone)] = (name, device.id)
        return world

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.container.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.postgres_admin_url:
            _drop_postgres(self.postgres_admin_url, self.container.settings.effective_database_url)

    def actor(self, name: str) -> ActorSpec:
        return self.scenario.actors[name]

    def device(self, actor: str, device_id: str) -> DeviceSpec:
        return next(d for d in self.actor(actor).devices if d.id == device_id)

    def phone_of(self, name: str) -> str:
        phone = self.actor(name).phone
        if not phone:
            raise LookupError(f"{name} has no phone number")
        return parse_mobile(phone)

    def client(self, actor: str, device_id: str) -> TestClient:
        key = (actor, device_id)
        if key not in self.clients:
            ip = self.device(actor, device_id).ip
            self.clients[key] = TestClient(
                self.app, client=(ip, 40000), headers={"user-agent": f"sim/{actor}/{device_id}"}
            )
        return self.clients[key]

    def knows(self, actor: str, owner: str) -> dict[str, Any]:
        """What ``actor`` knows of ``owner``'s secrets (an attacker knows what leaked)."""
        return self.knowledge.setdefault((actor, owner), {})
