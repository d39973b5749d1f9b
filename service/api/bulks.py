"""GET /v1/bulks/{source}/{bulk_id}: one bulk (Infobip bulkId, DiceSMS batch_id) at a glance."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.params import FromPath

from service import db, store
from service.api.auth import require_scope
from service.api.openapi import Documented, bearer, errors
from service.errors import NotFound
from service.rules import amount_text


class Money(msgspec.Struct):
    currency: str | None
    parts: int
    amount: str


class Bulk(msgspec.Struct):
    source: str
    bulk_id: str
    messages: int
    final: int
    parts: int
    statuses: dict[str, int]
    money: list[Money]
    first_sent_at: datetime | None
    last_sent_at: datetime | None
    delivery_rate: float  # delivered / messages


@get("/v1/bulks/{source:str}/{bulk_id:path}", guards=[require_scope], opt={"scope": "read"},
     responses=errors(400, 401, 403, 404, s404="No message of that bulk (or source)"),
     tags=["messages"], operation_id="getBulk", security=bearer("read"),
     operation_class=Documented,
     summary="Counts per status, parts and money per currency of one bulk",
     description="The id may hold `/`: the rest of the path is the id.")
async def get_bulk(source: FromPath[str], bulk_id: FromPath[str], state: State) -> Bulk:
    bulk_id = bulk_id.removeprefix("/")
    async with db.transaction(state.engine) as conn:
        totals, statuses, money = await store.bulk(conn, source, bulk_id)
    if totals.messages == 0:
        raise NotFound(f"no bulk {bulk_id!r} from source {source!r}")
    return Bulk(
        source=source, bulk_id=bulk_id, messages=totals.messages, final=totals.final,
        parts=totals.parts, statuses={row.status: row.messages for row in statuses},
        money=[Money(row.currency, row.parts, amount_text(row.amount))
               for row in money],
        first_sent_at=totals.first_sent_at, last_sent_at=totals.last_sent_at,
        delivery_rate=round(totals.delivered / totals.messages, 4))
