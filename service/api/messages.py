"""GET /v1/messages and GET /v1/messages/{source}/{message_id}."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.datastructures import State
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, QueryParameter

from service import db, rules, store
from service.api.auth import PII_NOTE, require_scope, sees_pii
from service.api.openapi import Documented, bearer, errors
from service.config import Source
from service.errors import BadRequest, NotFound
from service.providers import MAX_TO
from service.providers.base import STATUS_GROUPS
from service.schemas import (
    TIME,
    MessageDetail,
    MessagePage,
    Observation,
    decode_cursor,
    encode_cursor,
    message_from_row,
    query_time,
    without_pii,
)


def _spellings(to: str, source: str | None, sources: Mapping[str, Source]) -> tuple[str, ...]:
    """Stored forms `to` may stand for: as international, and as national in each region
    of each source that reads national numbers (the named one, or all of them)."""
    regions = {s.region for s in sources.values()
               if s.region and (source is None or s.name == source)}
    forms = {rules.e164(to)} | {rules.e164(to, region) for region in regions}
    return tuple(sorted(forms | {to.strip()}))


COUNTRY_PATTERN = "^[A-Za-z]{2}$"


@get("/v1/messages/{source:str}/{message_id:path}", guards=[require_scope], opt={"scope": "read"},
     responses=errors(400, 401, 403, 404, s404="No such message (or source)"), tags=["messages"],
     operation_id="getMessage", security=bearer("read"), operation_class=Documented,
     summary="One message's merged state",
     description="The id may hold `/` (a provider's id can): the rest of the path is the id. "
                 + PII_NOTE)
async def get_message(source: FromPath[str], message_id: FromPath[str], state: State,
                      request: Request[Any, Any, State]) -> MessageDetail:
    message_id = message_id.removeprefix("/")
    async with db.transaction(state.engine) as conn:
        row = await store.get_message(conn, source, message_id)
        seen = await store.history(conn, source, message_id)
    if row is None:
        raise NotFound(f"no message {message_id!r} from source {source!r}")
    message = message_from_row(row)
    if not sees_pii(request):
        message = without_pii(message)
    return MessageDetail(**msgspec.structs.asdict(message),
                         history=[Observation(**o._asdict()) for o in seen])


@get("/v1/messages", guards=[require_scope], opt={"scope": "read"},
     responses=errors(400, 401, 403), tags=["messages"], operation_id="listMessages",
     security=bearer("read"), operation_class=Documented,
     summary="Messages matching filters, in (source, message_id) order, keyset-paginated",
     description=PII_NOTE)
async def list_messages(
    state: State,
    request: Request[Any, Any, State],
    source: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
    to: FromQuery[str | None] = None,
    bulk_id: FromQuery[str | None] = None,
    callback_data: FromQuery[str | None] = None,
    country: Annotated[str | None, QueryParameter(
        description="The recipient's country, ISO 3166 alpha-2 in any case (`NP`, `np`): "
                    "messages whose `country` it is", pattern=COUNTRY_PATTERN,
        examples=[Example(value="NP")])] = None,
    final: FromQuery[bool | None] = None,
    sent_from: Annotated[str | None, QueryParameter(description=TIME)] = None,
    sent_to: Annotated[str | None, QueryParameter(description=TIME)] = None,
    updated_since: Annotated[str | None, QueryParameter(description=TIME)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    cursor: FromQuery[str | None] = None,
) -> MessagePage:
    times = {name: query_time(name, value) for name, value in (
        ("sent_from", sent_from), ("sent_to", sent_to), ("updated_since", updated_since))
        if value is not None}
    if to is not None and len(to) > MAX_TO:  # no stored number is longer
        raise BadRequest(f"to: longer than {MAX_TO} characters")
    if status is not None and status.upper() not in STATUS_GROUPS:  # a typo would match nothing
        raise BadRequest(f"status: {status[:40]!r} is not one of {', '.join(STATUS_GROUPS)} "
                         "(in any case)")
    where = store.MessageFilter(
        source=source, status=status and status.upper(), final=final,
        to=_spellings(to, source, state.settings.sources) if to else None, bulk_id=bulk_id,
        callback_data=callback_data, country=country and country.upper(), **times)
    after = decode_cursor(cursor, tuple[str, str]) if cursor else None
    async with db.transaction(state.engine) as conn:
        rows = await store.list_messages(conn, where, limit + 1, after)
    items = [message_from_row(r) for r in rows[:limit]]
    if not sees_pii(request):
        items = [without_pii(item) for item in items]
    next_cursor = None
    if len(rows) > limit:  # the row's own id: a token without pii sees some ids masked
        next_cursor = encode_cursor((rows[limit - 1].source, rows[limit - 1].message_id))
    return MessagePage(items, next_cursor)
