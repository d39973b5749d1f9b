"""POST /v1/outbound registers sent messages; GET /v1/gaps lists those still without a final status."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from litestar import get, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody, QueryParameter

from service import db, reconcile, store
from service.api import ERRORS
from service.api.auth import require_scope
from service.errors import BadRequest
from service.schemas import doc, plausible_time

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
DURATION = re.compile(r"^([0-9]{1,12})([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST = timedelta(days=3650)  # a grace period; anything longer is a mistake


class SentMessage(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[str, doc("Configured source", "ib")]
    sent_at: Annotated[AwareTime, doc("With an offset", "2026-11-01T10:00:00Z")]
    to: Annotated[str | None, doc("Recipient", "+41793026727")] = None
    message_id: Annotated[Text | None, doc("The provider's id, when known", "MSG-1")] = None
    bulk_id: Annotated[Text | None, doc("The provider's bulk id", "BULK-1")] = None
    callback_data: Annotated[Text | None, doc("Matches reports without message_id",
                                              "order-42")] = None


class Registered(msgspec.Struct):
    registered: int
    already_known: int


class Gap(msgspec.Struct):
    source: str
    message_id: str | None
    callback_data: str | None
    bulk_id: str | None
    to: str | None
    sent_at: datetime
    status: str | None  # the latest merged status, or null when no report arrived at all


class GapList(msgspec.Struct):
    items: list[Gap]


@post("/v1/outbound", guards=[require_scope], opt={"scope": "write"}, status_code=200,
      responses=ERRORS, tags=["outbound"], summary="Register sent messages (idempotent)")
async def register(data: JSONBody[list[SentMessage]], state: State) -> Registered:
    if len(data) > 10_000:
        raise BadRequest("at most 10000 messages per request")
    rows = []
    for index, sent in enumerate(data):
        if sent.source not in state.settings.sources:
            raise BadRequest(f"[{index}].source: unknown source {sent.source!r}")
        if sent.message_id is None and sent.callback_data is None:
            raise BadRequest(f"[{index}]: give message_id or callback_data")
        sent_at = plausible_time(f"[{index}].sent_at", sent.sent_at)
        rows.append(store.Registration(sent.source, sent_at, sent.message_id,
                                       sent.callback_data, sent.bulk_id,
                                       reconcile.e164(sent.to) if sent.to else None))
    # A registration with a message id is also a (pending) observation of that message,
    # so the message is visible, with what we sent, before the first report.
    observed = [(reconcile.observation(source=r.source, message_id=r.message_id,
                                       status=reconcile.PENDING, to=r.to, bulk_id=r.bulk_id,
                                       callback_data=r.callback_data, sent_at=r.sent_at),
                 "outbound") for r in rows if r.message_id is not None]
    async with db.transaction(state.engine) as conn:
        new = await store.register_outbound(conn, rows)
        await store.write(conn, [], observed)
    return Registered(new, len(rows) - new)


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if match is None:
        raise BadRequest("older_than: use seconds or a number with s, m, h or d (e.g. 48h)")
    seconds = int(match[1]) * UNITS[match[2]]
    if seconds > LONGEST.total_seconds():
        raise BadRequest(f"older_than: at most {LONGEST.days}d")
    return timedelta(seconds=seconds)


@get("/v1/gaps", guards=[require_scope], opt={"scope": "read"}, responses=ERRORS, tags=["outbound"],
     summary="Registered messages with no final status after a grace period (default 48h)")
async def list_gaps(state: State, source: FromQuery[str | None] = None,
                    older_than: FromQuery[str] = "48h",
                    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100) -> GapList:
    before = datetime.now(UTC) - parse_duration(older_than)
    async with db.transaction(state.engine) as conn:
        rows = await store.gaps(conn, source=source, sent_before=before, limit=limit)
    return GapList([Gap(**row._asdict()) for row in rows])
