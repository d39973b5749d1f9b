"""Pulls that learn nothing keep nothing: a pulled body fetched again unchanged is recorded
as seen again, not stored again; one-time pages are always kept."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest, worker
from service.config import DiceSmsSource, InfobipSource
from service.pages import RunResult
from service.providers import http
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.providers.infobip.fake import FakeInfobip
from service.tables import inbox, inbox_sightings, messages
from tests.reports import report

FAST = http.Retry(attempts=2, base_s=0.01)


def account(size: int = 30) -> list[DiceMessage]:
    """`size` messages in three batches, a third of them still pending."""
    return [DiceMessage(9842271300 + i, f"2025-11-04T17:{i // 60:02d}:{i % 60:02d}.000001+05:45",
                        f"batch-{i % 3}", "SENT" if i % 3 == 0 else "1",
                        None if i % 3 == 0 else "2025-11-04T18:00:00.000000+05:45")
            for i in range(size)]


async def pull(engine: AsyncEngine, source: Any) -> RunResult:
    async with httpx.AsyncClient() as client:
        result = await worker.pull(engine, client, source, "t", FAST)
    assert result is not None and result.error is None, result
    return result


async def kept(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(inbox.c.url, inbox.c.body).where(
            inbox.c.channel == "pull"))).all())


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def merged(engine: AsyncEngine) -> set[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(messages.c.message_id, messages.c.status,
                                            messages.c.bulk_id, messages.c.done_at))
        return set(rows.all())


async def test_an_unchanging_account_is_kept_once_and_seen_again(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=10) as fake:
        fake.messages = account()
        source = DiceSmsSource("dice", fake.url, token=fake.token, walk_interval_s=1e-3,
                               batch_ids_interval_s=1e-3)  # every pass reads everything
        first = await pull(engine, source)
        after_first = await kept(engine)
        later = [await pull(engine, source) for _ in range(4)]
    assert len({(url, body) for url, body in after_first}) == len(after_first)
    assert await kept(engine) == after_first  # nothing more kept
    assert first.bytes_kept == first.bytes_fetched > 0
    for run in later:
        assert run.bytes_kept == 0 and run.bytes_fetched > 0 and run.resighted == run.pages
    assert await count(engine, inbox_sightings) == sum(run.resighted for run in later)


async def test_a_change_keeps_exactly_the_bodies_that_changed(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=10) as fake:
        fake.messages = account()
        source = DiceSmsSource("dice", fake.url, token=fake.token, walk_interval_s=1e-3,
                               batch_ids_interval_s=1e-3)
        await pull(engine, source)
        before = await kept(engine)
        oldest_pending = fake.messages[0]  # on the listing's last page, in batch-0
        oldest_pending.status, oldest_pending.delivered_at = "1", "2025-11-04T19:00:00+05:45"
        await pull(engine, source)
    new = {urlsplit(url).path for url, _ in (await kept(engine))[len(before):]}
    # the walk stops at its first unchanged page; the change arrives by its open batch
    assert new == {"/api/batch-ids", "/api/sms-report/batch-0/"}, new
    assert ("+9779842271300@2025-11-04T11:15:00.000001Z", "DELIVERED") in {
        row[:2] for row in await merged(engine)}


async def test_replay_over_seen_again_bodies_gives_the_same_state(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=10) as fake:
        fake.messages = account()
        source = DiceSmsSource("dice", fake.url, token=fake.token, walk_interval_s=1e-3,
                               batch_ids_interval_s=1e-3)
        for _ in range(3):
            await pull(engine, source)
    state = await merged(engine)
    result = await ingest.replay(engine, {"dice": source}, only_unaccepted=False)
    assert result.failed == 0 and result.changed == 0
    assert await merged(engine) == state


async def test_a_304_is_seen_again_and_its_kept_body_still_read(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=10) as fake:
        fake.etags = True
        fake.messages = account()
        source = DiceSmsSource("dice", fake.url, token=fake.token, batch_ids_interval_s=1e-3)
        await pull(engine, source)
        before = await kept(engine)
        fake.requests.clear()
        second = await pull(engine, source)
        assert "/api/batch-ids" in fake.requests
        assert await kept(engine) == before and second.bytes_kept == 0
        async with engine.connect() as conn:
            not_modified = await conn.scalar(sa.select(sa.func.count()).where(
                inbox_sightings.c.not_modified))
        assert not_modified and not_modified >= 1
        # a new batch appears on the newest page and in the batch ids: read through
        fake.messages.append(DiceMessage(9842279999, "2025-11-05T09:00:00.000001+05:45",
                                         "batch-new", "SENT"))
        await pull(engine, source)
    assert "batch-new" in {row[2] for row in await merged(engine)}


async def test_one_time_reports_keep_every_page_even_the_same_bytes(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        source = InfobipSource("ib", fake.url, api_key=fake.api_key)
        for _ in range(2):
            fake.queue(report("same"))
            await pull(engine, source)
    pages = [url for url, body in await kept(engine) if "/sms/3/reports" in url and b"same" in body]
    assert len(pages) == 2


async def test_a_304_for_a_body_pruned_since_is_fetched_whole_next(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=10) as fake:
        fake.etags = True
        fake.messages = account()
        source = DiceSmsSource("dice", fake.url, token=fake.token, batch_ids_interval_s=1e-3)
        await pull(engine, source)
        async with engine.begin() as conn:  # as a prune of its month would
            await conn.execute(sa.delete(inbox).where(inbox.c.url.like("%/api/batch-ids")))
        await pull(engine, source)  # answered 304: nothing to read, the record forgotten
        await pull(engine, source)  # fetched whole, kept again
    assert [url for url, _ in await kept(engine) if url.endswith("/api/batch-ids")]
