"""Monthly partitions of the inbox and the status history, and dropping the old ones.

Both tables are range-partitioned by a UTC month: the inbox by when a body was received,
the history by when its message was sent (see service/tables.py). Each has a DEFAULT
partition that takes any row whose month has no partition yet, so a write never fails for
want of one; `ensure_partitions` makes the coming months' partitions ahead of time and
gives a kept month found in DEFAULT its own (moving its rows out). Dropping a month is a
`DROP TABLE`, not a `DELETE`. Merged messages (`messages`) are never pruned: billing
needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.tables import SCHEMA_LOCK_KEY, inbox_sightings, metadata, pull_bodies, runs

# table -> the column it is partitioned by
PARTITIONED = {"inbox": "received_at", "message_history": "sent_month"}
AHEAD = 2  # months after the current one that get their partition in advance


class Partition(msgspec.Struct, frozen=True):
    table: str
    name: str
    month: datetime  # first instant of the month, UTC


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(table: str, month: datetime) -> str:
    return f"{table}_p{month:%Y_%m}"


def retention_cutoff(now: datetime, months: int) -> datetime:
    """Rows before this may go: the current month and `months` whole months before it stay."""
    return add_months(month_start(now), -months)


async def _lock(conn: AsyncConnection) -> None:
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
    await conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))


async def partitions(conn: AsyncConnection) -> list[Partition]:
    """The monthly partitions that exist, oldest first (the DEFAULT ones are not listed)."""
    rows = await conn.execute(sa.text(
        "SELECT p.relname AS parent, c.relname AS name FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
        " WHERE p.relname = ANY(:tables) AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"),
        {"tables": list(PARTITIONED)})
    found = [Partition(row.parent, row.name,
                       datetime.strptime(row.name[-7:], "%Y_%m").replace(tzinfo=UTC))
             for row in rows]
    return sorted(found, key=lambda p: (p.month, p.table))


def _table(name: str, like: str) -> sa.TableClause:
    """A partition (or DEFAULT partition) of `like`, for Core statements."""
    return sa.table(name, *[sa.column(c.name, c.type) for c in metadata.tables[like].c])


async def ensure_partitions(conn: AsyncConnection, now: datetime, keep_months: int) -> list[str]:
    """Create the partitions this month, the next AHEAD and any kept month in the DEFAULT
    partitions need; return their names. Call inside a transaction."""
    await _lock(conn)
    have = {(p.table, p.month) for p in await partitions(conn)}
    cutoff = retention_cutoff(now, keep_months)
    coming = [add_months(month_start(now), i) for i in range(AHEAD + 1)]
    created = []
    for table, key in PARTITIONED.items():
        default = _table(f"{table}_default", table)
        # Only kept months get a partition; the rest (infinity, year 1 or 9999, a month
        # already pruned) stays in DEFAULT and is filtered out here, in SQL: such values do
        # not all come back as datetimes Python can compare (asyncpg reads ±infinity as
        # naive datetime.max and datetime.min).
        column = default.c[key]
        stray = await conn.scalars(
            sa.select(sa.func.date_trunc("month", column, "UTC").label("month")).distinct()
            .where(column >= cutoff, column < add_months(coming[-1], 1)))
        wanted = set(coming) | set(stray)
        for month in sorted(wanted):
            if (table, month) not in have:
                await _create(conn, table, key, month)
                created.append(partition_name(table, month))
    return created


async def _create(conn: AsyncConnection, table: str, key: str, month: datetime) -> None:
    """Build the month's table beside the parent, move its rows out of DEFAULT, attach it
    (ATTACH takes a weaker lock on the parent than CREATE … PARTITION OF)."""
    name, end = partition_name(table, month), add_months(month, 1)
    quote = conn.dialect.identifier_preparer.quote
    await conn.execute(sa.text(
        f"CREATE TABLE {quote(name)} (LIKE {quote(table)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    default, partition = _table(f"{table}_default", table), _table(name, table)
    moved = (sa.delete(default).where(default.c[key] >= month, default.c[key] < end)
             .returning(*default.c).cte("moved"))
    await conn.execute(sa.insert(partition).from_select(list(partition.c.keys()),
                                                        sa.select(moved)))
    # DDL takes no parameters: the bounds are literals made here from datetimes, not input.
    await conn.execute(sa.text(
        f"ALTER TABLE {quote(table)} ATTACH PARTITION {quote(name)}"
        f" FOR VALUES FROM ('{month.isoformat()}') TO ('{end.isoformat()}')"))


class Pruned(msgspec.Struct, frozen=True):
    cutoff: datetime
    dropped: Sequence[str]  # partitions dropped (or that would be, on a dry run)
    default_rows: int  # rows older than the cutoff deleted from the DEFAULT partitions
    runs: int  # reconciler passes older than the cutoff deleted (a small table: a DELETE)
    sightings: int = 0  # records of pulled bodies seen again, older than the cutoff


async def prune(conn: AsyncConnection, now: datetime, keep_months: int,
                dry_run: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Pruned:
    """Drop every monthly partition older than the retention, and delete the DEFAULT
    partitions' rows and the reconciler passes older than it; call inside a transaction.
    A dry run changes nothing. `progress` is told (partitions dropped, of how many) as
    they go."""
    if not dry_run:
        await ensure_partitions(conn, now, keep_months)
    cutoff = retention_cutoff(now, keep_months)
    old = [p for p in await partitions(conn) if add_months(p.month, 1) <= cutoff]
    deleted = sum([await _delete(conn, _table(f"{table}_default", table), key, cutoff, dry_run)
                   for table, key in PARTITIONED.items()])
    passes = await _delete(conn, runs, "started_at", cutoff, dry_run)
    sightings = await _delete(conn, inbox_sightings, "seen_at", cutoff, dry_run)
    # a body kept before the cutoff goes with its month: the next fetch keeps it anew
    await _delete(conn, pull_bodies, "kept_at", cutoff, dry_run)
    if not dry_run:
        quote = conn.dialect.identifier_preparer.quote
        for done, partition in enumerate(old, 1):
            await conn.execute(sa.text(f"DROP TABLE {quote(partition.name)}"))
            if progress is not None:
                progress(done, len(old))
    return Pruned(cutoff, [p.name for p in old], deleted, passes, sightings)


async def _delete(conn: AsyncConnection, table: sa.TableClause, column: str, before: datetime,
                  dry_run: bool) -> int:
    """Delete the rows of `table` whose `column` is before `before` (only count them on a
    dry run); return how many."""
    older = table.c[column] < before
    if dry_run:
        return int(await conn.scalar(sa.select(sa.func.count()).where(older)) or 0)
    return int((await conn.execute(sa.delete(table).where(older))).rowcount)
