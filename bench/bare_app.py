"""The bare baseline: one endpoint that does one INSERT, on the same stack as walletguard
(FastAPI, pydantic, SQLAlchemy 2 sync session, psycopg 3, uvicorn; the start-up heap frozen, as
walletguard's server processes freeze theirs: ``walletguard.kit.heap``), committed per request.

    WALLETGUARD_DATABASE_URL=postgresql+psycopg://… uvicorn bench.bare_app:app --workers 2

``POST /bare/statements`` is the same INSERT after ``reads`` primary-key SELECTs in the same
transaction, sent the way walletguard's hot path sends its statements (``via: "core"``,
``walletguard.kit.db.core``: straight to psycopg on PostgreSQL) or through SQLAlchemy's
``Connection.execute`` (``via: "connection"``): what a number of statements costs on this stack
with no other work, for ``bench/statement_floor.py``.

``POST /bare/spec-writes`` writes, in one transaction, the rows of the parts
SPEC section 3 names for a payment's authorisation: the risk decision, the ledger posting (both
balances moved under the debited one's check, the transaction, its two postings), the audit
entries (chained by walletguard's own ``walletguard_audit_chain``), the alert and its outbox
rows, and the idempotency key with its answer. Each row is a copy of what walletguard wrote for
the latest payment in the same database (same columns, same sizes, fresh ids and times), in
one prepared statement, then the audit chain with COMMIT in one message (with psycopg's BEGIN,
three round trips, as many as the bare INSERT's): a payment's essential writes with none of
its reads, checks or Python, what ``bench/bench_payments.py`` measures as the most any payment
writing those rows could reach.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException
from psycopg import ClientCursor
from psycopg.rows import dict_row
from pydantic import BaseModel, Field
from sqlalchemy import DateTime, String, bindparam, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from walletguard.audit.models import AuditEntry
from walletguard.audit.service import chain_entries_json
from walletguard.kit.db import core
from walletguard.kit.heap import frozen_heap


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
    with frozen_heap():
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


class SpecWritesIn(PayIn):
    holder_id: uuid.UUID
    wallet_account_id: uuid.UUID
    merchant_account_id: uuid.UUID


# What a payment writes, copied from the latest one walletguard posted: each table's row as a
# dict of its columns (the outbox's rows, the audit entries' fields), read once a process.
_TEMPLATE_QUERIES = {
    "txn": "SELECT * FROM ledger_transactions WHERE kind = 'payment' AND status = 'posted'"
    " ORDER BY created_at DESC LIMIT 1",
    "decision": "SELECT * FROM risk_decisions WHERE action = 'payment'"
    " ORDER BY created_at DESC LIMIT 1",
    "alert": "SELECT * FROM alerts WHERE kind = 'movement.posted' ORDER BY created_at DESC LIMIT 1",
    "key": "SELECT * FROM idempotency_keys WHERE response_status = 201"
    " ORDER BY created_at DESC LIMIT 1",
}
_template: dict[str, Any] = {}
_template_lock = threading.Lock()
# walletguard's own chaining of audit entries (migration 0010), sent with COMMIT as walletguard
# sends it (walletguard.kit.db.send_before_commit): the chain's head is locked only while the
# server runs it.
_CHAIN = "SELECT walletguard_audit_chain(CAST(%(entries)s AS json))"


def _binds(row: dict[str, Any], prefix: str) -> tuple[str, str]:
    """The column list and the placeholders of an INSERT of ``row``'s columns."""
    return ", ".join(row), ", ".join(f"%({prefix}_{name})s" for name in row)


def _load_template(driver: psycopg.Connection[Any]) -> dict[str, Any]:
    with _template_lock:
        if not _template:
            _template.update(_read_template(driver))
            driver.commit()
    return _template


def _read_template(driver: psycopg.Connection[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    cursor = driver.cursor(row_factory=dict_row)
    for name, query in _TEMPLATE_QUERIES.items():
        row = cursor.execute(query).fetchone()
        if row is None:
            raise HTTPException(409, "no payment to copy yet: make one through walletguard first")
        found[name] = row
    found["outbox"] = cursor.execute(
        "SELECT * FROM alert_outbox WHERE alert_id = %s ORDER BY id", (found["alert"]["id"],)
    ).fetchall()
    for row in found["outbox"]:
        row.pop("id")  # the sequence's
    found["audit"] = cursor.execute(
        "SELECT event, ip, data FROM audit_log WHERE data LIKE %s ORDER BY seq",
        (f'%"movement_id":"{found["txn"]["id"]}"%',),
    ).fetchall()
    txn_columns, txn_binds = _binds(found["txn"], "txn")
    decision_columns, decision_binds = _binds(found["decision"], "decision")
    alert_columns, alert_binds = _binds(found["alert"], "alert")
    key_columns, key_binds = _binds(found["key"], "key")
    outbox_columns = ", ".join(found["outbox"][0])
    outbox_rows = ", ".join(
        f"({_binds(row, f'outbox{i}')[1]})" for i, row in enumerate(found["outbox"])
    )
    # The ledger posting as walletguard's Ledger makes it: the two accounts locked in the order
    # of their ids (two payments locking them in opposite orders would deadlock), both balances
    # moved only if the debited one can pay, the transaction and its postings only if both
    # moved. The column names are the tables' own (SELECT *'s), never a request's.
    found["sql"] = f"""
WITH locked AS MATERIALIZED (
  SELECT id FROM ledger_accounts WHERE id IN (%(debit)s, %(credit)s) ORDER BY id
  FOR NO KEY UPDATE),
legs AS (
  UPDATE ledger_accounts SET balance_fen = balance_fen
    + CASE WHEN id = %(debit)s THEN -%(amount)s ELSE %(amount)s END
  WHERE id IN (SELECT id FROM locked) AND EXISTS (
    SELECT 1 FROM ledger_accounts AS debited WHERE debited.id = %(debit)s
      AND (debited.allow_negative OR debited.balance_fen - debited.pending_fen >= %(amount)s))
  RETURNING id),
moved AS (
  INSERT INTO ledger_transactions ({txn_columns}) SELECT {txn_binds}
  WHERE (SELECT count(*) FROM legs) = 2 RETURNING id),
posted AS (
  INSERT INTO ledger_postings (transaction_id, account_id, amount_fen, created_at)
  SELECT id, %(debit)s, -%(amount)s, %(now)s FROM moved
  UNION ALL SELECT id, %(credit)s, %(amount)s, %(now)s FROM moved),
decided AS (INSERT INTO risk_decisions ({decision_columns}) VALUES ({decision_binds})),
alerted AS (INSERT INTO alerts ({alert_columns}) VALUES ({alert_binds})),
queued AS (INSERT INTO alert_outbox ({outbox_columns}) VALUES {outbox_rows}),
keyed AS (INSERT INTO idempotency_keys ({key_columns}) VALUES ({key_binds}))
SELECT count(*) FROM legs"""  # noqa: S608
    return found


@app.post("/bare/spec-writes", status_code=201)
def spec_writes(body: SpecWritesIn) -> dict[str, str]:
    """A payment's essential rows, written straight through psycopg as walletguard's hot path
    writes (``walletguard.kit.db.core``): one prepared statement, then the audit chain with
    COMMIT in one message."""
    pooled = engine.raw_connection()
    try:
        driver: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        template = _load_template(driver)
        now = datetime.now(UTC)
        amount = int(body.amount.replace(".", ""))
        txn_id, alert_id = uuid.uuid4(), uuid.uuid4()
        params: dict[str, Any] = {
            "debit": body.wallet_account_id,
            "credit": body.merchant_account_id,
            "amount": amount,
            "now": now,
        }
        fresh = {
            "txn": {
                "id": txn_id,
                "holder_id": body.holder_id,
                "amount_fen": amount,
                "payee": body.payee,
                "from_account_id": body.wallet_account_id,
                "to_account_id": body.merchant_account_id,
                "created_at": now,
                "posted_at": now,
            },
            "decision": {
                "id": uuid.uuid4(),
                "holder_id": body.holder_id,
                "amount_fen": amount,
                "created_at": now,
            },
            "alert": {"id": alert_id, "holder_id": body.holder_id, "created_at": now},
            "key": {
                "id": uuid.uuid4(),
                "holder_id": body.holder_id,
                "key": uuid.uuid4().hex,
                "created_at": now,
            },
        }
        for name, values in fresh.items():
            params |= {f"{name}_{column}": value for column, value in template[name].items()}
            params |= {f"{name}_{column}": value for column, value in values.items()}
        for i, row in enumerate(template["outbox"]):
            params |= {f"outbox{i}_{column}": value for column, value in row.items()}
            params |= {
                f"outbox{i}_alert_id": alert_id,
                f"outbox{i}_holder_id": body.holder_id,
                f"outbox{i}_due_at": now,
                f"outbox{i}_created_at": now,
            }
        entries = [
            AuditEntry(
                at=now,
                event=row["event"],
                holder_id=body.holder_id,
                device_id=template["txn"]["device_id"],
                ip=row["ip"],
                data=row["data"],
            )
            for row in template["audit"]
        ]
        moved = driver.execute(template["sql"], params, prepare=True).fetchone()
        if moved is None or moved[0] != 2:
            driver.rollback()
            raise HTTPException(409, "the wallet cannot pay that much")
        chain = ClientCursor(driver)
        sent = chain.mogrify(_CHAIN, {"entries": chain_entries_json(entries)})
        chain.execute(sent + ";\nCOMMIT")
        return {"id": str(txn_id)}
    finally:
        pooled.close()  # back to the pool (a transaction left open is rolled back)


def create_table() -> None:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE bench_bare_rows"))
