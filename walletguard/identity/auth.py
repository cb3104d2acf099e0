"""Authentication as a typed dependency in the route signature (STYLE rule 4).

``CurrentHolder`` is what every endpoint uses: a signed-in session on a device that has proved
itself. A device still ``new`` (it knows the password, nothing more) gets ``device-not-verified``
everywhere except the few endpoints that take ``AnyDevice``: its own status, asking for approval,
the step-up that verifies it, and signing out.

The money endpoints take ``HolderCredentials`` instead: the same check, made by
``SessionCredentials.holder`` on the worker thread that runs the request's whole unit of work
(``kit.http.in_one_unit_of_work``), so that authenticating is not a thread hop of its own. A
request without a bearer token is refused by the dependency itself, before its body is read;
one whose token is not a live session is refused by ``holder``, before any work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from walletguard.bootstrap import Container, Env
from walletguard.identity.guards import DeviceNotVerified, DeviceState
from walletguard.identity.service import IdentityService, Principal
from walletguard.kit.crypto import hash_token
from walletguard.kit.errors import NotAuthenticated
from walletguard.kit.http import DbSession, client_ip


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated()
    return token.strip()


def any_device_principal(request: Request, db: DbSession, env: Env) -> Principal:
    return IdentityService(db, env).authenticate(_bearer_token(request), client_ip(request))


async def current_principal(
    principal: Annotated[Principal, Depends(any_device_principal)],
) -> Principal:
    # async: no I/O, so no hop to a worker thread (see walletguard.kit.http).
    return _on_verified_device(principal)


def _on_verified_device(principal: Principal) -> Principal:
    if principal.device_trust == DeviceState.NEW:
        raise DeviceNotVerified()
    return principal


class SessionCredentials:
    """The request's bearer token and IP, not checked yet: ``holder`` checks them."""

    __slots__ = ("ip", "token")

    def __init__(self, token: str, ip: str | None) -> None:
        self.token = token
        self.ip = ip

    def holder(self, db: Session, env: Container) -> Principal:
        """What ``CurrentHolder`` is: the holder of a live session on a verified device (in
        ``db``'s unit of work, which records that the session was used)."""
        return _on_verified_device(IdentityService(db, env).authenticate(self.token, self.ip))

    def token_hash(self) -> str:
        """What ``SESSION_BY_TOKEN`` finds the session by, for a caller that reads it itself."""
        return hash_token(self.token)

    def holder_of(self, db: Session, env: Container, found: Sequence[Any] | None) -> Principal:
        """``holder``, from the row a caller's own statement read with ``SESSION_BY_TOKEN``
        (None: the token found nothing)."""
        return _on_verified_device(IdentityService(db, env).principal_of(found, self.ip))


async def session_credentials(request: Request) -> SessionCredentials:
    # async: headers only, no hop; no token is a 401 before the body is read.
    return SessionCredentials(_bearer_token(request), client_ip(request))


CurrentHolder = Annotated[Principal, Depends(current_principal)]
AnyDevice = Annotated[Principal, Depends(any_device_principal)]
HolderCredentials = Annotated[SessionCredentials, Depends(session_credentials)]
