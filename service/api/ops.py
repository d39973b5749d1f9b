"""Probes (live: the process answers; ready: database at head) and Prometheus metrics."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from litestar import get
from litestar.datastructures import State
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db
from service import metrics as values
from service.errors import DatabaseUnavailable


@get("/health/live", tags=["ops"], summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["ops"],
     summary="The database is reachable, migrated, and takes writes")
async def ready(state: State) -> Response[dict[str, str]]:
    try:
        async with asyncio.timeout(state.settings.db_timeout_s):
            async with db.transaction(state.engine) as conn:
                revision = await db.current_revision(conn)
                if revision == state.head_revision:
                    await writable(conn)
    except (DatabaseUnavailable, TimeoutError):
        return Response({"status": "database unavailable"}, status_code=503,
                        headers={"Retry-After": "5"})
    if revision != state.head_revision:
        return Response({"status": f"database at revision {revision}, "
                                   f"needs {state.head_revision}"}, status_code=503)
    return Response({"status": "ready"})


async def writable(conn: AsyncConnection) -> None:
    """The locks a write takes can be had now (none held by a migration, a dump with a
    lock, or an operator's LOCK TABLE); raises DatabaseUnavailable otherwise. Writes
    nothing."""
    await conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
    await conn.execute(sa.text(
        "LOCK TABLE inbox, messages, message_history IN ROW EXCLUSIVE MODE"))


@get("/metrics", tags=["ops"], summary="Prometheus metrics of every process on this port",
     media_type=CONTENT_TYPE_LATEST)
async def metrics() -> bytes:
    return values.exposition()
