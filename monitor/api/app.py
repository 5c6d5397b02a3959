"""The FastAPI application: routes, auth, the error -> HTTP status map, health and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor import __version__
from monitor.api import areas, evidence, results, review, web
from monitor.db import migrate, queries
from monitor.db.engine import make_engine, transaction
from monitor.errors import MonitorError
from monitor.metrics import Metrics, default_metrics
from monitor.redact import redact
from monitor.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Watches land parcels from space and reports new construction without a building permit.

Every endpoint except `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <token>`;
tokens come from `monitor tokens create NAME --scope read|write`. `read` allows every GET, `write`
(which includes `read`) every change. Errors are JSON: `{"detail": message, "field": ..., "row": ...}`;
bad input gets 422, an unknown name or id 404, a clash with stored data 409. A request that fails
writes nothing.
"""


def status_of(error: MonitorError) -> int:
    """The HTTP status of a project error (its class says it: ``http_status``)."""
    return error.http_status


def _body(message: str, **extra) -> dict:
    return {"detail": message, **{k: v for k, v in extra.items() if v is not None}}


class BodyLimit:
    """ASGI middleware that answers 413 to a request whose body is larger than ``limit`` bytes: at
    once when its Content-Length says so, else as soon as that much has been received."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, its body counted."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.limit / 1e6:g} MB (MONITOR_MAX_BODY_MB)"

    def _too_large(self) -> JSONResponse:
        return JSONResponse(_body(self._message()), status_code=413, headers={"Connection": "close"})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MonitorError)
    async def monitor_error(request: Request, e: MonitorError) -> JSONResponse:
        status = status_of(e)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, e)
        extra = {k: (str(v) if k == "file" and v is not None else v) for k, v in e.data.items()
                 if k in ("file", "row", "field")}
        return JSONResponse(_body(redact(e.message), **extra), status_code=status)

    @app.exception_handler(sa.exc.IntegrityError)
    async def integrity(request: Request, e: sa.exc.IntegrityError) -> JSONResponse:
        # A unique key taken by a concurrent request between our check and our insert.
        return JSONResponse(_body(f"conflicts with stored data: {str(e.orig).splitlines()[0]}"), status_code=409)

    @app.exception_handler(sa.exc.DataError)
    async def data_error(request: Request, e: sa.exc.DataError) -> JSONResponse:
        return JSONResponse(_body(f"the database refused a value: {str(e.orig).splitlines()[0]}"), status_code=422)

    @app.exception_handler(sa.exc.OperationalError)
    async def unavailable(request: Request, e: sa.exc.OperationalError) -> JSONResponse:
        log.error("%s %s: database unavailable: %s", request.method, request.url.path, e)
        return JSONResponse(_body("the database is unavailable"), status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(_body(f"internal error ({type(e).__name__}); see the server log"), status_code=500)


def refresh_gauges(engine: Engine, metrics: Metrics) -> None:
    """Gauges that the database knows best, refreshed at scrape time so that every replica, and a
    freshly restarted one, reports them: open alerts and the newest processed scene per area."""
    with transaction(engine) as s:
        open_alerts = queries.open_alerts(s)
        newest = queries.newest_processed(s)
    metrics.open_alerts.clear()
    for name, n in open_alerts.items():
        metrics.open_alerts.labels(name).set(n)
    for name, when in newest.items():
        metrics.newest_scene.labels(name).set(when.timestamp())


def create_app(settings: Settings, engine: Engine | None = None, metrics: Metrics | None = None,
               scheduler_state: Callable[[], str] | None = None) -> FastAPI:
    """The API. ``engine`` defaults to ``make_engine(settings)``, ``metrics`` to the process-wide
    ones; ``scheduler_state`` returns ``leader``, ``standby`` or ``stopped`` for ``/readyz``
    (``Scheduler.role``); without it ``/readyz`` reports the scheduler as ``off``."""
    if engine is None:
        engine = make_engine(settings)
    metrics = metrics if metrics is not None else default_metrics()
    head = migrate.head()
    # Alembic announces its dialect at INFO on every schema check; /readyz is polled often.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

    app = FastAPI(title="monitor", version=__version__, description=DESCRIPTION, docs_url=None,
                  redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=int(settings.max_body_mb * 1e6))
    app.include_router(review.router)  # first: /alerts/counts before /alerts/{alert_id}
    app.include_router(areas.router)
    app.include_router(results.router)
    app.include_router(evidence.router)
    web.install(app)

    @app.get("/healthz", tags=["service"], summary="The process is up")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], summary="Database reachable, schema at head, scheduler role",
             responses={503: {"description": "Not ready: the body says why."}})
    def readyz() -> JSONResponse:
        out: dict = {"database": "ok", "schema": {"current": None, "head": head},
                     "scheduler": scheduler_state() if scheduler_state else "off"}
        ready = True
        try:
            out["schema"]["current"] = migrate.current(engine)
        except sa.exc.SQLAlchemyError as e:
            # the reason (with the server's address) goes to the log only: /readyz needs no token
            log.warning("readyz: database unreachable: %s", (str(getattr(e, "orig", None) or e).splitlines() or [""])[0])
            out["database"] = "unreachable"
            ready = False
        if ready and out["schema"]["current"] != head:
            out["schema"]["problem"] = "not at head: run `monitor db upgrade`"
            ready = False
        out["status"] = "ready" if ready else "not ready"
        return JSONResponse(out, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        try:
            refresh_gauges(engine, metrics)
        except sa.exc.SQLAlchemyError as e:
            log.warning("metrics: cannot refresh database gauges: %s", str(e).splitlines()[0])
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
