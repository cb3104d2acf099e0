"""kit.db.core: prebuilt statements on the session's connection.

On PostgreSQL they go straight to psycopg (compiled once, SQLAlchemy's type converters applied);
everything here checks that what comes back, what is written and what is raised is what
SQLAlchemy's own execution gives, on both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple, cast

import pytest
from sqlalchemy import (
    Integer,
    String,
    Table,
    Uuid,
    bindparam,
    event,
    func,
    insert,
    literal,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import (
    IntegrityError,
    MultipleResultsFound,
    NoResultFound,
    StatementError,
)
from sqlalchemy.types import TypeDecorator

from walletguard.bootstrap import Container
from walletguard.kit import db as kit_db
from walletguard.kit.db import core, unit_of_work
from walletguard.kit.ratelimit import AttemptCounter

_COUNTERS = cast(Table, AttemptCounter.__table__)
_INSERT = insert(_COUNTERS)
_BY_PREFIX = (
    select(_COUNTERS.c.key, _COUNTERS.c.failures, _COUNTERS.c.window_start)
    .where(_COUNTERS.c.key.startswith(bindparam("prefix"), autoescape=False))
    # A literal of the statement's own: sent as a parameter SQLAlchemy fills in.
    .where(_COUNTERS.c.lock_count == 0)
    .order_by(_COUNTERS.c.key)
)
_BUMP = (
    update(_COUNTERS)
    .where(_COUNTERS.c.key.startswith(bindparam("prefix"), autoescape=False))
    .values(failures=_COUNTERS.c.failures + bindparam("by"))
)
_BUMP_RETURNING = _BUMP.returning(_COUNTERS.c.key, _COUNTERS.c.locked_until)
_TEXT = text("SELECT count(*) AS n, max(window_start) AS latest FROM attempt_counters")
_COUNT = select(func.count()).select_from(_COUNTERS)

AT = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def _rows(n: int, prefix: str = "core:") -> list[dict[str, Any]]:
    return [
        {
            "key": f"{prefix}{i:02d}",
            "failures": i,
            "window_start": AT + timedelta(minutes=i),
            "locked_until": None,
            "lock_count": 0,
        }
        for i in range(n)
    ]


def _both(container: Container, statement: Any, params: dict[str, Any]) -> tuple[Any, Any]:
    """The statement's rows through kit.db.core and through SQLAlchemy, in one transaction
    that is rolled back."""
    with container.sessions() as db:
        ours = core(db).execute(statement, params).all()
        theirs = db.connection().execute(statement, params).all()
        db.rollback()
    return ours, theirs


def test_reads_return_what_sqlalchemy_returns(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        for row in _rows(5):
            core(db).execute(_INSERT, row)
    ours, theirs = _both(container, _BY_PREFIX, {"prefix": "core:"})
    assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
    assert len(ours) == 5
    first = ours[0]
    # Columns by position and by name, timestamps aware and in UTC.
    assert first[0] == first.key == "core:00"
    assert first.failures == 0
    assert first.window_start == AT
    assert first.window_start.tzinfo is not None
    assert first.window_start.utcoffset() == timedelta(0)
    key, failures, at = ours[1]
    assert (key, failures, at) == ("core:01", 1, AT + timedelta(minutes=1))

    ours, theirs = _both(container, _TEXT, {})
    assert tuple(ours[0]) == tuple(theirs[0])
    assert ours[0].n == 5


class _Counter(NamedTuple):
    key: str
    failures: int
    window_start: datetime


def test_rows_come_as_the_callers_type_with_the_same_values(container: Container) -> None:
    # ``row=``: each row made by the caller's factory from the converted values, on the fast
    # path and through SQLAlchemy alike (a listener on the statements sends it that way).
    with unit_of_work(container.sessions) as db:
        for row in _rows(3):
            core(db).execute(_INSERT, row)
    with container.sessions() as db:
        made = core(db).execute(_BY_PREFIX, {"prefix": "core:"}, row=_Counter._make).all()
        plain = core(db).execute(_BY_PREFIX, {"prefix": "core:"}).all()
        listened: list[str] = []

        def listen(*_args: Any) -> None:
            listened.append("seen")

        event.listen(container.engine, "before_cursor_execute", listen)
        try:
            through = core(db).execute(_BY_PREFIX, {"prefix": "core:"}, row=_Counter._make)
        finally:
            event.remove(container.engine, "before_cursor_execute", listen)
        db.rollback()
    assert listened
    for rows in (made, through.all()):
        assert all(type(r) is _Counter for r in rows)
        assert [tuple(r) for r in rows] == [tuple(r) for r in plain]
    assert made[1] == _Counter("core:01", 1, AT + timedelta(minutes=1))
    assert made[1].window_start.utcoffset() == timedelta(0)


def test_the_result_answers_like_sqlalchemys(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        for row in _rows(3):
            core(db).execute(_INSERT, row)
        none = core(db).execute(_BY_PREFIX, {"prefix": "nothing:"})
        assert none.first() is None
        assert none.scalar() is None
        assert none.one_or_none() is None
        with pytest.raises(NoResultFound):
            none.one()
        many = core(db).execute(_BY_PREFIX, {"prefix": "core:"})
        assert many.first().key == "core:00"
        assert many.scalar() == "core:00"
        with pytest.raises(MultipleResultsFound):
            many.one()
        with pytest.raises(MultipleResultsFound):
            many.one_or_none()
        assert core(db).execute(_COUNT).scalar_one() == 3
        assert [row.key for row in many] == ["core:00", "core:01", "core:02"]


def test_writes_count_their_rows_and_return_what_they_say(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        for row in _rows(4):
            core(db).execute(_INSERT, row)
        changed = core(db).execute(_BUMP, {"prefix": "core:0", "by": 10})
        assert changed.rowcount == 4
        assert changed.all() == []
        returned = core(db).execute(_BUMP_RETURNING, {"prefix": "core:01", "by": 1})
        assert [tuple(r) for r in returned] == [("core:01", None)]
    with container.sessions() as db:
        failures = db.scalars(select(AttemptCounter.failures).order_by(AttemptCounter.key)).all()
    assert failures == [10, 12, 12, 13]


def test_parameters_go_through_the_columns_types(container: Container) -> None:
    # UtcDateTime stores UTC whatever zone it is given, and refuses a naive datetime, as it
    # does through SQLAlchemy.
    beijing = timezone(timedelta(hours=8))
    with unit_of_work(container.sessions) as db:
        row = {**_rows(1)[0], "window_start": AT.astimezone(beijing)}
        core(db).execute(_INSERT, row)
    with container.sessions() as db:
        stored = db.get(AttemptCounter, "core:00")
        assert stored is not None
        assert stored.window_start == AT
    with container.sessions() as db:
        naive = {**_rows(1, "naive:")[0], "window_start": datetime(2026, 3, 1, 8, 30)}
        with pytest.raises(StatementError, match="naive datetimes"):
            core(db).execute(_INSERT, naive)
        db.rollback()
        with pytest.raises(StatementError, match="naive datetimes"):
            db.connection().execute(_INSERT, naive)


def test_a_missing_parameter_is_sqlalchemys_error(container: Container) -> None:
    with container.sessions() as db, pytest.raises(StatementError, match="prefix"):
        core(db).execute(_BY_PREFIX, {})


def test_a_constraint_violation_is_an_integrity_error_and_the_rest_rolls_back(
    container: Container,
) -> None:
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _rows(1)[0])
    with (  # noqa: PT012
        pytest.raises(IntegrityError) as refused,
        unit_of_work(container.sessions) as db,
    ):
        core(db).execute(_INSERT, _rows(2, "other:")[1])
        core(db).execute(_INSERT, _rows(1)[0])  # the same key again
    # The engine hides the statement's parameters from its errors (and so from the log).
    assert "[parameters:" not in str(refused.value)
    assert "SQL parameters hidden" in str(refused.value)
    with container.sessions() as db:
        assert core(db).execute(_COUNT).scalar_one() == 1  # "other:01" went with it
    # The connection goes on working after the failure (a new cursor on PostgreSQL).
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _rows(1, "after:")[0])
        assert core(db).execute(_COUNT).scalar_one() == 2


def test_many_parameter_sets_are_sent_as_sqlalchemy_sends_them(container: Container) -> None:
    with unit_of_work(container.sessions) as db:
        written = core(db).execute(_INSERT, _rows(6))
        assert written.all() == []
        assert core(db).execute(_COUNT).scalar_one() == 6


def test_on_postgresql_a_statement_is_compiled_once_and_listeners_see_it(
    container: Container, is_postgres: bool
) -> None:
    statement = select(_COUNTERS.c.key).where(_COUNTERS.c.key == bindparam("key"))
    with container.sessions() as db:
        core(db).execute(statement, {"key": "x"})
        core(db).execute(statement, {"key": "y"})
    prepared = kit_db._PREPARED.get(statement)
    # SQLite always runs through SQLAlchemy; PostgreSQL keeps what it compiled.
    assert (prepared is not None) is is_postgres

    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        seen.append(sql)

    event.listen(container.engine, "before_cursor_execute", before)
    try:
        with container.sessions() as db:
            assert core(db).execute(statement, {"key": "z"}).first() is None
    finally:
        event.remove(container.engine, "before_cursor_execute", before)
    assert any("attempt_counters" in sql for sql in seen)
    seen.clear()
    with container.sessions() as db:
        core(db).execute(statement, {"key": "z"})
    assert seen == []  # removed: nothing listens, nothing was told


def test_placeholders_are_numbered_as_postgresql_numbers_them() -> None:
    # A name used twice is one number; a doubled % is one %.
    sql = "SELECT %(a)s, %(bee_2)s, %(a)s::INTEGER WHERE x LIKE '5%%' || %(c)s"
    assert kit_db.numbered_placeholders(sql) == (
        b"SELECT $1, $2, $1::INTEGER WHERE x LIKE '5%' || $3",
        ("a", "bee_2", "c"),
    )
    assert kit_db.numbered_placeholders("SELECT 1") == (b"SELECT 1", ())


def test_a_name_used_twice_a_percent_sign_and_many_parameters(container: Container) -> None:
    """What psycopg would parse afresh each time (over 50 parameters), a parameter used twice
    and a literal % come back as SQLAlchemy's own execution gives them."""
    twice = text("SELECT :a + :a AS twice, '50%' AS pct, :b AS b").bindparams(
        bindparam("a", type_=Integer), bindparam("b", type_=String)
    )
    ours, theirs = _both(container, twice, {"a": 21, "b": "x%"})
    assert [tuple(r) for r in ours] == [tuple(r) for r in theirs] == [(42, "50%", "x%")]
    many = select(*[bindparam(f"p{i}", type_=Integer).label(f"c{i}") for i in range(60)])
    values = {f"p{i}": i * 7 for i in range(60)}
    for _ in range(2):  # the second time from what was compiled
        ours, theirs = _both(container, many, values)
        assert tuple(ours[0]) == tuple(theirs[0]) == tuple(i * 7 for i in range(60))


def test_statements_built_anew_are_not_kept(container: Container) -> None:
    # The compiled-statement cache holds statements weakly: a statement built per call (not
    # the hot paths' way, but allowed) does not stay in memory.
    import gc

    before = len(kit_db._PREPARED)
    with container.sessions() as db:
        for i in range(50):
            core(db).execute(select(_COUNTERS.c.key).where(_COUNTERS.c.key == f"k{i}"))
    gc.collect()
    assert len(kit_db._PREPARED) <= before + 1


def test_a_statement_rendered_per_execution_runs_through_sqlalchemy(
    container: Container,
) -> None:
    # in_() with a list parameter is rendered anew each time: the fast path leaves it alone.
    statement = select(_COUNTERS.c.key).where(
        _COUNTERS.c.key.in_(bindparam("keys", expanding=True))
    )
    with unit_of_work(container.sessions) as db:
        for row in _rows(3):
            core(db).execute(_INSERT, row)
    with container.sessions() as db:
        found = core(db).execute(statement, {"keys": ["core:00", "core:02", "nope"]}).all()
        assert sorted(r.key for r in found) == ["core:00", "core:02"]
        found = core(db).execute(statement, {"keys": ["core:01"]}).all()
        assert [r.key for r in found] == ["core:01"]
    assert kit_db._PREPARED.get(statement) is None


def test_an_id_round_trips(container: Container) -> None:
    # A uuid parameter of the statement's own and a uuid column: the type's converters both
    # ways (SQLite keeps it as 32 hex digits, PostgreSQL as uuid).
    holder = uuid.uuid4()
    statement = select(literal(holder, type_=Uuid()).label("id"))
    with container.sessions() as db:
        ours = core(db).execute(statement).one()
        theirs = db.connection().execute(statement).one()
    assert ours.id == theirs.id == holder


class _Shouted(TypeDecorator[str]):
    """Lower case in the database, upper case in Python: shows each converter ran."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.lower()

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.upper()


def test_a_types_own_converters_run_both_ways(container: Container) -> None:
    statement = select(type_coerce(_COUNTERS.c.key, _Shouted()).label("key")).where(
        _COUNTERS.c.key == bindparam("key", type_=_Shouted())
    )
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _rows(1)[0])
    for _ in range(2):  # compiled on the first, from the cache on the second
        ours, theirs = _both(container, statement, {"key": "CORE:00"})
        assert [r.key for r in ours] == [r.key for r in theirs] == ["CORE:00"]


def test_only_the_columns_with_a_converter_are_converted(container: Container) -> None:
    # A converted column between plain ones: each value lands in its own column, and the
    # timestamps come in Python's own UTC (on PostgreSQL straight from psycopg, the connection
    # being in UTC; on SQLite UtcDateTime adds the zone).
    statement = (
        select(
            _COUNTERS.c.failures,
            type_coerce(_COUNTERS.c.key, _Shouted()).label("key"),
            _COUNTERS.c.window_start,
            _COUNTERS.c.locked_until,
        )
        .where(_COUNTERS.c.key.startswith(bindparam("prefix"), autoescape=False))
        .order_by(_COUNTERS.c.key)
    )
    with unit_of_work(container.sessions) as db:
        for row in _rows(3, prefix="sparse:"):
            core(db).execute(_INSERT, row)
    for _ in range(2):  # the converters learnt on the first, used as learnt on the second
        ours, theirs = _both(container, statement, {"prefix": "sparse:"})
        assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
        assert [(r.failures, r.key) for r in ours] == [
            (0, "SPARSE:00"),
            (1, "SPARSE:01"),
            (2, "SPARSE:02"),
        ]
        assert [r.window_start for r in ours] == [AT + timedelta(minutes=i) for i in range(3)]
        assert all(r.window_start.tzinfo is UTC and r.locked_until is None for r in ours)


def test_a_connection_in_another_zone_still_reads_utc(container: Container) -> None:
    # What makes skipping UtcDateTime's conversion safe is the connection's zone: one that is
    # not known to be in UTC converts every timestamp, as SQLAlchemy does.
    if container.engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps no zone of its own")
    with unit_of_work(container.sessions) as db:
        core(db).execute(_INSERT, _rows(1, prefix="zone:")[0])
    with container.sessions() as db:
        record = db.connection().connection
        assert record.info.get(kit_db._IN_UTC) is True
        db.execute(text("SET LOCAL TIME ZONE 'Asia/Shanghai'"))
        del record.info[kit_db._IN_UTC]
        try:
            (row,) = core(db).execute(_BY_PREFIX, {"prefix": "zone:"}).all()
            assert row.window_start == AT
            assert row.window_start.tzinfo is UTC
        finally:
            db.rollback()
            record.info[kit_db._IN_UTC] = True
