"""The bare baseline: one endpoint that does one INSERT, on the same stack as walletguard
(FastAPI, pydantic, SQLAlchemy 2 sync session, psycopg 3, uvicorn; the start-up heap frozen, as
walletguard's server processes freeze theirs: ``walletguard.kit.heap``), committed per request.

    WALLETGUARD_DATABASE_URL=postgresql+psycopg://… uvicorn bench.bare_app:app --workers 2

``POST /bare/statements`` is the same INSERT after ``reads`` primary-key SELECTs in the same
transaction, sent the way walletguard's hot path sends its statements (``via: "core"``,
``walletguard.kit.db.core``: straight to psycopg on PostgreSQL) or through SQLAlchemy's
``Connection.execute`` (``via: "connection"``): what a number of statements costs on this stack
with no other work, for ``bench/statement_floor.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import DateTime, String, bindparam, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from walletguard.kit.db import core
from walletguard.kit.heap import freeze_long_lived


class Base(DeclarativeBase):
    pass


class BareRow(Base):
    __tablename__ = "bench_bare_rows"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    payee: Mapped[str] = mapped_column(String(64))
    amount_fen: Mapped[int]
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# One pooled connection for each thread that can hold one at once: Starlette runs a ``def``
# endpoint and its dependencies on anyio's worker threads, at most 40 a process. A smaller pool
# with overflow (10 + 10, as this file had until issue #3's stop 28) closes every connection
# above its size when it is returned, and PostgreSQL forks a backend for the next one: 13 to 57
# new connections a second during the closed loop, each a process started and ended, CPU the
# bare request spent that a pool sized for its load does not (walletguard's money requests keep
# under its pool: WALLETGUARD_MONEY_CONCURRENCY). Connections are made when first needed, so a
# process opens no more than it has requests in flight at once: with bench_payments.py's
# ``--concurrency 32``, 32 at most a process, which PostgreSQL's max_connections (100 by
# default) must leave room for beside walletguard's pools.
BARE_POOL_SIZE = 40
engine = create_engine(
    os.environ["WALLETGUARD_DATABASE_URL"], pool_size=BARE_POOL_SIZE, max_overflow=0
)
Sessions = sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # As walletguard's server processes do (``walletguard.app.server_app``): the same stack.
    freeze_long_lived()
    yield


app = FastAPI(lifespan=lifespan)


def session() -> Iterator[Session]:
    with Sessions() as db:
        yield db
        db.commit()


class PayIn(BaseModel):
    payee: str
    amount: str


@app.post("/bare/payments", status_code=201)
def bare_payment(
    body: PayIn, db: Annotated[Session, Depends(session, scope="function")]
) -> dict[str, str]:
    row = BareRow(
        payee=body.payee, amount_fen=int(body.amount.replace(".", "")), at=datetime.now(UTC)
    )
    db.add(row)
    db.flush()
    return {"id": str(row.id)}


class StatementsIn(PayIn):
    reads: int = Field(ge=0, le=100)
    via: Literal["core", "connection"] = "core"


_READ = select(BareRow.payee, BareRow.amount_fen).where(BareRow.id == bindparam("row_id"))


@app.post("/bare/statements", status_code=201)
def bare_statements(
    body: StatementsIn, db: Annotated[Session, Depends(session, scope="function")]
) -> dict[str, str]:
    executor = core(db) if body.via == "core" else db.connection()
    for _ in range(body.reads):
        executor.execute(_READ, {"row_id": uuid.uuid4()}).first()
    return bare_payment(body, db)


def create_table() -> None:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE bench_bare_rows"))
