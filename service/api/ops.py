"""Probes (live: the process answers; ready: database at head) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from litestar import get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db
from service import metrics as values
from service.api.openapi import Documented, errors
from service.errors import DatabaseUnavailable, ServiceError


class NotReady(ServiceError):
    """The database answers but is not at the newest revision: retrying soon will not help,
    so no Retry-After."""

    status_code = 503


@get("/health/live", tags=["ops"], summary="The process is up", operation_id="healthLive",
     responses=errors(), operation_class=Documented)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["ops"], operation_id="healthReady", operation_class=Documented,
     responses=errors(s503="Not ready: the database is unavailable, not at the newest "
                           "revision, or locked against writes (or the connection cap)"),
     summary="The database is reachable, migrated, and takes writes")
async def ready(state: State) -> dict[str, str]:
    try:
        async with asyncio.timeout(state.settings.db_timeout_s):
            async with db.transaction(state.engine) as conn:
                revision = await db.current_revision(conn)
                if revision == state.head_revision:
                    await writable(conn)
    except TimeoutError:
        raise DatabaseUnavailable("database unavailable",
                                  "the database did not answer in time") from None
    if revision != state.head_revision:
        raise NotReady(f"database at revision {revision}, needs {state.head_revision}")
    return {"status": "ready"}


async def writable(conn: AsyncConnection) -> None:
    """The locks a write takes can be had now (none held by a migration, a dump with a
    lock, or an operator's LOCK TABLE); raises DatabaseUnavailable otherwise. Writes
    nothing."""
    await conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
    await conn.execute(sa.text(
        "LOCK TABLE inbox, messages, message_history IN ROW EXCLUSIVE MODE"))


@get("/metrics", tags=["ops"], summary="Prometheus metrics of every process on this port",
     media_type=CONTENT_TYPE_LATEST, operation_id="metrics", responses=errors(),
     operation_class=Documented)
async def metrics() -> bytes:
    return values.exposition()
