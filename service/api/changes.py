"""GET /v1/changes: merged rows in seq order, never past a change still in flight.

Concurrent transactions commit out of seq order, so a request serves rows only up to a
horizon at or below which every seq is settled (its writer committed or rolled back). A
consumer that resumes from the `after` it was given then sees every change (a row changed
again reappears with its new seq). No lock is taken: writers never wait for the feed.

Why the horizon is sound:

1. A writer has its transaction id before it takes its first seq (the `feed_guard` CTE of
   store._upsert_messages). Ids are handed out in increasing order, and a transaction is
   in the server's list of running ones from the moment it has an id until it ends.
2. A request reads the sequence's value L, then takes a transaction id F of its own, in a
   transaction that ends at once. A writer holding a seq <= L took it before L was read,
   so its id is older than F.
3. It then polls new snapshots (one per statement, never holding a lock) until a
   snapshot's xmin, the oldest id still running, is above F: every writer holding a seq
   <= L has then ended, so L is the horizon. A snapshot taken after F ended counts every
   id below F that is still running (it lists running ids only up to the newest ended
   one, which is why F is taken and ended rather than a snapshot simply read after L).
   Ended means gone from that list, not marked in the commit log (`pg_xact_status`): a
   committed transaction waiting for a synchronous replica is not yet visible to others.
4. The rows are read afterwards, in a newer snapshot, which sees every committed seq <= L.

The sequence must keep CACHE 1: values cached by a session could be handed out after L
was read. Any transaction older than F holds xmin back, whatever it does and in whichever
database of the server; after WAIT_S the request serves up to the highest horizon this
process has proven so far (it only grows), which may be an empty page with `after`
unchanged, rather than waiting longer or failing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.datastructures import State
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, store
from service.api.auth import PII_NOTE, require_scope, sees_pii
from service.api.openapi import Documented, bearer, errors
from service.schemas import Message, message_from_row, without_pii

WAIT_S = 1.0  # the longest a request waits for writers in flight before serving what is proven


class Horizon:
    """The highest seq this process has proven settled; it only grows."""

    def __init__(self) -> None:
        self.proven = 0

    async def advance(self, engine: AsyncEngine, after: int, wait_s: float) -> int:
        """A seq at or below which every change has settled: the sequence's value if the
        writers in flight end within `wait_s`, else the last one proven."""
        loop = asyncio.get_running_loop()
        # Each step its own transaction (behind PgBouncer too): the fence must have ended
        # before the polls, and no poll may hold a snapshot or an id of its own.
        async with db.transaction(engine) as conn:
            last = await store.last_seq(conn)
        if last <= max(after, self.proven):
            return last  # nothing new to serve past `after`, or already proven
        async with db.transaction(engine) as conn:
            fence = await store.new_xid(conn)
        deadline, pause = loop.time() + wait_s, 0.002
        while True:
            async with db.transaction(engine) as conn:
                if await store.ended_up_to(conn, fence):
                    break
            if loop.time() >= deadline:
                return self.proven
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        self.proven = max(self.proven, last)
        return last


class ChangePage(msgspec.Struct):
    items: list[Message]
    after: int  # pass back as `after` for the next page


@get("/v1/changes", guards=[require_scope], opt={"scope": "read"},
     responses=errors(400, 401, 403), tags=["messages"], operation_id="listChanges",
     security=bearer("read"), operation_class=Documented,
     summary="Merged rows changed after a seq, in seq order; resume from the returned after",
     description=PII_NOTE)
async def list_changes(state: State, request: Request[Any, Any, State],
                       after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
                       limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100) -> ChangePage:
    horizon = await state.horizon.advance(state.engine, after, WAIT_S)
    async with db.transaction(state.engine) as conn:
        rows = await store.changes(conn, after, horizon, limit)
    items = [message_from_row(row) for row in rows]
    if not sees_pii(request):
        items = [without_pii(item) for item in items]
    # A short page means everything up to the horizon was seen: continue from there.
    following = items[-1].seq if len(items) == limit else max(after, horizon)
    return ChangePage(items, following)
