"""Monthly partitions: rows land in their month, stray months get one, prune drops old ones
and keeps merged messages; the migration to partitioned tables keeps every row."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, retention, store
from service.tables import inbox, message_history, messages, runs
from tests.databases import scratch_database
from tests.reports import body, pushed, report

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


@pytest.fixture
def scratch_url(server_url: str) -> Iterator[str]:
    with scratch_database(server_url) as url:
        yield db.asyncpg_url(url)


@pytest.fixture
async def scratch(scratch_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(scratch_url)
    yield engine
    await engine.dispose()


async def ensure(engine: AsyncEngine, now: datetime = NOW, keep: int = 13) -> list[str]:
    async with db.transaction(engine) as conn:
        return await retention.ensure_partitions(conn, now, keep)


async def where_rows_are(engine: AsyncEngine, table: sa.Table) -> dict[str, int]:
    query = (sa.select(sa.cast(sa.literal_column("tableoid::regclass"), sa.Text), sa.func.count())
             .select_from(table).group_by(sa.literal_column("1")))
    async with engine.connect() as conn:
        return {name: count for name, count in (await conn.execute(query)).all()}


async def push(engine: AsyncEngine, *message_ids: str, sent: timedelta | datetime = timedelta(0)
               ) -> None:
    """One webhook body for each message, sent at `sent` or that long ago."""
    moment = sent if isinstance(sent, datetime) else datetime.now(UTC) - sent
    sent_at = f"{moment:%Y-%m-%dT%H:%M:%S.000+0000}"
    await ingest.write(engine, [pushed("ib", body(report(m, sentAt=sent_at, doneAt=sent_at)))
                                for m in message_ids])


def month_of(ago: timedelta) -> str:
    return f"{datetime.now(UTC) - ago:%Y_%m}"


async def test_this_month_and_the_next_two_are_made_once(scratch: AsyncEngine) -> None:
    assert await ensure(scratch) == [f"{t}_p{m}" for t in retention.PARTITIONED
                                     for m in ("2026_11", "2026_12", "2027_01")]
    assert await ensure(scratch) == []
    assert await ensure(scratch, NOW + timedelta(days=10)) == [
        "inbox_p2027_02", "message_history_p2027_02"]


async def test_replicas_making_partitions_at_once_make_each_once(scratch_url: str) -> None:
    engines = [db.create_engine(scratch_url) for _ in range(4)]
    try:
        made = await asyncio.gather(*[ensure(engine) for engine in engines])
    finally:
        for engine in engines:
            await engine.dispose()
    assert sorted(name for names in made for name in names) == sorted(
        f"{t}_p{m}" for t in retention.PARTITIONED for m in ("2026_11", "2026_12", "2027_01"))


async def test_rows_land_in_their_month(scratch: AsyncEngine) -> None:
    await ensure(scratch, datetime.now(UTC))
    await push(scratch, "m1", "m2")
    month = f"{datetime.now(UTC):%Y_%m}"
    assert await where_rows_are(scratch, inbox) == {f"inbox_p{month}": 2}
    assert await where_rows_are(scratch, message_history) == {f"message_history_p{month}": 2}


async def test_rows_without_a_partition_go_to_default_and_later_move(scratch: AsyncEngine) -> None:
    await push(scratch, "m1")  # no partitions yet: nothing is refused
    assert await where_rows_are(scratch, inbox) == {"inbox_default": 1}
    made = await ensure(scratch, datetime.now(UTC))
    month = f"{datetime.now(UTC):%Y_%m}"
    assert f"inbox_p{month}" in made
    assert await where_rows_are(scratch, inbox) == {f"inbox_p{month}": 1}
    assert await where_rows_are(scratch, message_history) == {f"message_history_p{month}": 1}


async def _age_inbox(engine: AsyncEngine, by: timedelta) -> None:
    """Pretend the bodies received so far were received `by` ago."""
    async with db.transaction(engine) as conn:
        await conn.execute(sa.update(inbox).values(received_at=inbox.c.received_at - by))


async def test_history_is_filed_under_the_month_its_message_was_sent(scratch: AsyncEngine) -> None:
    ago = timedelta(days=62)
    sent = datetime.now(UTC) - ago
    await push(scratch, "m1", sent=sent)
    await ensure(scratch, datetime.now(UTC))  # that month is kept: it gets its partition
    await push(scratch, "m1", sent=sent)  # the same report again, later: not recorded twice
    assert await where_rows_are(scratch, message_history) == {f"message_history_p{sent:%Y_%m}": 1}
    await ingest.write(scratch, [pushed("ib", body(report(
        "m2", sentAt=None, doneAt=None)))])  # no time in the report: when received
    assert (await where_rows_are(scratch, message_history))[
        f"message_history_p{month_of(timedelta(0))}"] == 1


async def test_a_report_from_the_far_future_stays_in_default(scratch: AsyncEngine) -> None:
    """Such a report is refused now; an older version may have stored one."""
    [decoded] = pushed("ib", body(report("m1"))).reports
    far = msgspec.structs.replace(decoded, sent_at=datetime(9999, 12, 31, 23, tzinfo=UTC))
    async with db.transaction(scratch) as conn:
        await store.write(conn, [], [(far, "push")])
    assert await ensure(scratch, datetime.now(UTC)) != []
    assert await where_rows_are(scratch, message_history) == {"message_history_default": 1}


async def test_prune_drops_old_months_and_keeps_messages(scratch: AsyncEngine) -> None:
    old = timedelta(days=500)
    await push(scratch, "old", sent=old)
    await _age_inbox(scratch, old)
    await push(scratch, "new")
    now = datetime.now(UTC)
    await ensure(scratch, now, keep=24)  # kept longer until now
    assert f"inbox_p{month_of(old)}" in await where_rows_are(scratch, inbox)

    async with db.transaction(scratch) as conn:
        dry = await retention.prune(conn, now, 13, dry_run=True)
    assert dry.dropped == [f"inbox_p{month_of(old)}", f"message_history_p{month_of(old)}"]
    assert len(await where_rows_are(scratch, inbox)) == 2, "a dry run changes nothing"

    async with db.transaction(scratch) as conn:
        pruned = await retention.prune(conn, now, 13)
    assert pruned.dropped == dry.dropped
    assert list(await where_rows_are(scratch, inbox)) == [f"inbox_p{now:%Y_%m}"]
    async with scratch.connect() as conn:
        kept = await conn.scalars(sa.select(messages.c.message_id).order_by(messages.c.message_id))
        assert list(kept) == ["new", "old"], "merged messages are never pruned"
        history = await conn.scalars(sa.select(message_history.c.message_id))
        assert list(history) == ["new"]


async def test_prune_deletes_old_rows_left_in_default(scratch: AsyncEngine) -> None:
    old = timedelta(days=500)
    await push(scratch, "old", sent=old)  # older than kept: never given a partition
    await _age_inbox(scratch, old)
    async with db.transaction(scratch) as conn:
        pruned = await retention.prune(conn, datetime.now(UTC), 13)
    assert pruned.default_rows == 2  # its inbox row and its history row
    assert await where_rows_are(scratch, inbox) == {}


async def test_prune_deletes_old_reconciler_passes(scratch: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with db.transaction(scratch) as conn:
        await conn.execute(sa.insert(runs), [{"source": "ib", "started_at": now - timedelta(days=d)}
                                             for d in (1, 500)])
        pruned = await retention.prune(conn, now, 13)
        assert pruned.runs == 1
        assert await conn.scalar(sa.select(sa.func.count()).select_from(runs)) == 1


def test_prune_command(scratch_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLR_CONFIG"}
    env |= {"DLR_DATABASE_URL": scratch_url, "DLR_RETENTION_MONTHS": "6"}
    result = subprocess.run([sys.executable, "-m", "service", "prune", "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr

    async def partition_count() -> int:
        engine = db.create_engine(scratch_url)
        try:
            async with engine.connect() as conn:
                return len(await retention.partitions(conn))
        finally:
            await engine.dispose()

    assert asyncio.run(partition_count()) == 0, "a dry run makes no partition either"
    cutoff = retention.retention_cutoff(datetime.now(UTC), 6)
    assert result.stdout.startswith(f"keeping 6 months before this one (from {cutoff:%Y-%m-%d});"
                                    " would drop 0 partitions, 0 older rows and 0 reconciler passes")


def test_the_migration_to_partitions_keeps_every_row(server_url: str) -> None:
    with scratch_database(server_url, migrated=False) as url:
        config = Config()
        config.set_main_option("script_location", str(db.migrations_dir()))
        config.attributes["database_url"] = db.asyncpg_url(url)
        command.upgrade(config, "0002")

        async def fill_then_check() -> None:
            engine = db.create_engine(db.asyncpg_url(url))
            try:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(
                        "INSERT INTO inbox (source, channel, received_at, body, state, accepted,"
                        " rejected) VALUES ('ib', 'push', '2025-01-05', 'x', 'accepted', 1, 0),"
                        " ('ib', 'push', now(), 'y', 'accepted', 1, 0)")
                    await conn.exec_driver_sql(
                        "INSERT INTO messages (source, message_id, status, final, obs_hash, seq,"
                        " sent_at) VALUES ('ib', 'm1', 'DELIVERED', true, 'h', 1, '2025-01-05')")
                    await conn.exec_driver_sql(
                        "INSERT INTO message_history (source, message_id, obs_hash, channel,"
                        " status) VALUES ('ib', 'm1', 'h', 'push', 'DELIVERED')")
                await asyncio.to_thread(command.upgrade, config, "head")
                await ensure(engine, datetime.now(UTC), keep=24)
                assert await where_rows_are(engine, inbox) == {
                    "inbox_p2025_01": 1, f"inbox_p{datetime.now(UTC):%Y_%m}": 1}
                assert await where_rows_are(engine, message_history) == {
                    "message_history_p2025_01": 1}
                async with engine.begin() as conn:
                    new_id = await conn.scalar(sa.insert(inbox).values(
                        source="ib", channel="push", body=b"z", state="accepted", accepted=1,
                        rejected=0).returning(inbox.c.id))
                assert new_id == 3, "ids carry on after the copied rows"
                await asyncio.to_thread(command.downgrade, config, "0002")
                assert sum((await where_rows_are(engine, inbox)).values()) == 3
            finally:
                await engine.dispose()

        asyncio.run(fill_then_check())
