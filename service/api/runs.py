"""GET /v1/runs: recent reconciler passes (scope admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

from service import db, store
from service.api.auth import require_scope
from service.api.openapi import Documented, bearer, errors
from service.schemas import CursorId, decode_cursor, encode_cursor


class Run(msgspec.Struct):
    id: int
    source: str
    started_at: datetime
    finished_at: datetime | None
    pages: int
    reports: int
    changed: int
    rejected: int
    error: str | None
    detail: dict[str, Any] | None
    bytes_fetched: int  # of pulled bodies, whole
    bytes_kept: int  # in the inbox: a body fetched again unchanged is recorded, not kept
    resighted: int  # pages fetched again unchanged (or answered 304 Not Modified)
    # records (reports, messages, batches …) the fetched pages held, unchanged pages too:
    # what a provider that charges per record returned bills for the pass
    records_fetched: int


class RunList(msgspec.Struct):
    items: list[Run]
    next_cursor: str | None  # pass back as `cursor` for the next page; null on the last


@get("/v1/runs", guards=[require_scope], opt={"scope": "admin"},
     responses=errors(400, 401, 403), tags=["operations"], operation_id="listRuns",
     security=bearer("admin"), operation_class=Documented,
     summary="Recent reconciler runs, newest first, keyset-paginated")
async def list_runs(state: State, source: FromQuery[str | None] = None,
                    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
                    cursor: FromQuery[str | None] = None) -> RunList:
    before = decode_cursor(cursor, tuple[CursorId])[0] if cursor else None
    async with db.transaction(state.engine) as conn:
        rows = await store.list_runs(conn, source, limit + 1, before)
    items = [Run(**row._asdict()) for row in rows[:limit]]
    next_cursor = encode_cursor((items[-1].id,)) if len(rows) > limit else None
    return RunList(items, next_cursor)
