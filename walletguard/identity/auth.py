"""Authentication as a typed dependency in the route signature (STYLE rule 4).

``CurrentHolder`` is what every endpoint uses: a signed-in session on a device that has proved
itself. A device still ``new`` (it knows the password, nothing more) gets ``device-not-verified``
everywhere except the few endpoints that take ``AnyDevice``: its own status, asking for approval,
the step-up that verifies it, and signing out.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from walletguard.bootstrap import Env
from walletguard.identity.guards import DeviceNotVerified, DeviceState
from walletguard.identity.service import IdentityService, Principal
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
    if principal.device_trust == DeviceState.NEW:
        raise DeviceNotVerified()
    return principal


CurrentHolder = Annotated[Principal, Depends(current_principal)]
AnyDevice = Annotated[Principal, Depends(any_device_principal)]
