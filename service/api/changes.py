"""GET /v1/changes: merged rows in seq order, never past a change still in flight.

Writers take `seq` values while holding the feed lock shared; a feed request takes it
exclusively for an instant, so every seq at or below the horizon it then reads is
committed, and every later change gets a higher seq. A consumer that resumes from the
`after` it was given therefore sees every change (a row changed again reappears with
its new seq).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.params import QueryParameter

from service import db, store
from service.api import ERRORS
from service.api.auth import require_scope
from service.schemas import Message, message_from_row


class ChangePage(msgspec.Struct):
    items: list[Message]
    after: int  # pass back as `after` for the next page


@get("/v1/changes", guards=[require_scope], opt={"scope": "read"}, responses=ERRORS, tags=["messages"],
     summary="Merged rows changed after a seq, in seq order; resume from the returned after")
async def list_changes(state: State, after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
                       limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100) -> ChangePage:
    async with db.transaction(state.engine) as conn:
        horizon = await store.feed_horizon(conn)
    async with db.transaction(state.engine) as conn:
        rows = await store.changes(conn, after, horizon, limit)
    items = [message_from_row(row) for row in rows]
    # A short page means everything up to the horizon was seen: continue from there.
    following = items[-1].seq if len(items) == limit else max(after, horizon)
    return ChangePage(items, following)
