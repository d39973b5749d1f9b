"""Probes (live: the process answers; ready: database at head) and Prometheus metrics."""

from __future__ import annotations

import asyncio

from litestar import get
from litestar.datastructures import State
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service import db
from service import metrics as values
from service.errors import DatabaseUnavailable


@get("/health/live", tags=["ops"], summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["ops"], summary="The database is reachable and migrated")
async def ready(state: State) -> Response[dict[str, str]]:
    try:
        async with asyncio.timeout(state.settings.db_timeout_s):
            async with db.transaction(state.engine) as conn:
                revision = await db.current_revision(conn)
    except (DatabaseUnavailable, TimeoutError):
        return Response({"status": "database unavailable"}, status_code=503,
                        headers={"Retry-After": "5"})
    if revision != state.head_revision:
        return Response({"status": f"database at revision {revision}, "
                                   f"needs {state.head_revision}"}, status_code=503)
    return Response({"status": "ready"})


@get("/metrics", tags=["ops"], summary="Prometheus metrics of every process on this port",
     media_type=CONTENT_TYPE_LATEST)
async def metrics() -> bytes:
    return values.exposition()
