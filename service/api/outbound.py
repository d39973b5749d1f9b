"""POST /v1/outbound registers sent messages; GET /v1/gaps lists those still without a final status."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.openapi.spec import Example, OpenAPIMediaType, RequestBody
from litestar.params import FromQuery, QueryParameter

from service import db, rules, store
from service.api.auth import require_scope, sees_pii
from service.api.openapi import Documented, bearer, errors, inline_schema
from service.errors import BadRequest
from service.providers import (
    MAX_CALLBACK_DATA,
    MAX_ID,
    MAX_REJECTIONS_LISTED,
    MAX_REPORTS,
    ROOT,
    AwareTime,
    NameText,
    NumberText,
    OutOfBounds,
    Report,
    judge_all,
    moment,
    read_json,
    unique_keys,
)
from service.schemas import (
    CursorId,
    CursorTime,
    decode_cursor,
    doc,
    encode_cursor,
    in_range,
    without_pii,
)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
CallbackData = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CALLBACK_DATA)]
DURATION = re.compile(r"^([0-9]{1,12})([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST = timedelta(days=3650)  # a grace period; anything longer is a mistake


class SentMessage(msgspec.Struct, forbid_unknown_fields=True):
    source: Annotated[NameText, doc("Configured source", "ib")]
    sent_at: Annotated[AwareTime, doc("With an offset", "2026-11-01T10:00:00Z")]
    to: Annotated[NumberText | None, doc("Recipient", "+41793026727")] = None
    message_id: Annotated[Id | None, doc("The provider's id, when known", "MSG-1")] = None
    bulk_id: Annotated[Id | None, doc("The provider's bulk id", "BULK-1")] = None
    callback_data: Annotated[CallbackData | None, doc("Matches reports without message_id",
                                                      "order-42")] = None


_items = msgspec.json.Decoder(list[msgspec.Raw])
_sent = msgspec.json.Decoder(SentMessage)


class Refused(msgspec.Struct):
    index: int
    reason: str


class Registered(msgspec.Struct):
    registered: int
    already_known: int
    rejected: list[Refused] = []  # the first 100, each judged alone; the others registered
    rejected_count: int = 0


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
    next_cursor: str | None  # pass back as `cursor` for the next page; null on the last


EXAMPLE = [{"source": "ib", "sent_at": "2026-11-01T10:00:00Z", "to": "+41793026727",
            "message_id": "MESSAGE-ID-123-xyz", "bulk_id": "BULK-ID-123-xyz"},
           {"source": "ib", "sent_at": "2026-11-01T10:00:00Z", "callback_data": "order-42"}]


@dataclasses.dataclass
class RegisterOutbound(Documented):
    """The body: the handler reads it itself, so that each registration is judged alone,
    and its signature cannot say what it takes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(required=True, content={"application/json": (
            OpenAPIMediaType(schema=inline_schema(Annotated[list[SentMessage], msgspec.Meta(
                max_length=MAX_REPORTS)]), examples={
                "registrations": Example(value=EXAMPLE)}))},
            description="Sent messages, each with `message_id` or `callback_data`")


@post("/v1/outbound", guards=[require_scope], opt={"scope": "write"}, status_code=200,
      responses=errors(400, 401, 403, 413, s400=(
          "Not a JSON array, or no usable registration (then `rejected` lists why)"),
          s413=f"Body larger than DLR_MAX_BODY_BYTES, or more than {MAX_REPORTS} items"),
      tags=["outbound"], operation_id="registerOutbound", security=bearer("write"),
      operation_class=RegisterOutbound, summary="Register sent messages (idempotent)",
      description="A JSON array of `{source, sent_at, to?, message_id?, bulk_id?, "
                  "callback_data?}`, with message_id or callback_data. Each item is judged "
                  "alone: a bad one is listed in `rejected`, the others are registered.")
async def register(request: Request[Any, Any, State], state: State) -> Registered:
    # Read here, not by the framework: invalid UTF-8 or a bad type in one item must reject
    # that item alone.
    items = read_json(_items, await request.body(), "a JSON array of registrations",
                      items=ROOT, pushed=True)
    sources = state.settings.sources

    def build(item: tuple[int, msgspec.Raw]) -> list[tuple[int, store.Registration,
                                                             Report | None]]:
        index, raw = item
        unique_keys(raw)
        sent = _sent.decode(raw)
        if sent.source not in sources:
            raise OutOfBounds("source", f"unknown source {sent.source!r}")
        for name in ("message_id", "callback_data", "bulk_id", "to"):
            if "\x00" in (getattr(sent, name) or ""):  # PostgreSQL text cannot hold NUL
                raise OutOfBounds(name, "contains a NUL character")
        sent_at = moment("sent_at", sent.sent_at)
        assert sent_at is not None
        to, message_id = sources[sent.source].identify(sent.to, sent_at, sent.message_id)
        if message_id is None and sent.callback_data is None:
            raise OutOfBounds("message_id", "give message_id or callback_data")
        row = store.Registration(sent.source, sent_at, message_id, sent.callback_data,
                                 sent.bulk_id, to)
        # A registration with a message id is also a (pending) observation of that
        # message, so the message is visible, with what we sent, before the first report;
        # ranked below every provider report, so it only fills in what they do not say.
        observed = None if row.message_id is None else rules.registration(
            source=row.source, message_id=row.message_id, to=row.to, bulk_id=row.bulk_id,
            callback_data=row.callback_data, sent_at=row.sent_at)
        return [(index, row, observed)]

    judged, rejections = judge_all(list(enumerate(items)), build, "$[{}]",
                                   what="registrations")  # TooMany (413) past MAX_REPORTS
    refused = [Refused(r.index, r.reason) for r in rejections]
    if not judged and refused:
        raise BadRequest("no usable registration in the body", extra={
            "rejected": refused[:MAX_REJECTIONS_LISTED], "rejected_count": len(refused)})
    async with db.transaction(state.engine) as conn:
        outcomes = await store.register_outbound(conn, [row for _, row, _ in judged])
        await store.write(conn, [], [(observed, "outbound") for _, _, observed in judged
                                     if observed is not None])
    for (index, _, _), outcome in zip(judged, outcomes, strict=True):
        if outcome.held_by is not None:
            refused.append(Refused(index, _held_reason(index, outcome.held_by)))
    new = sum(outcome.new for outcome in outcomes)
    refused.sort(key=lambda r: r.index)
    return Registered(new, len(judged) - new - (len(refused) - len(rejections)),
                      refused[:MAX_REJECTIONS_LISTED], len(refused))


def _held_reason(index: int, holder: store.Registration) -> str:
    sent_at = holder.sent_at.isoformat().replace("+00:00", "Z")
    return (f"$[{index}].callback_data: already registered for another message of this source "
            f"(sent_at {sent_at}); give message_id to tell them apart")


def parse_duration(text: str) -> timedelta:
    match = DURATION.match(text.strip())
    if match is None:
        raise BadRequest("older_than: use seconds or a number with s, m, h or d (e.g. 48h)")
    seconds = int(match[1]) * UNITS[match[2]]
    if seconds > LONGEST.total_seconds():
        raise BadRequest(f"older_than: at most {LONGEST.days}d")
    return timedelta(seconds=seconds)


@get("/v1/gaps", guards=[require_scope], opt={"scope": "read"},
     responses=errors(400, 401, 403), tags=["outbound"], operation_id="listGaps",
     security=bearer("read"), operation_class=Documented,
     summary="Registered messages with no final status after a grace period (default 48h), "
             "oldest first, keyset-paginated",
     description="A token without the `pii` scope (or `admin`) sees `to` masked, also where "
                 "`message_id` holds it.")
async def list_gaps(state: State, request: Request[Any, Any, State],
                    source: FromQuery[str | None] = None,
                    older_than: FromQuery[str] = "48h",
                    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
                    cursor: FromQuery[str | None] = None) -> GapList:
    before = datetime.now(UTC) - parse_duration(older_than)
    after = None
    if cursor:
        sent_at, registration_id, matched_id = decode_cursor(
            cursor, tuple[CursorTime, CursorId, str])
        after = (in_range(sent_at), registration_id, matched_id)
    async with db.transaction(state.engine) as conn:
        rows = await store.gaps(conn, source=source, sent_before=before, limit=limit + 1,
                                after=after)
    items = [Gap(row.source, row.message_id, row.callback_data, row.bulk_id, row.to,
                 row.sent_at, row.status) for row in rows[:limit]]
    if not sees_pii(request):
        items = [without_pii(item) for item in items]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor((last.sent_at, last.registration_id, last.matched_id))
    return GapList(items, next_cursor)
