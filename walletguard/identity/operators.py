"""Operators (the wallet provider's risk and service staff): a minimal API-key mechanism.

There is no operator account system yet. Until there is, each operator gets a long random API
key, configured as ``WALLETGUARD_OPERATOR_TOKENS`` = JSON ``{"operator-name": "token", ...}``
(a ``SecretStr``: it never prints). A request presents its key as ``Authorization: Bearer
<token>``; every configured key is compared in constant time (``hmac.compare_digest`` of their
SHA-256 digests, all of them, no early exit), so neither timing nor length says which key or how
much of it was right. The operator's name is what the audit log records for each change.

Why keys and not accounts: the incident desk needs operators now, and a key per person gives
attribution and revocation (remove the line, restart) without a second login system to secure.
An operator account system with MFA replaces this module, not its callers: they depend on
``CurrentOperator`` (any operator) or ``require_role(...)`` only.

Roles: ``risk_analyst`` (risk review queue, rules), ``case_worker`` (the incident desk),
``admin`` (everything). A value may be a token alone — ``{"name": "token"}``, the original form,
which keeps working and means ``admin`` — or
``{"name": {"token": "…", "roles": ["risk_analyst"]}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from walletguard.bootstrap import Env
from walletguard.kit.errors import NotAuthenticated, WalletguardError
from walletguard.kit.settings import Settings

MIN_TOKEN_LENGTH = 32
ROLES = ("risk_analyst", "case_worker", "admin")

log = logging.getLogger("walletguard.operators")


class OperatorTokensInvalid(ValueError):
    """``WALLETGUARD_OPERATOR_TOKENS`` is not a JSON object of names to long enough tokens."""


@dataclass(frozen=True)
class Operator:
    name: str
    roles: frozenset[str] = frozenset({"admin"})

    def has_role(self, *roles: str) -> bool:
        return "admin" in self.roles or bool(self.roles & set(roles))


class OperatorRoleMissing(WalletguardError):
    status = 403
    slug = "operator-role-missing"
    title_key = "error.operator_role_missing"

    def __init__(self, roles: tuple[str, ...]) -> None:
        super().__init__("error.operator_role_missing.detail", extensions={"roles": list(roles)})


def operator_roles(settings: Settings) -> dict[str, frozenset[str]]:
    """Operator name -> roles (a token given alone, the original form, means admin)."""
    if settings.operator_tokens is None:
        return {}
    parsed = json.loads(settings.operator_tokens.get_secret_value())
    roles: dict[str, frozenset[str]] = {}
    for name, value in parsed.items():
        if isinstance(value, dict):
            roles[name.strip()] = frozenset(value.get("roles") or ())
        else:
            roles[name.strip()] = frozenset({"admin"})
    return roles


def operator_digests(settings: Settings) -> dict[str, bytes]:
    """Operator name -> SHA-256 of their token; empty when no operator is configured."""
    if settings.operator_tokens is None:
        return {}
    raw = settings.operator_tokens.get_secret_value()
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise OperatorTokensInvalid("WALLETGUARD_OPERATOR_TOKENS is not valid JSON") from exc
    if not isinstance(parsed, dict):
        raise OperatorTokensInvalid("WALLETGUARD_OPERATOR_TOKENS must be a JSON object")
    digests: dict[str, bytes] = {}
    for name, value in parsed.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise OperatorTokensInvalid("operator names are 1 to 64 characters")
        token = value
        if isinstance(value, dict):
            token = value.get("token")
            roles = value.get("roles")
            if not isinstance(roles, list) or not roles or any(role not in ROLES for role in roles):
                raise OperatorTokensInvalid(
                    f"operator {name!r}: roles is a non-empty list of {', '.join(ROLES)}"
                )
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            raise OperatorTokensInvalid(
                f"operator {name!r}: a token must be at least {MIN_TOKEN_LENGTH} characters"
            )
        digests[name.strip()] = hashlib.sha256(token.encode("utf-8")).digest()
    return digests


def operator_for_token(settings: Settings, token: str) -> Operator | None:
    try:
        digests = operator_digests(settings)
    except OperatorTokensInvalid as exc:
        # Fail closed: a malformed configuration lets nobody in, and says why in the log.
        log.error("operator API disabled: %s", exc)
        return None
    given = hashlib.sha256(token.encode("utf-8")).digest()
    found: str | None = None
    for name, digest in digests.items():
        if hmac.compare_digest(given, digest) and found is None:
            found = name
    if found is None:
        return None
    return Operator(found, operator_roles(settings).get(found, frozenset()))


def current_operator(request: Request, env: Env) -> Operator:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated()
    operator = operator_for_token(env.settings, token.strip())
    if operator is None:
        raise NotAuthenticated()
    return operator


CurrentOperator = Annotated[Operator, Depends(current_operator)]


def require_role(*roles: str) -> Callable[[Operator], Operator]:
    """A dependency: the calling operator, who must hold one of ``roles`` (or admin)."""

    def dependency(operator: CurrentOperator) -> Operator:
        if not operator.has_role(*roles):
            raise OperatorRoleMissing(roles)
        return operator

    return dependency
