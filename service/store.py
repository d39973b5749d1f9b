"""All SQL: the one write (inbox + history + merge) and the reads.

Writes take whole batches as arrays (`INSERT … SELECT FROM unnest(…)`): one statement,
one plan, whatever the batch size.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from service import rules
from service.providers import MAX_PARTS, Report
from service.retention import month_start
from service.tables import (
    BILLING_BUCKET,
    CText,
    billing_rollup,
    inbox,
    inbox_sightings,
    leases,
    message_history,
    messages,
    messages_seq,
    outbound,
    pull_bodies,
    pull_cursors,
    push_replays,
    runs,
)

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
    url: str | None = None


def _unnest(table: sa.Table, names: Sequence[str], prefix: str) -> Any:
    """`unnest(:prefix_name::type[], …) AS t(name, …)`, one array parameter per column."""
    arrays = [sa.bindparam(f"{prefix}_{n}", type_=pg.ARRAY(table.c[n].type)) for n in names]
    return sa.func.unnest(*arrays).table_valued(*names).render_derived()


def _columns(rows: Sequence[Any], names: Sequence[str], prefix: str) -> dict[str, list[Any]]:
    return {f"{prefix}_{n}": [getattr(r, n) for r in rows] for n in names}


def _insert_from(table: sa.Table, names: Sequence[str], prefix: str) -> Any:
    src = _unnest(table, names, prefix)
    return pg.insert(table).from_select(list(names), sa.select(*[src.c[n] for n in names]))


def _upsert_messages() -> Any:
    """Merge observations into `messages`: the SQL twin of `rules.merge`."""
    src = _unnest(messages, REPORT_FIELDS, "m")
    # Joined into the source rows, so the transaction has its id before its first nextval():
    # the change feed relies on it (service/api/changes.py). MATERIALIZED because
    # pg_current_xact_id() is only STABLE: inlined, a column nobody reads is never computed.
    guard = (sa.select(sa.func.pg_current_xact_id().label("xid")).cte("feed_guard")
             .prefix_with("MATERIALIZED"))
    # One seq per observation, read twice (seq, and final_seq when it is final): a subquery
    # with a volatile column is evaluated once per row, never inlined into its reader.
    numbered = (sa.select(*[src.c[n] for n in REPORT_FIELDS],
                          messages_seq.next_value().label("seq"))
                .select_from(src.join(guard, sa.true())).subquery("numbered"))
    stmt = pg.insert(messages).from_select(
        [*REPORT_FIELDS, "seq", "final_seq"],
        sa.select(*[numbered.c[n] for n in REPORT_FIELDS], numbered.c.seq,
                  sa.case((numbered.c.final, numbered.c.seq), else_=sa.null())))
    new, old = stmt.excluded, messages.c

    def order_key(row: Any) -> Any:  # rules.order_key
        never: Any = sa.literal_column("'-infinity'::timestamptz")
        return sa.tuple_(row.final, row.status != rules.PENDING,
                         sa.func.coalesce(row.done_at, never),
                         sa.func.coalesce(row.status_id, -1), row.obs_hash)

    wins = order_key(new) > order_key(old)

    def price_key(row: Any) -> Any:  # rules.price_key
        return sa.tuple_(row.price_estimate == 0, row.price_estimate, row.price_amount,
                         sa.func.coalesce(row.price_currency, ""),
                         sa.func.coalesce(row.price_rate, ""))

    price_wins = sa.and_(new.price_amount.is_not(None),
                         sa.or_(old.price_amount.is_(None), price_key(new) > price_key(old)))
    # Per field a registration can supply, and parts counted from the text: the greatest by
    # (not null, from a provider, value).
    ranked_wins = {}
    for f, bit in rules.UNREPORTED.items():
        old_bit, new_bit = old.registered.op("&")(bit), new.registered.op("&")(bit)
        ranked_wins[f] = sa.and_(new[f].is_not(None), sa.or_(
            old[f].is_(None),
            sa.tuple_(new_bit == 0, new[f]) > sa.tuple_(old_bit == 0, old[f])))
    values: dict[str, Any] = {f: sa.case((wins, new[f]), else_=old[f])
                              for f in rules.STATE_FIELDS}
    values |= {f: sa.func.greatest(old[f], new[f]) for f in rules.FILLED_FIELDS}
    # rules.union_parts
    parts = sa.case((old.part_ids.is_(None), new.part_ids), (new.part_ids.is_(None), old.part_ids),
                    else_=sa.func.array_to_string(sa.func.array(
                        sa.select(sa.literal_column('p COLLATE "C"').label("q")).select_from(
                            sa.func.unnest(sa.func.string_to_array(
                                old.part_ids.op("||")(" ").op("||")(new.part_ids), " "))
                            .table_valued("p").render_derived())
                        .distinct().order_by(sa.literal_column("q"))
                        .limit(MAX_PARTS).scalar_subquery()), " "))
    values["part_ids"] = parts
    values |= {f: sa.case((ranked_wins[f], new[f]), else_=old[f]) for f in rules.UNREPORTED}
    # rules.DERIVED: each with the value it was derived from (so unchanged unless that is)
    values |= {f: sa.case((ranked_wins[source], new[f]), else_=old[f])
               for f, source in rules.DERIVED.items()}
    bits: dict[str, Any] = {
        f: sa.case((ranked_wins[f], new.registered.op("&")(bit)), else_=old.registered.op("&")(bit))
        for f, bit in rules.UNREPORTED.items()}
    # rules.merge: the parts seen count as a reported part count, ranked with the others
    seen = sa.func.cardinality(sa.func.string_to_array(parts, " "))
    ranked = values["sms_count"]
    parts_win = sa.and_(seen.is_not(None), sa.or_(
        ranked.is_(None), bits["sms_count"] != 0, seen > ranked))
    values["sms_count"] = sa.case((parts_win, seen), else_=ranked)
    bits["sms_count"] = sa.case((parts_win, 0), else_=bits["sms_count"])
    values["registered"] = functools.reduce(lambda a, b: a.op("|")(b), bits.values())
    values |= {f: sa.case((price_wins, new[f]), else_=old[f]) for f in rules.PRICE_FIELDS}
    # The observation's own seq (taken above), so that final_seq can name this change:
    # set from the locked row, it is this seq exactly when this write makes the row final.
    values |= {"seq": new.seq, "updated_at": sa.func.now(),
               "final_seq": sa.case((old.final, old.final_seq), (wins, new.final_seq),
                                    else_=sa.null())}
    # The guard: a row is touched (and takes a new seq) only when the merge changes it.
    changes = sa.or_(wins, price_wins, *ranked_wins.values(),
                     old.part_ids.is_distinct_from(parts),
                     old.sms_count.is_distinct_from(values["sms_count"]),
                     *[old[f].is_distinct_from(sa.func.greatest(old[f], new[f]))
                       for f in rules.FILLED_FIELDS])
    # One row per message changed; the columns the outcome metrics need where this write
    # made it final, nulls otherwise.
    made_final = old.final_seq == old.seq
    return stmt.on_conflict_do_update(
        index_elements=[old.source, old.message_id], set_=values, where=changes,
    ).returning(*[sa.case((made_final, old[name]), else_=sa.null()).label(name)
                  for name in ("source", "message_id", "status", "sent_at", "done_at")])


_INBOX_FIELDS = tuple(InboxRow.__struct_fields__)
_HISTORY_FIELDS = ("source", "message_id", "obs_hash", "channel", "sent_month", "status",
                   "status_id", "status_name", "done_at")


# One statement, so one round trip and atomic without BEGIN/COMMIT: the raw bodies, the
# history of observations and the merge commit together or not at all.
_WRITE = (_upsert_messages()
          .add_cte(_insert_from(inbox, _INBOX_FIELDS, "i").cte("new_inbox"))
          .add_cte(_insert_from(message_history, _HISTORY_FIELDS, "h")
                   .on_conflict_do_nothing().cte("new_history")))


class _Observed(msgspec.Struct, frozen=True):
    """A history row: one observation and the channel it came through."""

    source: str
    message_id: str
    obs_hash: bytes
    channel: str
    sent_month: datetime
    status: str
    status_id: int | None
    status_name: str | None
    done_at: Any


class Finished(msgspec.Struct, frozen=True):
    """A message that a write made final: it was not final before, whoever wrote it."""

    source: str
    message_id: str
    status: str
    sent_at: datetime | None
    done_at: datetime | None


class Written(msgspec.Struct, frozen=True):
    """What one write did: merged rows changed, and the messages among them it made final
    (to be counted once their transaction has committed)."""

    changed: int = 0
    finished: tuple[Finished, ...] = ()

    def __add__(self, other: Written) -> Written:
        return Written(self.changed + other.changed, self.finished + other.finished)


async def write(conn: AsyncConnection, bodies: Sequence[InboxRow],
                observed: Sequence[tuple[Report, str]]) -> Written:
    """Keep the raw bodies, record each observation, merge them; return what changed."""
    merged = rules.merge_all(report for report, _ in observed)
    now = datetime.now(UTC)
    history = sorted({(r.source, r.message_id, r.obs_hash, channel): _Observed(
        r.source, r.message_id, r.obs_hash, channel, month_start(r.sent_at or r.done_at or now),
        r.status, r.status_id, r.status_name, r.done_at) for r, channel in observed}.items())
    params = (_columns(bodies, _INBOX_FIELDS, "i")
              | _columns([h for _, h in history], _HISTORY_FIELDS, "h")
              | _columns(merged, REPORT_FIELDS, "m"))
    rows = (await conn.execute(_WRITE, params)).all()
    return Written(len(rows), tuple(Finished(*row) for row in rows if row.source is not None))


def matched_by(m: Any) -> Any:
    """How the message of `m` (columns of a `messages` row) was matched to a registration:
    'message_id' (one of its source with that id), 'callback_data' (one of its source without
    an id, with its callback data), or null. Two probes of the outbound table's unique keys."""
    o = outbound.alias("registered")
    by_id = sa.exists().where(o.c.source == m.source, o.c.message_id.is_not(None),
                              o.c.message_id == m.message_id)
    by_callback = sa.exists().where(
        o.c.source == m.source, o.c.message_id.is_(None),
        o.c.callback_hash == sa.func.sha256(sa.func.convert_to(m.callback_data, "UTF8")),
        o.c.callback_data == m.callback_data)
    return sa.case((by_id, "message_id"), (by_callback, "callback_data"),
                   else_=sa.null()).label("matched_by")


def _with_matched_by(query: Any, *order: str) -> Any:
    """A page of `messages` rows with their `matched_by`, probed for the page's rows only."""
    page = query.subquery("page")
    return sa.select(page, matched_by(page.c)).order_by(*[page.c[name] for name in order])


async def get_message(conn: AsyncConnection, source: str, message_id: str) -> sa.Row[Any] | None:
    query = sa.select(messages, matched_by(messages.c)).where(
        messages.c.source == source, messages.c.message_id == message_id)
    return (await conn.execute(query)).first()


async def history(conn: AsyncConnection, source: str, message_id: str) -> Sequence[Any]:
    """Every distinct observation of a message, per channel, in the order they happened."""
    h = message_history.c
    query = (sa.select(h.status, h.status_id, h.status_name, h.done_at, h.channel, h.observed_at)
             .where(h.source == source, h.message_id == message_id)
             .order_by(h.done_at.asc().nulls_first(), h.observed_at, h.channel))
    return (await conn.execute(query)).all()


def same_callback_data(column: Any, value: Any) -> Any:
    """`column = value`, by way of the index on md5(callback_data) (4000 characters do not
    fit a btree entry, and a hash index degrades when many messages share one value)."""
    return sa.and_(sa.func.md5(column) == sa.func.md5(value), column == value)


class MessageFilter(msgspec.Struct, frozen=True):
    source: str | None = None
    status: str | None = None
    final: bool | None = None
    to: tuple[str, ...] | None = None  # any of these spellings
    bulk_id: str | None = None
    callback_data: str | None = None
    country: str | None = None  # ISO 3166 alpha-2, upper case
    sent_from: datetime | None = None
    sent_to: datetime | None = None
    updated_since: datetime | None = None


async def list_messages(conn: AsyncConnection, where: MessageFilter, limit: int,
                        after: tuple[str, str] | None) -> Sequence[sa.Row[Any]]:
    """A page in (source, message_id) order, starting after a keyset cursor."""
    m = messages.c
    query = sa.select(messages).order_by(m.source, m.message_id).limit(limit)
    for name in ("source", "status", "final", "bulk_id", "country"):
        if (value := getattr(where, name)) is not None:
            query = query.where(m[name] == value)
    if where.callback_data is not None:
        query = query.where(same_callback_data(m.callback_data, where.callback_data))
    if where.to is not None:
        query = query.where(m.to.in_(where.to))
    if where.sent_from is not None:
        query = query.where(m.sent_at >= where.sent_from)
    if where.sent_to is not None:
        query = query.where(m.sent_at < where.sent_to)
    if where.updated_since is not None:
        query = query.where(m.updated_at >= where.updated_since)
    if after is not None:
        query = query.where(sa.tuple_(messages.c.source, messages.c.message_id) > after)
    return (await conn.execute(_with_matched_by(query, "source", "message_id"))).all()


# --- pulled pages: kept first, decoded and merged afterwards ------------------------------

async def keep_raw(conn: AsyncConnection, row: InboxRow) -> int:
    """Store one raw body before anything else happens to it; return its inbox id."""
    values = msgspec.structs.asdict(row)
    return int(await conn.scalar(sa.insert(inbox).values(values).returning(inbox.c.id)))


async def mark_inbox(conn: AsyncConnection, inbox_id: int, row: InboxRow) -> None:
    """Record what decoding a kept body found."""
    await conn.execute(sa.update(inbox).where(inbox.c.id == inbox_id).values(
        state=row.state, accepted=row.accepted, rejected=row.rejected, reason=row.reason))


# --- leases: one puller per source across all replicas ------------------------------------

async def intermediate_due(conn: AsyncConnection, source: str, closing: Mapping[str, float],
                           now: datetime, limit: int = 1000) -> Sequence[Any]:
    """Messages of `source` left at an intermediate status past PENDING that `closing` names
    (lower-cased raw status: seconds) for longer than its window, counted from when they
    were sent (else reported); at most `limit`."""
    m = messages.c
    since = sa.func.coalesce(m.sent_at, m.done_at, m.updated_at)
    due = [sa.and_(sa.func.lower(m.status_name) == raw, since < now - timedelta(seconds=after))
           for raw, after in closing.items()]
    query = (sa.select(*[m[f] for f in (
        "message_id", "status", "status_id", "status_name", "done_at", "error_group_id",
        "error_group_name", "error_id", "error_name", "error_permanent", "status_action",
        "error_description", "sent_at")])
        .where(m.source == source, ~m.final, m.status != rules.PENDING, sa.or_(*due))
        .order_by(m.message_id).limit(limit))
    return (await conn.execute(query)).all()


async def claim_replays(conn: AsyncConnection, keys: Sequence[tuple[str, bytes, datetime]],
                        ) -> set[tuple[str, bytes]]:
    """Record these replay keys (source, key, until), in the transaction that keeps their
    bodies; return those not held already (a key past its window is taken again). A key a
    concurrent transaction has just recorded waits for it: once that commits, it is held.
    One row a key, in one order, so that two claims cannot deadlock."""
    rows = sorted({(source, key): until for source, key, until in keys}.items())
    insert = pg.insert(push_replays).values(
        [{"source": source, "key": key, "expires_at": until} for (source, key), until in rows])
    claimed = await conn.execute(insert.on_conflict_do_update(
        index_elements=[push_replays.c.source, push_replays.c.key],
        set_={"expires_at": insert.excluded.expires_at},
        where=push_replays.c.expires_at <= sa.func.now(),
    ).returning(push_replays.c.source, push_replays.c.key))
    return {(row.source, row.key) for row in claimed}



async def forget_replays(conn: AsyncConnection) -> int:
    """Delete the replay keys whose window has ended; return how many."""
    deleted = await conn.execute(sa.delete(push_replays).where(
        push_replays.c.expires_at <= sa.func.now()))
    return int(deleted.rowcount)


async def acquire_lease(conn: AsyncConnection, source: str, holder: str, ttl_s: float) -> bool:
    """Take or extend the lease on `source` for `holder`; False while another holds it."""
    until = sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, ttl_s)
    stmt = pg.insert(leases).values(source=source, holder=holder, expires_at=until)
    upsert = stmt.on_conflict_do_update(
        index_elements=[leases.c.source],
        set_={"holder": holder, "expires_at": until},
        where=sa.or_(leases.c.holder == holder, leases.c.expires_at < sa.func.now()),
    ).returning(leases.c.holder)
    return (await conn.execute(upsert)).first() is not None


async def release_lease(conn: AsyncConnection, source: str, holder: str) -> None:
    await conn.execute(sa.delete(leases).where(leases.c.source == source,
                                               leases.c.holder == holder))


# --- runs -----------------------------------------------------------------------------------

async def start_run(conn: AsyncConnection, source: str) -> int:
    stmt = sa.insert(runs).values(source=source, started_at=sa.func.now()).returning(runs.c.id)
    return int(await conn.scalar(stmt))


async def finish_run(conn: AsyncConnection, run_id: int, **counts: Any) -> None:
    """Record how a pass ended: its counts (pages, reports, changed, rejected,
    bytes_fetched, bytes_kept, resighted, records_fetched), error and detail."""
    await conn.execute(sa.update(runs).where(runs.c.id == run_id).values(
        finished_at=sa.func.now(), **counts))


async def list_runs(conn: AsyncConnection, source: str | None, limit: int,
                    before_id: int | None = None) -> Sequence[sa.Row[Any]]:
    """Reconciler passes, newest (highest id) first, before a keyset id."""
    query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
    if source is not None:
        query = query.where(runs.c.source == source)
    if before_id is not None:
        query = query.where(runs.c.id < before_id)
    return (await conn.execute(query)).all()


async def inbox_page(conn: AsyncConnection, after_id: int, limit: int, *, only_unaccepted: bool,
                     since: datetime | None, until: datetime | None,
                     source: str | None = None) -> Sequence[Any]:
    """Kept bodies in id order after `after_id`, for replay."""
    query = (sa.select(inbox.c.id, inbox.c.source, inbox.c.channel, inbox.c.content_type,
                       inbox.c.body, inbox.c.url)
             .where(inbox.c.id > after_id).order_by(inbox.c.id).limit(limit))
    if only_unaccepted:
        query = query.where(inbox.c.state != "accepted")
    if since is not None:
        query = query.where(inbox.c.received_at >= since)
    if until is not None:
        query = query.where(inbox.c.received_at < until)
    if source is not None:
        query = query.where(inbox.c.source == source)
    return (await conn.execute(query)).all()


INBOX_STATES = ("accepted", "partial", "rejected", "failed", "received")


class InboxFilter(msgspec.Struct, frozen=True):
    states: frozenset[str]
    source: str | None = None
    since: datetime | None = None


async def list_inbox(conn: AsyncConnection, where: InboxFilter, limit: int,
                     before_id: int | None) -> Sequence[Any]:
    """Kept bodies' metadata and size (never the body), newest first, before a keyset id."""
    i = inbox.c
    query = (sa.select(i.id, i.source, i.channel, i.received_at, i.content_type, i.url, i.state,
                       i.accepted, i.rejected, i.reason,
                       sa.func.octet_length(i.body).label("size"))
             .where(i.state.in_(sorted(where.states))).order_by(i.id.desc()).limit(limit))
    if "accepted" not in where.states:
        # A literal, as in ix_inbox_rejected's predicate: a generic plan can still use it.
        query = query.where(i.state != sa.literal_column("'accepted'"))
    if where.source is not None:
        query = query.where(i.source == where.source)
    if where.since is not None:  # on the partition key: older months are not scanned
        query = query.where(i.received_at >= where.since)
    if before_id is not None:
        query = query.where(i.id < before_id)
    return (await conn.execute(query)).all()


async def kept_body(conn: AsyncConnection, inbox_id: int) -> Any:
    """One kept body as it arrived, with what is known about it."""
    i = inbox.c
    query = sa.select(i.body, i.content_type, i.state, i.source, i.received_at).where(
        i.id == inbox_id)
    return (await conn.execute(query)).first()


class KeptBody(msgspec.Struct, frozen=True):
    """The body last kept for one URL of a source."""

    body_hash: bytes
    inbox_id: int
    etag: str | None
    last_modified: str | None


def sha256(text: str | bytes) -> bytes:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).digest()


async def last_kept(conn: AsyncConnection, source: str, url: str) -> KeptBody | None:
    b = pull_bodies.c
    row = (await conn.execute(sa.select(b.body_hash, b.inbox_id, b.etag, b.last_modified).where(
        b.source == source, b.url_hash == sha256(url)))).first()
    return KeptBody(*row) if row is not None else None


async def remember_kept(conn: AsyncConnection, source: str, url: str, body: KeptBody) -> None:
    """`body` is now the one last kept for `url`."""
    values = msgspec.structs.asdict(body)
    stmt = pg.insert(pull_bodies).values(source=source, url_hash=sha256(url),
                                         kept_at=sa.func.now(), **values)
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=[pull_bodies.c.source, pull_bodies.c.url_hash],
        set_=values | {"kept_at": sa.func.now()}))


async def forget_kept(conn: AsyncConnection, source: str, url: str) -> None:
    await conn.execute(sa.delete(pull_bodies).where(pull_bodies.c.source == source,
                                                    pull_bodies.c.url_hash == sha256(url)))


async def seen_again(conn: AsyncConnection, source: str, inbox_id: int, run_id: int | None,
                     not_modified: bool) -> None:
    await conn.execute(sa.insert(inbox_sightings).values(
        inbox_id=inbox_id, source=source, run_id=run_id, not_modified=not_modified))


async def open_bulks(conn: AsyncConnection, source: str, limit: int) -> list[str]:
    """Bulk ids of `source` with a message not final yet, oldest sent first."""
    m = messages.c
    query = (sa.select(m.bulk_id).where(m.source == source, m.bulk_id.is_not(None),
                                        m.final.is_(False))
             .group_by(m.bulk_id).order_by(sa.func.min(m.sent_at)).limit(limit))
    return [row[0] for row in await conn.execute(query)]


async def get_cursor(conn: AsyncConnection, source: str, name: str) -> str | None:
    query = sa.select(pull_cursors.c.value).where(pull_cursors.c.source == source,
                                                  pull_cursors.c.name == name)
    value = await conn.scalar(query)
    return str(value) if value is not None else None


async def set_cursor(conn: AsyncConnection, source: str, name: str, value: str | None) -> None:
    stmt = pg.insert(pull_cursors).values(source=source, name=name, value=value)
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=[pull_cursors.c.source, pull_cursors.c.name],
        set_={"value": value, "updated_at": sa.func.now()}))


async def bulk_progress(conn: AsyncConnection, source: str,
                        bulk_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per bulk id: (messages stored, of which final)."""
    query = (sa.select(messages.c.bulk_id, sa.func.count(),
                       sa.func.count().filter(messages.c.final))
             .where(messages.c.source == source, messages.c.bulk_id.in_(bulk_ids))
             .group_by(messages.c.bulk_id))
    return {row[0]: (row[1], row[2]) for row in await conn.execute(query)}


class Registration(msgspec.Struct, frozen=True):
    source: str
    sent_at: datetime
    message_id: str | None = None
    callback_data: str | None = None
    bulk_id: str | None = None
    to: str | None = None

    @property
    def callback_hash(self) -> bytes | None:
        """The unique key of a registration by callback data."""
        if self.callback_data is None:
            return None
        return hashlib.sha256(self.callback_data.encode()).digest()


_REGISTRATION_FIELDS = (*Registration.__struct_fields__, "callback_hash")


class Outcome(msgspec.Struct, frozen=True):
    """What became of one registration: new, already known, or refused because another
    registration of its source without message id holds its callback data (`held_by`)."""

    new: bool
    held_by: Registration | None = None


def _registration_key(row: Registration) -> tuple[str, str | bytes]:
    if row.message_id is not None:
        return row.source, row.message_id
    return row.source, row.callback_hash or b""


async def register_outbound(conn: AsyncConnection, rows: Sequence[Registration]) -> list[Outcome]:
    """Record sent messages idempotently; one Outcome per row, in order.

    A row keyed by message id that is stored already is known. One keyed by callback data is
    known only when the stored registration is the same (sent_at, to, bulk_id): a different
    one is another message, refused rather than lost. Which row of a request, or of
    concurrent requests, holds a key is settled by the unique index; the others are then
    judged against the row it holds.
    """
    first: dict[tuple[bool, tuple[str, str | bytes]], int] = {}
    for index, row in enumerate(rows):
        first.setdefault((row.message_id is None, _registration_key(row)), index)
    inserted: set[tuple[bool, tuple[str, str | bytes]]] = set()
    for by_callback, target, where in (
            (False, "message_id", outbound.c.message_id.is_not(None)),
            (True, "callback_hash", outbound.c.message_id.is_(None))):
        # in key order: concurrent registrations take their row locks in one order
        keyed = [rows[i] for key, i in sorted(first.items()) if key[0] == by_callback]
        if not keyed:
            continue
        stmt = _insert_from(outbound, _REGISTRATION_FIELDS, "o").on_conflict_do_nothing(
            index_elements=[outbound.c.source, outbound.c[target]], index_where=where,
        ).returning(outbound.c.source, outbound.c[target])
        result = await conn.execute(stmt, _columns(keyed, _REGISTRATION_FIELDS, "o"))
        inserted |= {(by_callback, (row[0], row[1])) for row in result}
    outcomes = [Outcome(new=(key := (row.message_id is None, _registration_key(row))) in inserted
                        and first[key] == index) for index, row in enumerate(rows)]
    judged = [i for i, row in enumerate(rows) if row.message_id is None and not outcomes[i].new]
    if judged:
        # A new statement: it sees the rows that concurrent registrations committed.
        o = outbound.c
        keys = sorted({_registration_key(rows[i]) for i in judged})
        stored = await conn.execute(
            sa.select(*[o[name] for name in Registration.__struct_fields__])
            .where(o.message_id.is_(None), sa.tuple_(o.source, o.callback_hash).in_(keys)))
        held = {_registration_key(r): r for r in (
            Registration(**row._asdict()) for row in stored)}
        for i in judged:
            holder = held.get(_registration_key(rows[i]))
            if holder is not None and holder != rows[i]:
                outcomes[i] = Outcome(new=False, held_by=holder)
    return outcomes


GapKey = tuple[datetime, int, str]  # sent_at, registration id, matched message id or ''
def _gap_branches(source: str | None, sent_before: datetime, sent_after: datetime | None,
                  with_message_id: bool = False) -> list[tuple[Any, Any]]:
    """Registrations sent in the window whose message is not final, one query per way of
    matching (by message id; by callback data), each joined to the message on its own index
    (an OR of the two in one join condition leaves PostgreSQL no index to use), with the
    matched message. One row per matched message."""
    o, m = outbound.c, messages.alias("m")
    ways = [(o.message_id.is_not(None), m.c.message_id == o.message_id)]
    if not with_message_id:
        ways.append((o.message_id.is_(None), same_callback_data(m.c.callback_data,
                                                                 o.callback_data)))
    branches = []
    for registered, matched in ways:
        query = (sa.select().select_from(outbound.outerjoin(m, sa.and_(
                    registered, m.c.source == o.source, matched)))
                 .where(registered, o.sent_at < sent_before,
                        sa.func.coalesce(m.c.final, False).is_(False)))
        if source is not None:
            query = query.where(o.source == source)
        if sent_after is not None:
            query = query.where(o.sent_at >= sent_after)
        branches.append((query, m))
    return branches


async def gaps(conn: AsyncConnection, *, source: str | None, sent_before: datetime,
               sent_after: datetime | None = None, with_message_id: bool = False,
               limit: int = 100, after: GapKey | None = None) -> Sequence[Any]:
    """Registered messages without a final status, oldest first, after a keyset position
    (a row's is its sent_at, registration_id, matched_id). A registration by callback data
    may match several messages, one row each: hence the matched message's id in the key."""
    o = outbound.c
    branches = []  # each in key order, then merged
    for query, m in _gap_branches(source, sent_before, sent_after, with_message_id):
        matched_id = sa.func.coalesce(m.c.message_id, "")
        branch = query.add_columns(
            o.source, sa.func.coalesce(o.message_id, m.c.message_id).label("message_id"),
            o.callback_data, o.bulk_id, o.to, o.sent_at, m.c.status,
            o.id.label("registration_id"), matched_id.label("matched_id"))
        if after is not None:
            branch = branch.where(sa.tuple_(o.sent_at, o.id, matched_id) > sa.tuple_(*after))
        branches.append(branch.order_by(o.sent_at, o.id, matched_id).limit(limit))
    found = sa.union_all(*branches).subquery("found")
    query = (sa.select(found).order_by(found.c.sent_at, found.c.registration_id,
                                       found.c.matched_id).limit(limit))
    return (await conn.execute(query)).all()


async def count_gaps(conn: AsyncConnection, source: str, sent_before: datetime,
                     sent_after: datetime) -> int:
    """How many items `gaps` would list for `source` in the window, all pages together."""
    total = 0
    for query, _ in _gap_branches(source, sent_before, sent_after):
        total += int(await conn.scalar(query.add_columns(sa.func.count())) or 0)
    return total


async def last_success(conn: AsyncConnection, source: str) -> datetime | None:
    """When the newest pass over `source` without error finished (of the passes kept):
    read backwards along ix_runs_source_started_at to the first such pass."""
    query = (sa.select(runs.c.finished_at)
             .where(runs.c.source == source, runs.c.error.is_(None),
                    runs.c.finished_at.is_not(None))
             .order_by(runs.c.started_at.desc()).limit(1))
    value = await conn.scalar(query)
    return value if isinstance(value, datetime) else None


async def sent_per_day(conn: AsyncConnection, source: str, days: Sequence[str],
                       tz: str) -> dict[str, int]:
    """Messages of `source` sent on each local day (YYYYMMDD in time zone `tz`)."""
    day = sa.func.to_char(sa.func.timezone(tz, messages.c.sent_at), "YYYYMMDD")
    query = (sa.select(day, sa.func.count()).where(messages.c.source == source, day.in_(days))
             .group_by(day))
    return {row[0]: row[1] for row in await conn.execute(query)}


BILLING_KEYS = ("day", "source", "currency", "operator", "status", "origin", "country")
ORIGINS = ("reported", "rate_card")


def price_origin(m: Any) -> Any:
    """Where a message's price came from: 'reported', 'rate_card', or null (no price)."""
    return sa.case((m.price_amount.is_(None), sa.null()),
                   (m.price_estimate > 0, sa.literal("rate_card", CText)),
                   else_=sa.literal("reported", CText))


def _unpriced(m: Any) -> Any:
    return sa.case((m.price_amount.is_(None), 1), else_=0)


BUCKET = timedelta(minutes=15)  # tables.BILLING_BUCKET


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _whole_buckets(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The quarter hours wholly inside [since, until): [first, last), empty when none."""
    first = _EPOCH - ((_EPOCH - since) // BUCKET) * BUCKET  # rounded up
    last = _EPOCH + ((until - _EPOCH) // BUCKET) * BUCKET  # rounded down
    return (first, last) if first < last else (until, until)


def _day(tz: str, column: Any) -> Any:
    return sa.func.to_char(sa.func.timezone(tz, column), "YYYY-MM-DD")


async def billing(conn: AsyncConnection, since: datetime, until: datetime, keys: Sequence[str],
                  tz: str) -> Sequence[Any]:
    """Messages, parts and exact amount per group, for messages sent in [since, until).

    The whole quarter hours of the range come from billing_rollup, so the cost follows
    the number of quarter hours and groups, not of messages; the part of a quarter hour at
    either end, from the messages themselves (by their sent_at index).
    """
    first, last = _whole_buckets(since, until)
    m, r = messages.c, billing_rollup.c
    parts = sa.func.coalesce(m.sms_count, 1)
    edges = (sa.select(_day(tz, m.sent_at).label("day"), m.source,
                       m.price_currency.label("currency"), m.operator, m.status,
                       price_origin(m).label("origin"), m.country,
                       sa.literal(1).label("messages"), parts.label("parts"),
                       sa.func.coalesce(m.price_amount * parts, 0).label("amount"),
                       _unpriced(m).label("unpriced"))
             .where(sa.or_(sa.and_(m.sent_at >= since, m.sent_at < first),
                           sa.and_(m.sent_at >= last, m.sent_at < until))))
    rolled = (sa.select(_day(tz, r.bucket).label("day"), r.source, r.currency, r.operator,
                        r.status, r.origin, r.country, r.messages, r.parts, r.amount,
                        r.unpriced)
              .where(r.bucket >= first, r.bucket < last))
    both = sa.union_all(edges, rolled).subquery("counted")
    grouped = [both.c[k] for k in keys]
    total = sa.cast(sa.func.sum(both.c.messages), sa.BigInteger)
    query = (sa.select(*grouped, total.label("messages"),
                       sa.cast(sa.func.sum(both.c.parts), sa.BigInteger).label("parts"),
                       sa.func.sum(both.c.amount).label("amount"),
                       sa.cast(sa.func.sum(both.c.unpriced), sa.BigInteger).label("unpriced"))
             .group_by(*grouped).having(total > 0).order_by(*grouped))
    return (await conn.execute(query)).all()


async def billing_from_messages(conn: AsyncConnection, since: datetime, until: datetime,
                                keys: Sequence[str], tz: str) -> Sequence[Any]:
    """The same as `billing`, summed over `messages` alone: what the rollup must equal."""
    m = messages.c
    parts = sa.func.coalesce(m.sms_count, 1)
    columns = {"day": _day(tz, m.sent_at), "source": m.source, "currency": m.price_currency,
               "operator": m.operator, "status": m.status, "origin": price_origin(m),
               "country": m.country}
    grouped = [columns[k].label(k) for k in keys]
    query = (sa.select(*grouped, sa.func.count().label("messages"),
                       sa.func.sum(parts).label("parts"),
                       sa.func.coalesce(sa.func.sum(m.price_amount * parts), 0).label("amount"),
                       sa.func.count().filter(m.price_amount.is_(None)).label("unpriced"))
             .where(m.sent_at >= since, m.sent_at < until)
             .group_by(*grouped).order_by(*grouped))
    return (await conn.execute(query)).all()


async def rebuild_billing(conn: AsyncConnection) -> int:
    """billing_rollup made again from `messages` (writers wait meanwhile); return its rows."""
    await conn.execute(sa.text("LOCK TABLE messages IN SHARE MODE"))
    await conn.execute(sa.delete(billing_rollup))
    m = messages.c
    parts = sa.func.coalesce(m.sms_count, 1)
    bucket = sa.func.date_bin(sa.text(f"interval '{BILLING_BUCKET}'"), m.sent_at,
                              sa.text("timestamptz 'epoch'"))
    keys = [bucket, m.source, m.price_currency, m.operator, m.status, price_origin(m),
            m.country]
    select = (sa.select(*keys, sa.literal(0), sa.func.count(), sa.func.sum(parts),
                        sa.func.coalesce(sa.func.sum(m.price_amount * parts), 0),
                        sa.func.count().filter(m.price_amount.is_(None)))
              .where(m.sent_at.is_not(None)).group_by(*keys))
    insert = sa.insert(billing_rollup).from_select(
        ["bucket", "source", "currency", "operator", "status", "origin", "country", "slot",
         "messages", "parts", "amount", "unpriced"], select)
    return int((await conn.execute(insert)).rowcount)


async def bulk(conn: AsyncConnection, source: str, bulk_id: str) -> tuple[Any, Sequence[Any],
                                                                          Sequence[Any]]:
    """A bulk's totals, its counts per status, and its parts and money per currency."""
    m = messages.c
    mine = sa.and_(m.source == source, m.bulk_id == bulk_id)
    parts = sa.func.coalesce(m.sms_count, 1)
    totals = (await conn.execute(sa.select(
        sa.func.count().label("messages"), sa.func.coalesce(sa.func.sum(parts), 0).label("parts"),
        sa.func.count().filter(m.status == "DELIVERED").label("delivered"),
        sa.func.count().filter(m.final).label("final"),
        sa.func.min(m.sent_at).label("first_sent_at"), sa.func.max(m.sent_at).label("last_sent_at"),
    ).where(mine))).one()
    statuses = (await conn.execute(sa.select(m.status, sa.func.count().label("messages"))
                                   .where(mine).group_by(m.status).order_by(m.status))).all()
    money = (await conn.execute(
        sa.select(m.price_currency.label("currency"), sa.func.sum(parts).label("parts"),
                  sa.func.coalesce(sa.func.sum(m.price_amount * parts), 0).label("amount"))
        .where(mine, m.price_amount.is_not(None))
        .group_by(m.price_currency).order_by(m.price_currency))).all()
    return totals, statuses, money


async def last_seq(conn: AsyncConnection) -> int:
    """The highest seq handed out so far, whether its writer committed or not."""
    value = await conn.scalar(sa.text(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM messages_seq"))
    return int(value or 0)


async def new_xid(conn: AsyncConnection) -> int:
    """A transaction id newer than any assigned before this call (on an autocommit
    connection its transaction ends at once: it writes nothing, so nothing is flushed)."""
    return int(await conn.scalar(sa.text("SELECT pg_current_xact_id()::text::bigint")))


async def ended_up_to(conn: AsyncConnection, xid: int) -> bool:
    """Whether every transaction with an id up to `xid` has ended, as a new snapshot sees it."""
    return bool(await conn.scalar(sa.text(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint > :xid"), {"xid": xid}))


async def changes(conn: AsyncConnection, after: int, horizon: int, limit: int) -> Sequence[Any]:
    """Merged rows changed after `after`, up to the horizon, in seq order."""
    m = messages.c
    query = (sa.select(messages).where(m.seq > after, m.seq <= horizon).order_by(m.seq)
             .limit(limit))
    return (await conn.execute(_with_matched_by(query, "seq"))).all()


# --- estimates made again (reprice) ---------------------------------------------------------

# What an estimate is made from, and what it sets.
ESTIMATE_INPUTS = ("to", "mcc_mnc", "operator", "sent_at")
ESTIMATED = ("sms_count", "registered", *rules.PRICE_FIELDS)


async def estimated_page(conn: AsyncConnection, source: str, since: datetime | None,
                         after: str | None, limit: int) -> Sequence[Any]:
    """Messages of `source` sent at or after `since` whose price or parts may be estimates
    (no price reported; parts counted or countable), in message_id order (the primary
    key's) after a keyset position, with their seq; `text` only where the parts are to be
    counted."""
    m = messages.c
    counted = m.registered.op("&")(rules.COUNTED) != 0
    countable = sa.or_(m.sms_count.is_(None), counted)
    query = (sa.select(m.message_id, m.seq, *[m[n] for n in (*ESTIMATE_INPUTS, *ESTIMATED)],
                       sa.case((countable, m.text), else_=sa.null()).label("text"))
             .where(m.source == source, m.sent_at.is_not(None),
                    sa.or_(m.price_amount.is_(None), m.price_estimate > 0, counted,
                           sa.and_(m.sms_count.is_(None), m.text.is_not(None))))
             .order_by(m.message_id).limit(limit))
    if since is not None:
        query = query.where(m.sent_at >= since)
    if after is not None:
        query = query.where(m.message_id > after)
    return (await conn.execute(query)).all()


def _set_estimates() -> Any:
    columns = [("e_message_id", "message_id"), ("e_seq", "seq"),
               *[(f"e_{n}", n) for n in ESTIMATED]]
    arrays = [sa.bindparam(label, type_=pg.ARRAY(messages.c[name].type))
              for label, name in columns]
    given = sa.func.unnest(*arrays).table_valued(*[label for label, _ in columns]) \
        .render_derived()
    m = messages.c
    # Written only where the row is as read (its seq unchanged: a merge since moved it,
    # and the next reprice sees it).
    return (sa.update(messages)
            .values({n: given.c[f"e_{n}"] for n in ESTIMATED}
                    | {"seq": messages_seq.next_value(), "updated_at": sa.func.now()})
            .where(m.source == sa.bindparam("e_source"), m.message_id == given.c.e_message_id,
                   m.seq == given.c.e_seq))


_SET_ESTIMATES = _set_estimates()
# The rows are looked up by key, one after the other in key order (the order of the arrays),
# so their locks are taken in the merge's order: no deadlock with one.
_BY_KEY_IN_ORDER = ("set_config('enable_hashjoin', 'off', true), "
                    "set_config('enable_mergejoin', 'off', true)")


async def set_estimates(conn: AsyncConnection, source: str,
                        changed: Sequence[tuple[str, int, Sequence[Any]]]) -> int:
    """Write new estimates (`changed`: message id, its seq as read, and its new values of
    ESTIMATED) where the row's seq is still the one read; return rows changed, each with a
    new seq."""
    if not changed:
        return 0
    changed = sorted(changed, key=lambda c: c[0])
    # The transaction's id before its first nextval(), as the change feed needs.
    await conn.execute(sa.text(f"SELECT pg_current_xact_id(), {_BY_KEY_IN_ORDER}"))
    ids, seqs, values = zip(*changed, strict=True)
    params: dict[str, Any] = {"e_source": source, "e_message_id": list(ids), "e_seq": list(seqs)}
    for name, column in zip(ESTIMATED, zip(*values, strict=True), strict=True):
        params[f"e_{name}"] = list(column)
    return int((await conn.execute(_SET_ESTIMATES, params)).rowcount)
