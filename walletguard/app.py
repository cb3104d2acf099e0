"""The FastAPI application: REST API under /api/v1, problem+json errors, health checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext

from fastapi import FastAPI, Request
from sqlalchemy import text as sql_text
from starlette.types import ASGIApp, Receive, Scope, Send

from walletguard import __version__
from walletguard.alerts.endpoints import router as alerts_router
from walletguard.alerts.worker import HOUSEKEEPING_SECONDS, PeriodicJob, in_process_delivery
from walletguard.bootstrap import Container, build_container
from walletguard.identity.endpoints import router as identity_router
from walletguard.incidents.endpoints import operator_router
from walletguard.incidents.endpoints import router as incidents_router
from walletguard.kit.errors import PayloadTooLarge, install_problem_handlers, problem_response
from walletguard.kit.errors import request_language as _lang
from walletguard.kit.heap import frozen_heap
from walletguard.messages.endpoints import router as messages_router
from walletguard.messages.endpoints import sandbox_router
from walletguard.risk.endpoints import operator_router as risk_operator_router
from walletguard.risk.endpoints import router as risk_router
from walletguard.risk.service import run_housekeeping
from walletguard.wallet.endpoints import router as wallet_router


class RefuseOversizedBodies:
    """413 problem for a request that declares a body over the limit, before anything reads it.

    Plain ASGI rather than ``@app.middleware("http")``: that wrapper runs every request through
    an extra task and memory streams, a cost paid by each payment for a header check."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if value.isdigit() and int(value) > self.limit:
                        request = Request(scope)
                        error = PayloadTooLarge("error.payload_too_large.detail", limit=self.limit)
                        response = problem_response(error, _lang(request), request.url.path)
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


def periodic_jobs(container: Container) -> list[PeriodicJob]:
    """What the delivery loop also runs (``walletguard worker``, and the embedded server's
    delivery thread): the risk engine's housekeeping — expire unanswered holds, trim the
    velocity buckets no window reads any more."""
    return [
        PeriodicJob("risk housekeeping", HOUSEKEEPING_SECONDS, lambda: run_housekeeping(container))
    ]


def create_app(container: Container | None = None, *, freeze_heap: bool = False) -> FastAPI:
    """The API on ``container`` (built from the settings when not given). ``freeze_heap``:
    once started, the process's objects alive by then are kept out of the garbage collector's
    walks (``kit.heap``), which a server process wants and a process making many apps does not."""
    container = container or build_container()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The embedded default delivers alerts on a thread of the server process (see
        # walletguard.alerts.worker.delivers_in_process); production runs `walletguard worker`.
        with (
            in_process_delivery(container, periodic_jobs(container)),
            frozen_heap() if freeze_heap else nullcontext(),
        ):
            yield

    app = FastAPI(
        title="walletguard",
        version=__version__,
        description="A mobile wallet built around the cloud-SMS-sync account takeover.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.container = container
    install_problem_handlers(app)
    app.add_middleware(RefuseOversizedBodies, limit=container.settings.max_request_bytes)

    # The wallet's routes first: a request is matched against the routes in this order, one
    # after the other, and payments are the busiest (no two routers' paths overlap, so the
    # order changes which route answers no request).
    app.include_router(wallet_router)
    app.include_router(identity_router)
    app.include_router(messages_router)
    app.include_router(incidents_router)
    app.include_router(operator_router)
    app.include_router(alerts_router)
    app.include_router(risk_router)
    app.include_router(risk_operator_router)
    if container.settings.sandbox:
        app.include_router(sandbox_router)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: the database answers")
    def readyz() -> dict[str, str]:
        with container.engine.connect() as conn:
            conn.execute(sql_text("SELECT 1"))
        return {"status": "ready"}

    return app


def server_app() -> FastAPI:
    """What each server process runs (``walletguard serve``; ``uvicorn
    walletguard.app:server_app --factory``): the API from the settings, its start-up heap frozen
    (``kit.heap``), so that a full garbage collection does not stall every request in flight."""
    return create_app(freeze_heap=True)
