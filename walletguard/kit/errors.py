"""One error base class and its RFC 9457 problem+json rendering.

Services raise ``WalletguardError`` subclasses, never ``HTTPException``. Each class carries its
HTTP status, a stable problem ``type`` slug and catalogue keys for its title and detail, so the
same error reads in zh-CN or English.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from walletguard.kit.i18n import Language, negotiate, text

PROBLEM_TYPE_PREFIX = "urn:walletguard:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"

log = logging.getLogger("walletguard.errors")


class WalletguardError(Exception):
    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title_key: ClassVar[str] = "error.bad_request"
    # A refusal whose own record (failure counter, audit entry) must survive: committed, not
    # rolled back, by the unit of work.
    keep_writes: ClassVar[bool] = False

    def __init__(
        self,
        detail_key: str | None = None,
        /,
        *,
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> None:
        self.detail_key = detail_key
        self.params = params
        self.extensions = dict(extensions or {})
        self.headers = dict(headers or {})
        super().__init__(detail_key or self.slug)

    @property
    def problem_type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    def detail(self, lang: Language) -> str | None:
        return text(self.detail_key, lang, **self.params) if self.detail_key else None

    def to_problem(self, lang: Language, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.problem_type,
            "title": text(self.title_key, lang),
            "status": self.status,
        }
        detail = self.detail(lang)
        if detail:
            body["detail"] = detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class InvalidInput(WalletguardError):
    status = 422
    slug = "invalid-input"
    title_key = "error.invalid_input"


class NotAuthenticated(WalletguardError):
    status = 401
    slug = "not-authenticated"
    title_key = "error.not_authenticated"

    def __init__(self, detail_key: str | None = "error.not_authenticated.detail", /) -> None:
        super().__init__(detail_key, headers={"WWW-Authenticate": "Bearer"})


class NotFound(WalletguardError):
    status = 404
    slug = "not-found"
    title_key = "error.not_found"


class Conflict(WalletguardError):
    status = 409
    slug = "conflict"
    title_key = "error.conflict"


class TooManyAttempts(WalletguardError):
    status = 429
    slug = "too-many-attempts"
    title_key = "error.too_many_attempts"
    keep_writes = True

    def __init__(self, detail_key: str, /, *, retry_after_s: int, **params: Any) -> None:
        retry_after_s = max(1, retry_after_s)
        super().__init__(
            detail_key,
            extensions={"retry_after_s": retry_after_s},
            headers={"Retry-After": str(retry_after_s)},
            **params,
        )


class PayloadTooLarge(WalletguardError):
    status = 413
    slug = "payload-too-large"
    title_key = "error.payload_too_large"


def problem_response(
    error: WalletguardError, lang: Language, instance: str | None = None
) -> JSONResponse:
    return JSONResponse(
        error.to_problem(lang, instance),
        status_code=error.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=error.headers or None,
    )


def request_language(request: Request) -> Language:
    return negotiate(request.headers.get("accept-language"))


def _generic_problem(
    request: Request, status: int, slug: str, title_key: str, **extra: Any
) -> JSONResponse:
    lang = request_language(request)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": text(title_key, lang),
        "status": status,
        "instance": request.url.path,
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        # Never echo the submitted value: it may be a password or a card number.
        location = [str(part) for part in err.get("loc", ()) if part != "body"]
        errors.append({"field": ".".join(location), "reason": err.get("type", "invalid")})
    return errors


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(WalletguardError)
    async def _walletguard_error(request: Request, exc: WalletguardError) -> JSONResponse:
        return problem_response(exc, request_language(request), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        lang = request_language(request)
        return _generic_problem(
            request,
            422,
            "invalid-input",
            "error.invalid_input",
            detail=text("error.invalid_input.detail", lang),
            errors=_field_errors(exc),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slugs = {
            404: ("not-found", "error.not_found"),
            405: ("method-not-allowed", "error.method_not_allowed"),
        }
        slug, key = slugs.get(exc.status_code, ("http-error", "error.http"))
        return _generic_problem(request, exc.status_code, slug, key)

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if not exc.connection_invalidated:
            return await _unexpected(request, exc)
        # The database connection was lost (kit.db renews the pool). Lost before COMMIT nothing
        # was written; lost during it, the outcome is unknown to us: either way the client may
        # send the same request with the same Idempotency-Key, which cannot run it twice.
        log.warning("database connection lost", extra={"path": request.url.path})
        response = _generic_problem(request, 503, "database-unavailable", "error.database_lost")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return _generic_problem(request, 500, "internal-error", "error.internal")
