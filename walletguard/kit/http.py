"""Request-scoped plumbing: the unit of work per request, the caller's IP and language.

The dependencies here that do no I/O are ``async``: FastAPI runs a plain ``def`` dependency on
a worker thread, and every such hop (hand the call to a thread, wake the event loop with the
result) costs CPU and a turn at the GIL, several times a request. Only what talks to the
database (authentication, the endpoint, the end of the unit of work) runs on threads; the money
endpoints run all three in one hop (``in_one_unit_of_work``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from walletguard.kit.db import end_unit_of_work, unit_of_work
from walletguard.kit.errors import request_language
from walletguard.kit.i18n import Language


async def _db_session(request: Request) -> AsyncIterator[Session]:
    """The request's unit of work (``kit.db.unit_of_work``, split across threads).

    Making a session opens nothing (it takes a connection at its first statement), so it is
    made here, on the event loop. Its end (commit or roll back, then close) talks to the
    database: it runs on a thread, shielded from cancellation so a client that goes away
    cannot leave it half done, under a limiter of its own (as FastAPI does for ``def``
    generators) so it never waits for a thread held by a request waiting for its connection.
    It ends when the endpoint returns, before the response is sent (``scope="function"``): a
    failed commit is an error response, never a success that did not happen.
    """
    factory: sessionmaker[Session] = request.app.state.container.sessions
    session = factory()
    error: BaseException | None = None
    try:
        yield session
    except BaseException as exc:
        error = exc
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                end_unit_of_work, session, error, limiter=anyio.CapacityLimiter(1)
            )


DbSession = Annotated[Session, Depends(_db_session, scope="function")]

T = TypeVar("T")


class WorkLimit:
    """At most ``total`` calls of ``in_one_unit_of_work`` under this limit at once in the
    process; the others wait their turn, first come first served. Made with the app, before
    any event loop runs; the limiter itself is made at its first use, on the running loop's
    backend (anyio makes it there)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._limiter: anyio.CapacityLimiter | None = None

    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.total)
        return self._limiter


async def in_one_unit_of_work(
    sessions: sessionmaker[Session], work: Callable[[Session], T], *, limit: WorkLimit
) -> T:
    """``work`` in a unit of work of its own (``kit.db.unit_of_work``: begun, committed or, on
    error, rolled back, and closed), the whole of it on one worker thread.

    For the money endpoints, the busiest: a ``def`` endpoint taking ``DbSession`` and the
    ``def`` authentication dependency is three hops to worker threads (authenticate, the
    endpoint, the end of the unit of work), and under load the two extra hops and the threads'
    turns at the GIL cost a payment about 2 of its 10 ms of server CPU (``bench/bench_payments.py``;
    README, Benchmarks). Such an endpoint is ``async``, its dependencies do no
    I/O, and it hands its authentication, its work and its commit to this one call. If the
    client goes away the thread is not abandoned: the unit of work ends, committed or rolled
    back, before the request sees the cancellation. A failed commit raises here, so it is an
    error response, never a success that did not happen.

    At most ``limit.total`` of them run at once (``WALLETGUARD_MONEY_CONCURRENCY``), not as
    many as the shared pool of worker threads has: under load, every request beyond what
    keeps the database and Python's lock busy only waits, for the lock, holding its rows, and
    makes the others wait longer. On a 2-core machine, 8 a process rather than 40 gave about
    15 % more payments a second and a closed-loop p99 some 40 % shorter; 2, 4 and 8 alike, 16
    no better than 40 (``bench/bench_payments.py``; README, Benchmarks).
    """
    return await anyio.to_thread.run_sync(
        _run_unit_of_work, sessions, work, limiter=limit.limiter()
    )


def _run_unit_of_work(sessions: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    with unit_of_work(sessions) as session:
        return work(session)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _client_ip(request: Request) -> str | None:
    return client_ip(request)


async def _language(request: Request) -> Language:
    return request_language(request)


ClientIp = Annotated[str | None, Depends(_client_ip)]
Lang = Annotated[Language, Depends(_language)]
