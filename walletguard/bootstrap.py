"""Wiring: the one place where settings, database, clock, keys and ports are put together."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from argon2 import PasswordHasher, Type
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from walletguard.kit.clock import Clock, SystemClock
from walletguard.kit.crypto import FieldCipher, PinHasher, load_cipher, load_pin_hasher
from walletguard.kit.db import create_db_engine, make_session_factory
from walletguard.kit.http import WorkLimit
from walletguard.kit.settings import Settings


def make_password_hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


@dataclass
class Container:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock
    cipher: FieldCipher
    hasher: PasswordHasher  # login passwords (Argon2id)
    pin_hasher: PinHasher  # payment passwords (keyed HMAC-SHA256)
    # A real hash of a random secret: unknown numbers are "verified" against it so a login for
    # a number without an account costs the same time as one for a real account.
    dummy_password_hash: str = field(repr=False)
    # The money endpoints' share of the process (``kit.http.in_one_unit_of_work``).
    money_requests: WorkLimit = field(repr=False)
    created_key_file: Path | None = None

    def close(self) -> None:
        self.engine.dispose()


def build_container(
    settings: Settings | None = None, *, clock: Clock | None = None, engine: Engine | None = None
) -> Container:
    settings = settings or Settings()
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    cipher, created = load_cipher(settings)
    engine = engine or create_db_engine(settings.effective_database_url)
    hasher = make_password_hasher(settings)
    return Container(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        clock=clock or SystemClock(),
        cipher=cipher,
        hasher=hasher,
        pin_hasher=load_pin_hasher(settings, cipher),
        dummy_password_hash=hasher.hash(secrets.token_urlsafe(24)),
        money_requests=WorkLimit(settings.money_concurrency),
        created_key_file=created,
    )


async def get_container(request: Request) -> Container:
    # async: no I/O, so no hop to a worker thread (see walletguard.kit.http).
    container: Container = request.app.state.container
    return container


Env = Annotated[Container, Depends(get_container)]
