"""The request's unit of work, both ways an endpoint gets one: ``kit.http.DbSession`` (made on
the event loop, ended on a thread) and ``kit.http.in_one_unit_of_work`` (the money endpoints:
begun, run and ended on one thread) — committed when the endpoint's work returns, refusals that
keep their writes committed, other errors and failed commits rolled back, and the connection
always given back."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from walletguard.app import create_app
from walletguard.bootstrap import Container
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import Conflict, TooManyAttempts
from walletguard.kit.http import DbSession, WorkLimit, in_one_unit_of_work
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

    # The same four, as a money endpoint runs its work.
    @app.post("/test/one-hop/rows/{key}")
    async def written_in_one_hop(key: str) -> dict[str, str]:
        return await in_one_unit_of_work(
            container.sessions, lambda db: written(key, db), limit=container.money_requests
        )

    @app.post("/test/one-hop/kept/{key}")
    async def kept_in_one_hop(key: str) -> None:
        await in_one_unit_of_work(
            container.sessions,
            lambda db: refused_but_kept(key, db),
            limit=container.money_requests,
        )

    @app.post("/test/one-hop/refused/{key}")
    async def refused_in_one_hop(key: str) -> None:
        await in_one_unit_of_work(
            container.sessions, lambda db: refused(key, db), limit=container.money_requests
        )

    @app.post("/test/one-hop/commit-fails/{key}")
    async def commit_fails_in_one_hop(key: str) -> dict[str, str]:
        return await in_one_unit_of_work(
            container.sessions, lambda db: commit_fails(key, db), limit=container.money_requests
        )

    return app


WAYS = pytest.mark.parametrize("way", ["", "one-hop/"], ids=["DbSession", "in_one_unit_of_work"])


@pytest.fixture
def http(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _stored(container: Container, key: str) -> bool:
    with unit_of_work(container.sessions) as db:
        return db.scalar(select(AttemptCounter.key).where(AttemptCounter.key == key)) is not None


@WAYS
def test_what_the_endpoint_wrote_is_committed_before_the_answer(
    http: TestClient, container: Container, way: str
) -> None:
    key = f"t:{uuid.uuid4()}"
    assert http.post(f"/test/{way}rows/{key}").status_code == 200
    assert _stored(container, key)


@WAYS
def test_a_refusal_that_keeps_its_writes_is_committed(
    http: TestClient, container: Container, way: str
) -> None:
    key = f"t:{uuid.uuid4()}"
    response = http.post(f"/test/{way}kept/{key}")
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("application/problem+json")
    assert _stored(container, key)


@WAYS
def test_any_other_refusal_is_rolled_back(http: TestClient, container: Container, way: str) -> None:
    key = f"t:{uuid.uuid4()}"
    assert http.post(f"/test/{way}refused/{key}").status_code == 409
    assert not _stored(container, key)


@WAYS
def test_a_failed_commit_is_an_error_not_a_success(
    http: TestClient, container: Container, way: str
) -> None:
    key = f"t:{uuid.uuid4()}"
    response = http.post(f"/test/{way}commit-fails/{key}")
    assert response.status_code == 500
    assert not _stored(container, key)


@WAYS
def test_every_request_gives_its_connection_back(
    http: TestClient, container: Container, way: str
) -> None:
    for path in ("rows", "kept", "refused", "commit-fails"):
        http.post(f"/test/{way}{path}/t:{uuid.uuid4()}")
    pool: Any = container.engine.pool
    assert pool.checkedout() == 0


def test_no_more_units_of_work_under_one_limit_run_at_once_than_it_allows(
    container: Container,
) -> None:
    # Six money requests at once under a limit of two: two run, the others wait their turn,
    # and every one of them runs and commits in the end.
    limit = WorkLimit(2)
    lock = threading.Lock()
    running = most = 0
    keys = [f"limit:{uuid.uuid4()}" for _ in range(6)]

    def work(key: str, db: Any) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            _write(db, key, container)
            time.sleep(0.05)
        finally:
            with lock:
                running -= 1

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            for key in keys:
                tasks.start_soon(
                    lambda key=key: in_one_unit_of_work(
                        container.sessions, lambda db: work(key, db), limit=limit
                    )
                )

    anyio.run(main)
    assert most == 2
    assert all(_stored(container, key) for key in keys)
