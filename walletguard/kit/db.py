"""Database engine, declarative base and the unit of work.

One transaction per request or job, committed at the edge (STYLE rule 1): services flush, never
commit. SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of
failing on lock upgrade; PostgreSQL uses row locks where a spend is decided.
"""

from __future__ import annotations

import re
import time
import uuid
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar, cast

from psycopg import ClientCursor, RawCursor
from psycopg.pq import ExecStatus
from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    MetaData,
    create_engine,
    event,
    literal_column,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError, MultipleResultsFound, NoResultFound
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC; always returns timezone-aware UTC (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)  # the value itself when it is already in Python's UTC


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime}  # noqa: RUF012


def new_id() -> uuid.UUID:
    return uuid.uuid4()


# A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 10.0


def create_db_engine(
    url: str, *, pool_size: int = 10, ping_after_idle_s: float = PING_AFTER_IDLE_S
) -> Engine:
    """The engine for ``url``. Its errors never carry the statement's parameters
    (``hide_parameters``): a failed INSERT of an SMS, a card or a profile would otherwise put
    a one-time code or a blind index into the log with the traceback."""
    if url.startswith("sqlite"):
        # SQLite has one writer and every transaction here begins IMMEDIATE, so requests queue
        # for the database whatever the pool size. They queue in the pool, where a waiter can be
        # overtaken by threads returning and re-taking connections: wait long there rather than
        # fail a request after 30 s on a busy embedded instance.
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=5,
            max_overflow=5,
            pool_timeout=300,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Any) -> None:
            # Take the write lock up front: a read-then-write transaction that upgrades later
            # fails with "database is locked" instead of waiting.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, hide_parameters=True)
    _ping_when_idle(engine, ping_after_idle_s)
    _send_last_statements_with_commit(engine)

    @event.listens_for(engine, "connect")
    def _postgres_utc(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        # Timestamps come back in the session's time zone. In UTC psycopg gives them Python's
        # own UTC, and UtcDateTime's astimezone(UTC) returns them as they are; in any other zone
        # (the server's default, whatever it is) each one would be converted on every read.
        # Core's reads on such a connection skip that identity conversion altogether (a decision
        # reads up to 200 rows of history). Nothing here depends on the session's zone
        # otherwise: local days are worked out in Python (wallet.limits.local_midnight).
        dbapi_conn.execute("SET TIME ZONE 'UTC'")
        dbapi_conn.commit()
        record.info[_IN_UTC] = True

    return engine


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection before use only if it sat idle for ``idle_s`` or more.

    ``pool_pre_ping`` pings on every checkout: one more round trip a request, most of them on a
    connection given back a few milliseconds earlier. A connection dies of what happens while it
    waits (the server restarted, a proxy or firewall dropped it), so only one that waited long
    is pinged; a dead one is replaced before anyone uses it (``DisconnectionError`` makes the
    pool connect afresh). A connection that dies while in use, or in the few seconds it was idle,
    fails its request, and SQLAlchemy then renews every connection of the pool that is older
    than the failure; the API answers that request 503 ``database-unavailable`` with
    ``Retry-After`` (kit.errors), which a client retries with the same Idempotency-Key.
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        # A new connection has no "idle_since" (the pool clears ``info`` when it reconnects).
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except dbapi_error as error:
            raise DisconnectionError("pooled connection lost while idle") from error


_WITH_COMMIT = "walletguard.with_commit"
_COMMITTING = "walletguard.committing"  # in session.info while CommitQueues write at COMMIT


def _send_last_statements_with_commit(engine: Engine) -> None:
    """PostgreSQL: the statements ``send_before_commit`` kept go to the server with COMMIT,
    in one message.

    The rows every writer touches are written last (the audit chain's head, a busy velocity
    bucket: ``CommitQueue``), and stay locked until COMMIT. Sent one by one, each statement's
    answer must reach this process, and its thread must get Python's lock back from the other
    requests of the process, before the next one (and COMMIT) is sent:
    under load a few milliseconds each, which every other writer of those rows waits out too.
    Sent with COMMIT, they are locked for as long as the server takes to run them (psycopg's
    pipeline mode would not do: it waits on the socket, and so for Python's lock, between the
    statements it sends). An error in any of them aborts the rest (COMMIT included) and is
    raised as SQLAlchemy raises a failed commit; the transaction then rolls back."""

    @event.listens_for(engine, "commit")
    def _with_commit(conn: Connection) -> None:
        kept: list[_Kept] | None = conn.connection.info.pop(_WITH_COMMIT, None)
        if not kept:
            return
        driver: Any = conn.connection.driver_connection
        cursor = ClientCursor(driver)
        # What an error names: the statements as written, not the query with their values in.
        named = ";\n".join(item.sql for item in kept)
        results: list[list[Any]] = []
        try:
            # One query message: the statements with their values written in (psycopg's own
            # quoting), then COMMIT. A query of several statements goes by the simple protocol,
            # which runs them one after the other with nothing between them; the first that
            # fails ends it, and the transaction is left to roll back. (Each is planned afresh:
            # the hot ones are calls of PL/pgSQL functions, whose own statements are planned
            # once per connection.)
            query = ";\n".join(cursor.mogrify(item.sql, item.values) for item in kept)
            cursor.execute(query + ";\nCOMMIT")
            for _item in kept:
                result = cursor.pgresult
                returned = result is not None and result.status == ExecStatus.TUPLES_OK
                results.append(cursor.fetchall() if returned else [])
                cursor.nextset()
        except Exception as error:  # raised as SQLAlchemy raises it (a lost connection invalidated)
            conn._handle_dbapi_exception(error, named, None, None, None)
        finally:
            cursor.close()
        # Committed: the locks are gone, the answers are handed over now.
        for item, rows in zip(kept, results, strict=True):
            if item.answer is not None:
                item.answer(rows)

    @event.listens_for(engine, "begin")
    @event.listens_for(engine, "rollback")
    def _forget(conn: Connection) -> None:
        if not conn.invalidated:  # an invalidated one starts afresh with an empty ``info``
            conn.connection.info.pop(_WITH_COMMIT, None)


class _Kept(NamedTuple):
    sql: str
    values: dict[str, Any]
    answer: Callable[[list[Any]], None] | None


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, autoflush=True)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends normally, rolled back on error.

    An error that says ``keep_writes`` (a refused login or PIN: its failure counters and audit
    entries must survive the refusal) is committed before it propagates; services record such
    refusals before they write anything else.
    """
    session = factory()
    try:
        yield session
    except BaseException as exc:
        end_unit_of_work(session, exc)
        raise
    end_unit_of_work(session, None)


def end_unit_of_work(session: Session, error: BaseException | None) -> None:
    """The end of ``unit_of_work``, for callers that cannot hold a ``with`` block open (the
    request's session, whose end runs on another thread than its start): commit, or after
    ``error`` commit if it says ``keep_writes`` and roll back if not; always close. A commit
    that fails is rolled back and its error raised."""
    try:
        if error is None:
            try:
                session.commit()
            except BaseException as failed:
                _end_after_error(session, failed)
                raise
        else:
            _end_after_error(session, error)
    finally:
        session.close()


def _end_after_error(session: Session, error: BaseException) -> None:
    if getattr(error, "keep_writes", False):
        session.commit()
    else:
        session.rollback()


_CONSTANT = re.compile(r"[A-Za-z0-9_.:-]+")


def one_of(column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN ('a', 'b', ...)`` for values fixed in the code when a prebuilt statement is
    built (event names, kinds, statuses: checked to be plain words), written into the SQL.

    ``in_()`` sends its list as one "expanding" parameter, which SQLAlchemy renders into the
    SQL anew on every execution. Comparisons joined by OR are rendered once too, but PostgreSQL
    does not search an index by them (``audit_log.event = $7 OR event = $8 ...`` was a filter
    over every row of the holder's days), and a partial index can name the same constants in
    its ``WHERE`` (``risk.models.AUDIT_STEPS_WHERE``, migration 0012). For the statements every
    decision or movement runs; anywhere else ``in_()`` is fine. One value is ``column = 'a'``:
    SQLite uses a partial index whose ``WHERE`` is that equality only for the same equality,
    not for an IN of one (the pending movements', ``wallet.repository.expired_pending``)."""
    for value in values:
        if not _CONSTANT.fullmatch(value):
            raise ValueError(f"one_of takes plain words, not {value!r}")
    if len(values) == 1:
        return column == literal_column(f"'{values[0]}'")
    return column.in_([literal_column(f"'{value}'") for value in values])


def core(session: Session) -> Core:
    """The session's connection (its transaction), for a prebuilt statement on tables.

    ``Session.execute`` runs even a Core statement through the ORM's execution path (events,
    compile-state plugins, bind lookup): about 0.15 ms of CPU a statement on PostgreSQL, as much
    as the driver itself. The hot paths (a payment sends 17 statements) execute their
    table statements here instead. Nothing changes but the cost: the statement runs in the
    session's transaction, and, like any Core statement, does not autoflush; statements on ORM
    entities (which load objects or must see the session's pending changes) stay on the session.
    On PostgreSQL it also skips SQLAlchemy's own execution machinery (see ``Core``).
    """
    return Core(session.connection())


class Rows:
    """What ``Core.execute`` returned: every row, already fetched (tuples that also answer to
    the columns' names, like SQLAlchemy's ``Row``), and for a write the rows it changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise NoResultFound("no row") if not self._rows else MultipleResultsFound("rows")
        return self._rows[0]

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise MultipleResultsFound("more than one row")
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


class _Prepared:
    """A statement compiled once for the driver: its SQL, the values of the parameters it
    carries itself, SQLAlchemy's converters for the parameters and (after the first run, from
    the cursor's description) for the columns, and the class of its rows."""

    __slots__ = (
        "columns",
        "keys",
        "numbered",
        "positions",
        "results",
        "results_in_utc",
        "row",
        "sql",
    )

    def __init__(self, compiled: Any) -> None:
        self.sql: str = compiled.string
        binds = getattr(compiled, "binds", {})
        processors = getattr(compiled, "_bind_processors", {})
        # What ``Core`` sends psycopg: the SQL with PostgreSQL's own numbered placeholders,
        # made once, and for each number the parameter's name, its value if the statement
        # carries one (``_MISSING`` if the caller must give it), and SQLAlchemy's converter.
        self.numbered, names = numbered_placeholders(self.sql)
        self.positions: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...] = tuple(
            (name, _own_value(binds.get(name)), processors.get(name)) for name in names
        )
        columns = getattr(compiled, "_result_columns", [])
        self.keys = [column.keyname for column in columns]
        self.columns = [column.type for column in columns]
        self.row: Callable[[Iterable[Any]], Any] | None = None
        # (column index, converter) for the columns that have one; ``results_in_utc`` leaves out
        # what a connection in UTC needs no converter for (``_Prepared.learn_rows``).
        self.results: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
        self.results_in_utc: tuple[tuple[int, Callable[[Any], Any]], ...] = ()

    def positional(self, parameters: Mapping[str, Any] | None) -> list[Any] | None:
        """The values for ``numbered``'s placeholders, in their order (the caller's, else the
        statement's own) and converted (None stays None), or None if one the statement needs
        is missing."""
        given = parameters or {}
        found = []
        for name, default, convert in self.positions:
            value = given.get(name, default)
            if value is _MISSING:
                return None
            found.append(value if convert is None or value is None else convert(value))
        return found

    def learn_rows(self, description: Sequence[Any], dialect: Dialect) -> None:
        """The row class and column converters, from the first result's description. The
        converters are in place before the row class: another thread that finds the class set
        (the sign that this is done) finds the converters too."""
        keys = self.keys if len(self.keys) == len(description) else [d.name for d in description]
        if len(self.columns) == len(description):
            found = [
                (index, type_._cached_result_processor(dialect, column.type_code))
                for index, (type_, column) in enumerate(zip(self.columns, description, strict=True))
            ]
            results = tuple((index, f) for index, f in found if f is not None)
            # A timestamptz read on a connection in UTC comes from psycopg in Python's own UTC,
            # which UtcDateTime returns as it is: no call per value for it there.
            self.results_in_utc = tuple(
                (index, f)
                for index, f in results
                if not (
                    isinstance(self.columns[index], UtcDateTime)
                    and description[index].type_code == _TIMESTAMPTZ_OID
                )
            )
            self.results = results
        self.row = cast(Any, namedtuple)("Row", keys, rename=True)._make


_MISSING: Any = object()  # a parameter neither given nor carried by the statement


def _own_value(bind: Any) -> Any:
    """The value a statement's parameter carries itself, or ``_MISSING`` if the caller gives it."""
    return _MISSING if bind is None or bind.required else bind.effective_value


# psycopg's placeholders in the SQL SQLAlchemy compiles for it: a named one, or a doubled % that
# stands for one %.
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%")


def numbered_placeholders(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """``sql`` with psycopg's named placeholders (``%(name)s``) as PostgreSQL's own (``$1``, a
    name used twice the same number) and ``%%`` as ``%``, encoded; and the names in number order.
    It is what psycopg makes of the SQL at each execution (``psycopg._queries``), and caches
    only for statements under 4,096 characters and 50 parameters: a payment's long statements
    were parsed afresh every time, 4 % of a server's CPU under load (``py-spy --gil``). Made
    once, it goes by a ``psycopg.RawCursor``, which parses nothing."""
    numbers: dict[str, str] = {}

    def number(found: re.Match[str]) -> str:
        name = found.group(1)
        if name is None:
            return "%"
        if name not in numbers:
            numbers[name] = f"${len(numbers) + 1}"
        return numbers[name]

    return _PLACEHOLDER.sub(number, sql).encode(), tuple(numbers)


def _fast_path_for(compiled: Any) -> bool:
    """Whether the statement's SQL is the same on every execution (nothing rendered per
    execution, no parameter renamed), which is what ``Core`` can send as it is."""
    return not (
        getattr(compiled, "post_compile_params", None)
        or getattr(compiled, "literal_execute_params", None)
        or getattr(compiled, "escaped_bind_names", None)
        or any(b.callable is not None for b in getattr(compiled, "binds", {}).values())
    )


_TIMESTAMPTZ_OID = 1184  # PostgreSQL's type of a timestamp with time zone
_IN_UTC = "walletguard.in_utc"  # in a pooled connection's info: its session's zone is UTC
_PREPARED: weakref.WeakKeyDictionary[Executable, _Prepared | None] = weakref.WeakKeyDictionary()
_CURSOR = "walletguard.cursor"


class Core:
    """A prebuilt statement on the session's connection, in its transaction.

    On PostgreSQL, when nothing listens to the connection's statements (no ``echo``, no
    ``before_cursor_execute``: the statement tracer of ``bench/payment_statements.py`` and
    SQLAlchemy's logging see every statement as before), a statement is compiled once, with
    PostgreSQL's numbered placeholders (``numbered_placeholders``), and each execution hands
    that SQL and the converted parameters, in order, straight to psycopg on one raw cursor
    kept with the pooled connection: SQLAlchemy's execution context, result object and cursor
    per statement are about as much CPU again as psycopg's own work (``bench/statement_floor.py``).
    The parameters and the columns go through the same type converters SQLAlchemy applies (only
    the columns that have one; on a connection in UTC not UtcDateTime's, which would return
    psycopg's timestamps as they are), and a driver error is raised as SQLAlchemy raises it
    (``IntegrityError``; a lost connection invalidated, ``connection_invalidated`` set, kit.errors
    answers 503). Everything else (SQLite, many parameter sets, a statement rendered per
    execution) runs through SQLAlchemy.
    """

    __slots__ = ("connection", "dialect")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect = connection.dialect

    def execute(
        self,
        statement: Executable,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        row: Callable[[Iterable[Any]], Any] | None = None,
    ) -> Rows:
        """``row``: what makes each row from its values in column order (a ``NamedTuple``'s
        ``_make``), instead of a row class of the statement's own: the rows come as the
        caller's type, made once."""
        connection = self.connection
        if (
            self.dialect.name != "postgresql"
            # Many parameter sets (a list of them) go as SQLAlchemy batches them; the check on
            # concrete types, not ``Mapping``: an ABC's isinstance is costly on every statement.
            or isinstance(parameters, list | tuple)
            or connection._echo
            or _listened(connection)
        ):
            return self._through_sqlalchemy(statement, parameters, row)
        prepared = _PREPARED.get(statement, _PREPARED)
        if prepared is _PREPARED:
            prepared = _prepare(statement, self.dialect)
        if prepared is None:
            return self._through_sqlalchemy(statement, parameters, row)
        assert isinstance(prepared, _Prepared)
        try:
            values = prepared.positional(cast(Mapping[str, Any] | None, parameters))
        except Exception as error:  # a converter's refusal, raised as SQLAlchemy raises it
            connection._handle_dbapi_exception(error, prepared.sql, parameters, None, None)
        if values is None:
            return self._through_sqlalchemy(statement, parameters, row)  # SQLAlchemy's own error
        record = connection.connection
        driver: Any = record.driver_connection
        cursor: Any = record.info.get(_CURSOR)
        if cursor is None or cursor.connection is not driver:
            cursor = record.info[_CURSOR] = RawCursor(driver)
        try:
            cursor.execute(prepared.numbered, values)
            # The result's status, not ``cursor.description`` (a new list of column objects at
            # every look): whether the statement returned rows.
            returned = cursor.pgresult.status == ExecStatus.TUPLES_OK
            rows = cursor.fetchall() if returned else []
        except Exception as error:  # raised as SQLAlchemy raises it (a lost connection invalidated)
            record.info.pop(_CURSOR, None)
            connection._handle_dbapi_exception(error, prepared.sql, values, cursor, None)
        if not returned:
            return Rows(rows, cursor.rowcount)
        if prepared.row is None:
            prepared.learn_rows(cursor.description, self.dialect)
        make = row or prepared.row
        assert make is not None
        converters = prepared.results_in_utc if record.info.get(_IN_UTC) else prepared.results
        if not converters:
            return Rows([make(values) for values in rows], cursor.rowcount)
        made = []
        for values in rows:
            converted = list(values)
            for index, convert in converters:
                converted[index] = convert(converted[index])
            made.append(make(converted))
        return Rows(made, cursor.rowcount)

    def _through_sqlalchemy(
        self,
        statement: Executable,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        row: Callable[[Iterable[Any]], Any] | None = None,
    ) -> Rows:
        result = self.connection.execute(statement, parameters)
        if not result.returns_rows:
            return Rows([], result.rowcount)
        rows = result.all()
        return Rows([row(r) for r in rows] if row else rows, result.rowcount)


def send_before_commit(
    session: Session,
    statement: Executable,
    parameters: Mapping[str, Any] | None = None,
    *,
    answer: Callable[[list[Any]], None] | None = None,
) -> None:
    """Execute a prebuilt statement that nothing after it in the transaction depends on: at
    once, or, while the session writes its ``CommitQueue``s at COMMIT on PostgreSQL, in the
    same round trip as COMMIT (``_send_last_statements_with_commit``), after every statement
    sent before it; a failure then fails the commit. ``answer`` is given the rows it returned
    (tuples), once it ran: after the commit when it went with it. Where ``Core.execute`` would
    hand the statement to SQLAlchemy (SQLite, a listener on the statements, SQL rendered per
    execution), it is executed at once."""
    connection = session.connection()
    if session.info.get(_COMMITTING) and connection.dialect.name == "postgresql":
        sent = _driver_form(connection, statement, parameters)
        if sent is not None:
            kept = connection.connection.info.setdefault(_WITH_COMMIT, [])
            kept.append(_Kept(sent[0], sent[1], answer))
            return
    rows = Core(connection).execute(statement, parameters)
    if answer is not None:
        answer([tuple(row) for row in rows])


def _driver_form(
    connection: Connection, statement: Executable, parameters: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]] | None:
    """The SQL and the converted parameters ``Core`` would hand psycopg, or None where Core
    would go through SQLAlchemy."""
    if connection._echo or _listened(connection):
        return None
    prepared = _PREPARED.get(statement, _PREPARED)
    if prepared is _PREPARED:
        prepared = _prepare(statement, connection.dialect)
    if prepared is None:
        return None
    assert isinstance(prepared, _Prepared)
    values = prepared.positional(parameters)
    if values is None:
        return None
    names = (name for name, _own, _convert in prepared.positions)
    return prepared.sql, dict(zip(names, values, strict=True))


def _listened(connection: Connection) -> bool:
    """Whether anything listens to the statements a connection executes (SQLAlchemy's own
    ``_has_events`` stays set once any listener was added, even after it is removed, so it
    only tells that none ever was)."""
    if not (connection._has_events or connection.engine._has_events):
        return False
    dispatch = connection.dispatch
    return bool(
        dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
    )


def _prepare(statement: Executable, dialect: Dialect) -> _Prepared | None:
    compiled = cast(ClauseElement, statement).compile(dialect=dialect)
    prepared = _Prepared(compiled) if _fast_path_for(compiled) else None
    _PREPARED[statement] = prepared
    return prepared


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


T = TypeVar("T")


def _is_ancestor_or_self(transaction: SessionTransaction, of: SessionTransaction | None) -> bool:
    current = of
    while current is not None:
        if current is transaction:
            return True
        current = current.parent
    return False


class CommitQueue(Generic[T]):
    """Writes a transaction records now and sends as its last statements before COMMIT.

    For rows every writer touches (the audit chain's head, the velocity bucket of a busy IP or
    merchant): written mid-request, such a row stays locked until COMMIT, and every other
    request queues behind the whole of this one. Queued, it is locked for the few statements
    before COMMIT only. Items commit or roll back with their transaction: those recorded in a
    transaction or savepoint that rolls back are dropped. Queues are written in ``order``
    (lowest first) after the session's own flush; a caller that must read what it queued calls
    ``write_now`` first.
    """

    _queues: ClassVar[list[CommitQueue[Any]]] = []

    def __init__(self, name: str, write: Callable[[Session, list[T]], None], *, order: int) -> None:
        self.key = f"walletguard.commit_queue.{name}"
        self.order = order
        self._write = write
        CommitQueue._queues.append(self)
        CommitQueue._queues.sort(key=lambda queue: queue.order)

    def add(self, session: Session, item: T) -> None:
        pending: list[tuple[T, SessionTransaction | None]] = session.info.setdefault(self.key, [])
        pending.append((item, session.get_nested_transaction() or session.get_transaction()))

    def has_pending(self, session: Session) -> bool:
        return bool(session.info.get(self.key))

    def pending(self, session: Session) -> list[T]:
        """What this session queued and has not written yet."""
        return [item for item, _made_in in session.info.get(self.key) or []]

    def write_now(self, session: Session) -> None:
        pending: list[tuple[T, SessionTransaction | None]] = session.info.get(self.key) or []
        if not pending:
            return
        session.info[self.key] = []
        self._write(session, [item for item, _ in pending])

    def _drop_rolled_back(self, session: Session, transaction: SessionTransaction) -> None:
        pending: list[tuple[T, SessionTransaction | None]] = session.info.get(self.key) or []
        if not pending:
            return
        if transaction.parent is None:
            session.info[self.key] = []
            return
        session.info[self.key] = [
            (item, made_in)
            for item, made_in in pending
            if not _is_ancestor_or_self(transaction, made_in)
        ]

    @classmethod
    def write_all(cls, session: Session) -> None:
        if session.in_nested_transaction():
            return
        if not any(queue.has_pending(session) for queue in cls._queues):
            return
        # Everything else first, so that the queued rows are locked only for their own
        # statements and COMMIT (on PostgreSQL sent with it: ``send_before_commit``).
        session.flush()
        session.info[_COMMITTING] = True
        try:
            for queue in cls._queues:
                queue.write_now(session)
        finally:
            session.info.pop(_COMMITTING, None)


@event.listens_for(Session, "before_commit")
def _write_queues_before_commit(session: Session) -> None:
    CommitQueue.write_all(session)


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    for queue in CommitQueue._queues:
        queue._drop_rolled_back(session, previous_transaction)


@event.listens_for(Session, "after_transaction_end")
def _forget_at_the_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        for queue in CommitQueue._queues:
            session.info.pop(queue.key, None)
