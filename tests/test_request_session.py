"""The request's unit of work (``kit.http.DbSession``): made on the event loop, ended on a
thread — committed when the endpoint returns, refusals that keep their writes committed, other
errors and failed commits rolled back, and the connection always given back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from walletguard.app import create_app
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import Conflict, TooManyAttempts
from walletguard.kit.http import DbSession
from walletguard.kit.ratelimit import AttemptCounter


def _write(db: Any, key: str, container: Container) -> None:
    db.add(AttemptCounter(key=key, failures=1, window_start=container.clock.now(), lock_count=0))
    db.flush()


@pytest.fixture
def app(container: Container) -> FastAPI:
    app = create_app(container)

    @app.post("/test/rows/{key}")
    def written(key: str, db: DbSession) -> dict[str, str]:
        _write(db, key, container)
        return {"key": key}

    @app.post("/test/kept/{key}")
    def refused_but_kept(key: str, db: DbSession) -> None:
        _write(db, key, container)
        raise TooManyAttempts("error.too_many_attempts", retry_after_s=5)

    @app.post("/test/refused/{key}")
    def refused(key: str, db: DbSession) -> None:
        _write(db, key, container)
        raise Conflict()

    @app.post("/test/commit-fails/{key}")
    def commit_fails(key: str, db: DbSession) -> dict[str, str]:
        _write(db, key, container)

        def refuse(_session: Any) -> None:
            raise RuntimeError("the commit is refused")

        event.listen(db, "before_commit", refuse)
        return {"key": key}

    return app


@pytest.fixture
def http(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _stored(container: Container, key: str) -> bool:
    with unit_of_work(container.sessions) as db:
        return db.scalar(select(AttemptCounter.key).where(AttemptCounter.key == key)) is not None


def test_what_the_endpoint_wrote_is_committed_before_the_answer(
    http: TestClient, container: Container
) -> None:
    key = f"t:{uuid.uuid4()}"
    assert http.post(f"/test/rows/{key}").status_code == 200
    assert _stored(container, key)


def test_a_refusal_that_keeps_its_writes_is_committed(
    http: TestClient, container: Container
) -> None:
    key = f"t:{uuid.uuid4()}"
    response = http.post(f"/test/kept/{key}")
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _stored(container, key)


def test_any_other_refusal_is_rolled_back(http: TestClient, container: Container) -> None:
    key = f"t:{uuid.uuid4()}"
    assert http.post(f"/test/refused/{key}").status_code == 409
    assert not _stored(container, key)


def test_a_failed_commit_is_an_error_not_a_success(http: TestClient, container: Container) -> None:
    key = f"t:{uuid.uuid4()}"
    response = http.post(f"/test/commit-fails/{key}")
    assert response.status_code == 500
    assert not _stored(container, key)


def test_every_request_gives_its_connection_back(http: TestClient, container: Container) -> None:
    for path in ("rows", "kept", "refused", "commit-fails"):
        http.post(f"/test/{path}/t:{uuid.uuid4()}")
    pool: Any = container.engine.pool
    assert pool.checkedout() == 0
