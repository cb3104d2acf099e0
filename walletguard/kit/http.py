"""Request-scoped plumbing: the unit of work per request, the caller's IP and language.

The dependencies here that do no I/O are ``async``: FastAPI runs a plain ``def`` dependency on
a worker thread, and every such hop (hand the call to a thread, wake the event loop with the
result) costs CPU and a turn at the GIL, several times a request. Only what talks to the
database (authentication, the endpoint, the end of the unit of work) runs on threads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from walletguard.kit.db import end_unit_of_work
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


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _client_ip(request: Request) -> str | None:
    return client_ip(request)


async def _language(request: Request) -> Language:
    return request_language(request)


ClientIp = Annotated[str | None, Depends(_client_ip)]
Lang = Annotated[Language, Depends(_language)]
