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
``CurrentOperator`` only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from walletguard.bootstrap import Env
from walletguard.kit.errors import NotAuthenticated
from walletguard.kit.settings import Settings

MIN_TOKEN_LENGTH = 32

log = logging.getLogger("walletguard.operators")


class OperatorTokensInvalid(ValueError):
    """``WALLETGUARD_OPERATOR_TOKENS`` is not a JSON object of names to long enough tokens."""


@dataclass(frozen=True)
class Operator:
    name: str


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
    for name, token in parsed.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise OperatorTokensInvalid("operator names are 1 to 64 characters")
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
    return Operator(found) if found is not None else None


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
