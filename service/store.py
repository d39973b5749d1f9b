"""All SQL: inbox writes, the batch upsert that applies the merge rule, and reads.

Writes take whole batches as arrays (`INSERT … SELECT FROM unnest(…)`): one statement,
one plan, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from service import reconcile
from service.providers import Report
from service.tables import inbox, message_history, messages, messages_seq

REPORT_FIELDS = tuple(Report.__struct_fields__)


class InboxRow(msgspec.Struct, frozen=True):
    source: str
    channel: str
    content_type: str | None
    body: bytes
    state: str
    accepted: int
    rejected: int
    reason: str | None


def _unnest(table: sa.Table, names: Sequence[str]) -> Any:
    """`unnest(:name::type[], …) AS t(name, …)`, one array parameter per column."""
    arrays = [sa.bindparam(n, type_=pg.ARRAY(table.c[n].type)) for n in names]
    return sa.func.unnest(*arrays).table_valued(*names).render_derived()


def _columns(rows: Sequence[msgspec.Struct], names: Sequence[str]) -> dict[str, list[Any]]:
    return {n: [getattr(r, n) for r in rows] for n in names}


_INBOX_FIELDS = tuple(InboxRow.__struct_fields__)
_inbox_src = _unnest(inbox, _INBOX_FIELDS)
_INSERT_INBOX = pg.insert(inbox).from_select(
    list(_INBOX_FIELDS), sa.select(*[_inbox_src.c[n] for n in _INBOX_FIELDS]))


async def insert_inbox(conn: AsyncConnection, rows: Sequence[InboxRow]) -> None:
    await conn.execute(_INSERT_INBOX, _columns(rows, _INBOX_FIELDS))


def _build_upsert() -> Any:
    src = _unnest(messages, REPORT_FIELDS)
    stmt = pg.insert(messages).from_select(
        [*REPORT_FIELDS, "seq"], sa.select(*[src.c[n] for n in REPORT_FIELDS], messages_seq.next_value()))
    new, old = stmt.excluded, messages.c

    def order_key(row: Any) -> Any:  # reconcile.order_key, in SQL
        return sa.tuple_(row.final,
                         sa.func.coalesce(row.done_at, sa.literal_column("'-infinity'::timestamptz")),
                         sa.func.coalesce(row.status_id, -1),
                         row.obs_hash)

    wins = order_key(new) > order_key(old)
    price_wins = sa.and_(
        new.price_amount.is_not(None),
        sa.or_(old.price_amount.is_(None),
               sa.tuple_(new.price_amount, sa.func.coalesce(new.price_currency, ""))
               > sa.tuple_(old.price_amount, sa.func.coalesce(old.price_currency, ""))))
    values: dict[str, Any] = {f: sa.case((wins, new[f]), else_=old[f])
                              for f in reconcile.STATE_FIELDS}
    values |= {f: sa.func.greatest(old[f], new[f]) for f in reconcile.DESCRIPTIVE_FIELDS}
    values |= {f: sa.case((price_wins, new[f]), else_=old[f]) for f in reconcile.PRICE_FIELDS}
    values |= {"seq": messages_seq.next_value(), "updated_at": sa.func.now()}
    # The guard: a row is touched (and takes a new seq) only when the merge changes it.
    changes = sa.or_(wins, price_wins, *[old[f].is_distinct_from(sa.func.greatest(old[f], new[f]))
                                         for f in reconcile.DESCRIPTIVE_FIELDS])
    return stmt.on_conflict_do_update(
        index_elements=[old.source, old.message_id], set_=values, where=changes,
    ).returning(old.seq)


_UPSERT = _build_upsert()

_HISTORY_FIELDS = ("source", "message_id", "obs_hash", "status", "status_id", "status_name",
                   "done_at")
_history_src = _unnest(message_history, _HISTORY_FIELDS)
_INSERT_HISTORY = pg.insert(message_history).from_select(
    [*_HISTORY_FIELDS, "channel"],
    sa.select(*[_history_src.c[n] for n in _HISTORY_FIELDS], sa.bindparam("channel")),
).on_conflict_do_nothing()


async def merge_reports(conn: AsyncConnection, reports: Sequence[Report], channel: str) -> int:
    """Merge observations into `messages` and record them in the history; return rows changed."""
    if not reports:
        return 0
    merged = reconcile.merge_all(reports)
    result = await conn.execute(_UPSERT, _columns(merged, REPORT_FIELDS))
    changed = len(result.all())
    distinct = sorted({(r.source, r.message_id, r.obs_hash): r for r in reports}.items())
    params: dict[str, Any] = _columns([r for _, r in distinct], _HISTORY_FIELDS)
    await conn.execute(_INSERT_HISTORY, params | {"channel": channel})
    return changed


async def get_message(conn: AsyncConnection, source: str, message_id: str) -> sa.Row[Any] | None:
    query = sa.select(messages).where(messages.c.source == source,
                                      messages.c.message_id == message_id)
    return (await conn.execute(query)).first()


LIST_FILTERS = ("source", "status", "to", "bulk_id", "callback_data")


async def list_messages(conn: AsyncConnection, filters: dict[str, str], limit: int,
                        after: tuple[str, str] | None) -> Sequence[sa.Row[Any]]:
    """A page in (source, message_id) order, starting after a keyset cursor."""
    query = sa.select(messages).order_by(messages.c.source, messages.c.message_id).limit(limit)
    for name, value in filters.items():
        query = query.where(messages.c[name] == value)
    if after is not None:
        query = query.where(sa.tuple_(messages.c.source, messages.c.message_id) > after)
    return (await conn.execute(query)).all()
