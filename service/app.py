"""create_app(settings, url) → Litestar; the lifespan owns the engine and the ingest writers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from service import db, logs, metrics, worker
from service.api import billing, bulks, changes, inbox, messages, ops, outbound, runs, webhooks
from service.api.auth import TokenBook
from service.config import Settings, Source, load_settings
from service.errors import ConfigError, DatabaseUnavailable, ServiceError
from service.ingest import IngestFailed, Ingestor
from service.logs import RequestLog
from service.providers import http

log = logging.getLogger(__name__)


def _error(status: int, message: str, detail: object = None,
           headers: dict[str, str] | None = None) -> Response[dict[str, object]]:
    return Response({"error": message, "detail": detail}, status_code=status, headers=headers)


def _service_error(_: Request[None, None, State], exc: ServiceError) -> Response[dict[str, object]]:
    headers = None
    if isinstance(exc, DatabaseUnavailable):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return _error(exc.status_code, exc.message, exc.detail, headers)


def _http_error(_: Request[None, None, State], exc: HTTPException) -> Response[dict[str, object]]:
    detail = exc.extra if exc.extra else None
    return _error(exc.status_code, exc.detail, detail, exc.headers)


def _ingest_failed(_: Request[None, None, State], exc: IngestFailed) -> Response[dict[str, object]]:
    if exc.kept:
        return _error(500, "internal error; the body was kept and can be replayed")
    return _error(500, "internal error; the body was not stored: send it again")


def _unexpected(_: Request[None, None, State], exc: Exception) -> Response[dict[str, object]]:
    if db.sqlstate(exc).startswith("22"):
        # SQLSTATE class 22, data exception: a parameter PostgreSQL cannot take (a NUL, say)
        return _error(400, "a parameter holds a value the database cannot take")
    if db.is_unavailable(exc):
        return _error(503, "database unavailable", headers={"Retry-After": "5"})
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal error")


def reload_config(state: State, load: Callable[[], Settings],
                  pulled: Mapping[str, Source] | None) -> None:
    """SIGHUP: swap in the configuration as it is now; a bad one is refused, the old one kept.

    Handlers read settings, gates and tokens from the state when they need them; the new
    ones are built first and swapped in one step on the event loop, so nothing sees half.
    """
    try:
        settings = load()
        gates = webhooks.build_gates(settings.sources)
    except ConfigError as exc:
        log.error("configuration not reloaded, the previous one stays: %s", exc)
        return
    state.settings, state.gates, state.tokens = settings, gates, TokenBook(settings.api_tokens)
    log.info("configuration reloaded: %d sources, %d API tokens", len(settings.sources),
             len(settings.api_tokens))
    if pulled is not None and settings.sources != pulled:
        log.warning("the reconciler pulls the sources it started with until the process restarts")


def create_app(settings: Settings, database_url: str, *, reconciler: bool = False,
               reload: Callable[[], Settings] | None = None) -> Litestar:
    """The web application (and, if asked, the reconciler); nothing connects until it starts.
    With `reload`, SIGHUP replaces the configuration by what it returns."""
    gates = webhooks.build_gates(settings.sources)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # A request waits at most DLR_DB_TIMEOUT_S on the database, whatever it waits for.
        engine = db.create_engine(database_url, settings.db_timeout_s,
                                  statement_timeout_s=settings.db_timeout_s)
        ingestor = Ingestor(engine, timeout_s=settings.db_timeout_s)
        app.state.engine = engine
        pool: Any = engine.sync_engine.pool
        # "checkin" fires before the pool takes the connection back
        sa.event.listen(pool, "checkout",
                        lambda *_: metrics.DB_POOL_IN_USE.set(pool.checkedout()))
        sa.event.listen(pool, "checkin",
                        lambda *_: metrics.DB_POOL_IN_USE.set(pool.checkedout() - 1))
        app.state.ingestor = ingestor
        await ingestor.start()
        client = http.new_client()
        stop = asyncio.Event()
        work = (worker.run_forever(engine, client, settings.sources, stop,
                                   keep_months=settings.retention_months,
                                   spool_dir=settings.data_dir)
                if reconciler else stop.wait())
        pulling = asyncio.create_task(work)
        if reload is not None:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, reload_config, app.state, reload,
                settings.sources if reconciler else None)
        log.info("app started: %d sources, %d API tokens", len(settings.sources),
                 len(settings.api_tokens))
        try:
            yield
        finally:
            if reload is not None:  # stopping: a hangup now must not cut the shutdown short
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            stop.set()
            await worker.stop_within(pulling, stop, settings.shutdown_timeout_s)
            await ingestor.stop()
            await client.aclose()
            await engine.dispose()
            metrics.process_exiting()

    return Litestar(
        route_handlers=[webhooks.receive_reports, webhooks.receive_report_query,
                        messages.get_message, messages.list_messages,
                        runs.list_runs, outbound.register, outbound.list_gaps, ops.live,
                        ops.ready, ops.metrics, billing.billing_summary, bulks.get_bulk,
                        changes.list_changes, inbox.list_inbox, inbox.get_kept_body],
        lifespan=[lifespan],
        state=State({"settings": settings, "gates": gates, "tokens": TokenBook(settings.api_tokens),
                     "head_revision": db.head_revision(), "horizon": changes.Horizon()}),
        exception_handlers={
            ServiceError: _service_error,
            HTTPException: _http_error,
            IngestFailed: _ingest_failed,
            Exception: _unexpected,
        },
        request_max_body_size=settings.max_body_bytes,
        middleware=[RequestLog],
        openapi_config=OpenAPIConfig(title="dlr-reconciler", version="0.1.0", path="/schema",
                                     render_plugins=[SwaggerRenderPlugin()]),
        logging_config=None,  # the CLI configures logging once for every command
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """The app of one worker process of `serve --workers N`; the parent set DLR_DATABASE_URL."""
    logs.configure(os.environ.get("DLR_LOG_FORMAT", "json"))  # a new process: as the CLI does
    try:
        settings = load_settings()
        assert settings.database_url is not None
        return create_app(settings, db.asyncpg_url(settings.database_url),
                          reconciler=os.environ.get("DLR_RECONCILER", "1") == "1",
                          reload=load_settings)
    except ConfigError as exc:  # the file changed since `serve` read it
        log.error("worker not started: %s", exc)
        raise SystemExit(1) from None
