"""GET /v1/inbox and GET /v1/inbox/{id}: the kept bodies, to see why one was rejected (admin)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from service import db, store
from service.api.auth import require_scope
from service.api.openapi import Documented, bearer, errors
from service.errors import BadRequest, NotFound
from service.providers import Rejection
from service.schemas import TIME, query_time

MAX_INBOX_ID = 2**63 - 1  # inbox.id is a bigint
_rejections = msgspec.json.Decoder(list[Rejection])


class KeptBody(msgspec.Struct):
    id: int
    source: str
    channel: str  # push | pull
    received_at: datetime
    content_type: str | None
    url: str | None  # what a pulled body was fetched from
    state: str
    accepted: int
    rejected: int
    # The first 100 rejected reports of a partial or rejected body, else a sentence (or null).
    reason: list[Rejection] | str | None
    size: int  # bytes; GET /v1/inbox/{id} returns the body itself


class InboxPage(msgspec.Struct):
    items: list[KeptBody]
    next_cursor: str | None


def _reason(text: str | None) -> list[Rejection] | str | None:
    if text is None or not text.startswith("["):
        return text
    try:
        return _rejections.decode(text)
    except msgspec.DecodeError:
        return text


def _states(given: list[str] | None) -> frozenset[str]:
    if not given:
        return frozenset(store.INBOX_STATES) - {"accepted"}
    states = frozenset(s.strip() for value in given for s in value.split(",") if s.strip())
    if unknown := states - set(store.INBOX_STATES):
        raise BadRequest(f"state: {', '.join(sorted(unknown))} is not one of "
                         f"{', '.join(store.INBOX_STATES)}")
    return states


def _decode_cursor(cursor: str) -> int:
    try:
        inbox_id = int(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError):
        raise BadRequest("cursor is not one this API returned") from None
    if not 0 < inbox_id <= MAX_INBOX_ID:
        raise BadRequest("cursor is not one this API returned")
    return inbox_id


@get("/v1/inbox", guards=[require_scope], opt={"scope": "admin"},
     responses=errors(400, 401, 403), tags=["operations"], operation_id="listInbox",
     security=bearer("admin"), operation_class=Documented,
     summary="Kept bodies, newest first (not accepted ones by default)")
async def list_inbox(
    state: State,
    states: Annotated[list[str] | None, QueryParameter(name="state")] = None,
    source: FromQuery[str | None] = None,
    since: Annotated[str | None, QueryParameter(description=TIME)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    cursor: FromQuery[str | None] = None,
) -> InboxPage:
    where = store.InboxFilter(_states(states), source,
                              query_time("since", since) if since is not None else None)
    before = _decode_cursor(cursor) if cursor else None
    async with db.transaction(state.engine) as conn:
        rows = await store.list_inbox(conn, where, limit + 1, before)
    items = [KeptBody(**(row._asdict() | {"reason": _reason(row.reason)})) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = base64.urlsafe_b64encode(str(items[-1].id).encode()).decode()
    return InboxPage(items, next_cursor)


@get("/v1/inbox/{inbox_id:int}", guards=[require_scope], opt={"scope": "admin"},
     responses=errors(400, 401, 403, 404, s404="No kept body with that id"),
     tags=["operations"], operation_id="getInbox", security=bearer("admin"),
     operation_class=Documented, summary="One kept body, byte for byte",
     media_type="application/octet-stream")
async def get_kept_body(state: State, inbox_id: FromPath[int]) -> Response[bytes]:
    row = None
    if 0 < inbox_id <= MAX_INBOX_ID:
        async with db.transaction(state.engine) as conn:
            row = await store.kept_body(conn, inbox_id)
    if row is None:
        raise NotFound(f"no kept body {inbox_id}")
    # A pulled page's content type came from the provider: only a plain one is repeated.
    kind = row.content_type if (row.content_type or "").isascii() else None
    # Unmasked: this is the evidence. Served as data, never as a page a browser would run:
    # saved as a file (whatever type the sender named), not sniffed, and sandboxed if shown.
    return Response(row.body, media_type=kind or "application/octet-stream",
                    headers={"X-Inbox-State": row.state, "X-Inbox-Source": row.source,
                             "X-Inbox-Received-At": row.received_at.isoformat(),
                             "Content-Disposition": f'attachment; filename="inbox-{inbox_id}.bin"',
                             "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": "sandbox"})
