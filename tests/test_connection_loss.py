"""A pooled PostgreSQL connection that dies: replaced unseen if it died while idle, otherwise its
request is answered 503 ``database-unavailable`` and the pool renews itself (kit.db)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import assert_problem, register
from walletguard.bootstrap import Container
from walletguard.kit.db import create_db_engine


@pytest.fixture
def postgres_url(db_url: str, is_postgres: bool) -> str:
    if not is_postgres:
        pytest.skip("connection loss is a PostgreSQL matter: SQLite is a file, not a server")
    return db_url


def _pooled_pid(engine: Engine) -> int:
    """The server process of the one connection in ``engine``'s pool (checked in again)."""
    with engine.connect() as conn:
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    return pid


def _terminate(url: str, pid: int) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        admin.dispose()


def _select_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_that_died_while_idle_is_replaced_before_use(postgres_url: str) -> None:
    engine = create_db_engine(postgres_url, ping_after_idle_s=0.0)
    try:
        dead = _pooled_pid(engine)
        _terminate(postgres_url, dead)
        # Idle at least 0 s: pinged at checkout, found dead, replaced; the caller never knows.
        assert _select_pid(engine) != dead
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged_and_its_failure_renews_the_pool(
    postgres_url: str,
) -> None:
    engine = create_db_engine(postgres_url, ping_after_idle_s=3600.0)
    try:
        dead = _pooled_pid(engine)
        _terminate(postgres_url, dead)
        with pytest.raises(DBAPIError) as lost:
            _select_pid(engine)
        assert lost.value.connection_invalidated
        assert _select_pid(engine) != dead
    finally:
        engine.dispose()


def test_a_request_on_a_lost_connection_is_a_503_and_its_retry_succeeds(
    postgres_url: str, client: TestClient, container: Container
) -> None:
    holder = register(client, container)
    assert client.get("/api/v1/wallet", headers=holder.auth).status_code == 200
    _terminate(postgres_url, _pooled_pid(container.engine))
    lost = client.get("/api/v1/wallet", headers={**holder.auth, "accept-language": "en"})
    body = assert_problem(lost, 503, "database-unavailable")
    assert lost.headers["retry-after"] == "1"
    assert "Idempotency-Key" in body["title"]
    again = client.get("/api/v1/wallet", headers=holder.auth)
    assert again.status_code == 200, again.text
