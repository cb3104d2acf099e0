from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import Engine

from walletguard.kit.db import UtcDateTime
from walletguard.models import Base

engine = context.config.attributes.get("engine")


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Migrations speak plain SQLAlchemy types; UtcDateTime is a Python-side conversion.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run() -> None:
    assert isinstance(engine, Engine), "walletguard.migrations.upgrade() passes the engine"
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=render_item,
            # A transaction of its own for each migration: an index built without holding
            # writes (migrations.online) commits what came before it, and a failure leaves the
            # database at the last migration done, recorded as such, to run again from there.
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
