"""GET /v1/messages and GET /v1/messages/{source}/{message_id}."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from service import db, reconcile, store
from service.api.auth import require_scope
from service.errors import BadRequest, NotFound
from service.schemas import Message, MessagePage, message_from_row

_cursor_decoder = msgspec.json.Decoder(tuple[str, str])


def encode_cursor(source: str, message_id: str) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode((source, message_id))).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        return _cursor_decoder.decode(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadRequest("cursor is not one this API returned") from None


@get("/v1/messages/{source:str}/{message_id:str}", guards=[require_scope], opt={"scope": "read"},
     tags=["messages"], summary="One message's merged state")
async def get_message(source: FromPath[str], message_id: FromPath[str], state: State) -> Message:
    async with db.transaction(state.engine) as conn:
        row = await store.get_message(conn, source, message_id)
    if row is None:
        raise NotFound(f"no message {message_id!r} from source {source!r}")
    return message_from_row(row)


@get("/v1/messages", guards=[require_scope], opt={"scope": "read"}, tags=["messages"],
     summary="Messages matching filters, in (source, message_id) order, keyset-paginated")
async def list_messages(
    state: State,
    source: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
    to: FromQuery[str | None] = None,
    bulk_id: FromQuery[str | None] = None,
    callback_data: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    cursor: FromQuery[str | None] = None,
) -> MessagePage:
    filters = {"source": source, "status": status and status.upper(),
               "to": to and reconcile.e164(to), "bulk_id": bulk_id,
               "callback_data": callback_data}
    present = {k: v for k, v in filters.items() if v is not None}
    after = decode_cursor(cursor) if cursor else None
    async with db.transaction(state.engine) as conn:
        rows = await store.list_messages(conn, present, limit + 1, after)
    items = [message_from_row(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(items[-1].source, items[-1].message_id)
    return MessagePage(items, next_cursor)
