"""Request-scoped plumbing: the unit of work per request, the caller's IP and language."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import request_language
from walletguard.kit.i18n import Language


def _db_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.container.sessions
    # Committed when the endpoint returns, before the response is sent (scope="function"), so
    # a failed commit is an error response, never a success that did not happen.
    with unit_of_work(factory) as session:
        yield session


DbSession = Annotated[Session, Depends(_db_session, scope="function")]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


ClientIp = Annotated[str | None, Depends(client_ip)]
Lang = Annotated[Language, Depends(request_language)]
