"""create_app(settings, url) → Litestar; the lifespan owns the engine and the ingest writers."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from litestar import Litestar
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from litestar.static_files import create_static_files_router
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from service import db, logs, metrics, worker
from service.api import billing, bulks, changes, inbox, messages, ops, outbound, runs, webhooks
from service.api.auth import TokenBook
from service.api.openapi import SECURITY_SCHEMES
from service.config import Settings, Source, load_settings
from service.errors import ConfigError, DatabaseUnavailable, ServiceError, problem
from service.ingest import IngestFailed, Ingestor
from service.providers import http

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "static" / "swagger-ui"  # vendored: /schema works offline
ASSETS_PATH = "/schema/assets"


def _problem(status: int, detail: str, extensions: Mapping[str, Any] | None = None,
             headers: Mapping[str, str] | None = None) -> ProblemDetailsException:
    body = problem(status, detail, **(extensions or {}))
    return ProblemDetailsException(status_code=status, detail=detail, type_=body["type"],
                                   title=body["title"], headers=dict(headers or {}),
                                   extra={k: v for k, v in body.items()
                                          if k not in ("type", "title", "status", "detail")})


def problem_details() -> ProblemDetailsPlugin:
    """Every error answer an RFC 9457 problem: Litestar's plugin, fed by these converters."""
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map={
        ServiceError: _service_error,
        HTTPException: _http_error,
        IngestFailed: _ingest_failed,
        Exception: _unexpected,
    }))


class Every:
    """Lets a thing be done at most once per `seconds` (a warning that would repeat)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -math.inf

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


# Each 503 is an info line of the access log; what the database said is worth a warning,
# once a minute while the outage lasts.
UNAVAILABLE_WARNING = Every(60.0)


def _service_error(exc: ServiceError) -> ProblemDetailsException:
    if isinstance(exc, DatabaseUnavailable) and UNAVAILABLE_WARNING.due():
        log.warning("answering 503, the database is unavailable: %s (%s); said at most once a "
                    "minute while it lasts", exc.detail or exc.message, db.cause(exc))
    return _problem(exc.status_code, exc.explanation, exc.extra, exc.headers)


def _http_error(exc: HTTPException) -> ProblemDetailsException:
    """Litestar's own: routing (404, 405 with Allow), parameter validation (400, each
    parameter refused in `errors`), a body over the size limit (413)."""
    if exc.status_code >= 500:
        log.error("internal error", exc_info=exc)
    extra: Mapping[str, Any] | None = None
    if isinstance(exc, ValidationException) or isinstance(exc.extra, list):
        extra = {"errors": exc.extra} if exc.extra else None
    elif isinstance(exc.extra, Mapping):
        extra = exc.extra
    detail = exc.detail
    if detail == HTTPStatus(exc.status_code).phrase:  # Litestar says no more than the title
        detail = _SAY_MORE.get(exc.status_code, detail)
    return _problem(exc.status_code, detail, extra, exc.headers)


_SAY_MORE = {404: "nothing at this path", 405: "this path does not take this method: Allow "
             "lists those it takes", 413: "the body is larger than DLR_MAX_BODY_BYTES"}


def _ingest_failed(exc: IngestFailed) -> ProblemDetailsException:
    if exc.kept:
        return _problem(500, "internal error; the body was kept and can be replayed")
    return _problem(500, "internal error; the body was not stored: send it again")


def _unexpected(exc: Exception) -> ProblemDetailsException:
    if db.sqlstate(exc).startswith("22"):
        # SQLSTATE class 22, data exception: a parameter PostgreSQL cannot take (a NUL, say)
        return _problem(400, "a parameter holds a value the database cannot take")
    if db.is_unavailable(exc):
        unavailable = DatabaseUnavailable("database unavailable")
        unavailable.__cause__ = exc
        return _service_error(unavailable)
    log.exception("unhandled error", exc_info=exc)
    return _problem(500, "internal error")


class Service(Litestar):
    """The app. Every HTTP request passes logs.log_request, which Litestar's own middleware
    would not do: that runs only on requests that matched a route."""

    async def __call__(self, scope: Scope | LifeSpanScope, receive: Receive | LifeSpanReceive,
                       send: Send | LifeSpanSend) -> None:
        if scope["type"] == ScopeType.HTTP:
            await logs.log_request(super().__call__, scope, receive, send)  # type: ignore[arg-type]
        else:
            await super().__call__(scope, receive, send)


class Configured(NamedTuple):
    """What a configuration gives the handlers: settings, webhook gates and API tokens."""

    settings: Settings
    gates: dict[str, webhooks.Gate]
    tokens: TokenBook


def configured(settings: Settings) -> Configured:
    return Configured(settings, webhooks.build_gates(settings.sources),
                      TokenBook(settings.api_tokens))


async def reload_config(state: State, load: Callable[[], Settings],
                        pulled: Mapping[str, Source] | None) -> None:
    """SIGHUP: swap in the configuration as it is now; a bad one is refused, the old one kept.

    Reading the file and building from it (a rate card of 100,000 rates takes seconds) runs
    in a thread, so the loop goes on serving; handlers read settings, gates and tokens from
    the state when they need them, and the new ones replace the old in one step on the
    loop, so nothing sees half.
    """
    try:
        new = await asyncio.to_thread(lambda: configured(load()))
    except ConfigError as exc:
        # the service's own words about the file (it never quotes a secret or a rates_file)
        log.error("configuration not reloaded, the previous one stays: %s", logs.Own(exc))
        return
    except Exception:
        log.exception("configuration not reloaded, the previous one stays")
        return
    state.settings, state.gates, state.tokens = new
    settings = new.settings
    log.info("configuration reloaded: %d sources, %d API tokens", len(settings.sources),
             len(settings.api_tokens))
    if pulled is not None and settings.sources != pulled:
        log.warning("the reconciler pulls the sources it started with until the process restarts")


def _reloads(state: State, load: Callable[[], Settings],
             pulled: Mapping[str, Source] | None) -> tuple[Callable[[], None], set[asyncio.Task[None]]]:
    """The SIGHUP handler, and the reloads it started that are still running. Reloads run
    one at a time, in the order of the signals, each reading the file as it is then."""
    one_at_a_time = asyncio.Lock()
    running: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        async with one_at_a_time:
            await reload_config(state, load, pulled)

    def hung_up() -> None:
        task = asyncio.get_running_loop().create_task(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    return hung_up, running


def create_app(settings: Settings, database_url: str, *, reconciler: bool = False,
               reload: Callable[[], Settings] | None = None) -> Litestar:
    """The web application (and, if asked, the reconciler); nothing connects until it starts.
    With `reload`, SIGHUP replaces the configuration by what it returns."""
    start = configured(settings)

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
        reloading: set[asyncio.Task[None]] = set()
        if reload is not None:
            hung_up, reloading = _reloads(app.state, reload,
                                          settings.sources if reconciler else None)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hung_up)
        log.info("app started: %d sources, %d API tokens", len(settings.sources),
                 len(settings.api_tokens))
        try:
            yield
        finally:
            if reload is not None:  # stopping: a hangup now must not cut the shutdown short
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for task in list(reloading):
                task.cancel()
            stop.set()
            await worker.stop_within(pulling, stop, settings.shutdown_timeout_s)
            await ingestor.stop()
            await client.aclose()
            await engine.dispose()
            metrics.process_exiting()

    swagger = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>")
    return Service(
        route_handlers=[webhooks.receive_reports, webhooks.receive_report_query,
                        messages.get_message, messages.list_messages,
                        runs.list_runs, outbound.register, outbound.list_gaps, ops.live,
                        ops.ready, ops.metrics, billing.billing_summary, bulks.get_bulk,
                        changes.list_changes, inbox.list_inbox, inbox.get_kept_body,
                        create_static_files_router(ASSETS_PATH, directories=[ASSETS],
                                                   include_in_schema=False)],
        lifespan=[lifespan],
        state=State({"settings": start.settings, "gates": start.gates, "tokens": start.tokens,
                     "unverified": webhooks.Unverified(settings.unverified_body_bytes),
                     "head_revision": db.head_revision(), "horizon": changes.Horizon()}),
        plugins=[problem_details()],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="dlr-reconciler", version="0.1.0", path="/schema", description=DESCRIPTION,
            components=Components(security_schemes=dict(SECURITY_SCHEMES)),
            render_plugins=[swagger]),
        logging_config=None,  # the CLI configures logging once for every command
        debug=False,
    )


DESCRIPTION = """\
Merged SMS delivery reports: providers push to `/webhooks/{source}`, billing and CRM read `/v1`.

Every error is an RFC 9457 problem (`application/problem+json`): `type`, `title`, `status`,
`detail`, and extension members where they say more (`rejected` and `rejected_count`,
`retry_after`, `errors`). Any path answers 405 with `Allow` to a method it does not list.
Every answer carries an `X-Request-ID`: the request's own when it sent a usable one, else
one made for it; each log line of the request carries it too."""


def create_app_from_env() -> Litestar:
    """The app of one worker process of `serve --workers N`; the parent set DLR_DATABASE_URL."""
    logs.configure(queued=True)  # a new process: as the CLI does for serve
    try:
        settings = load_settings()
        assert settings.database_url is not None
        return create_app(settings, db.asyncpg_url(settings.database_url),
                          reconciler=os.environ.get("DLR_RECONCILER", "1") == "1",
                          reload=load_settings)
    except ConfigError as exc:  # the file changed since `serve` read it
        log.error("worker not started: %s", exc)
        raise SystemExit(1) from None
