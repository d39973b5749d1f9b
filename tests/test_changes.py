"""GET /v1/changes: seq order, resumable, and never past a change still in flight."""

from __future__ import annotations

import asyncio
import base64
import random
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, rules, store
from service.api import changes
from tests.conftest import READ_TOKEN
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
T0 = datetime(2026, 11, 1, tzinfo=UTC)


async def test_feed_in_seq_order_and_resumable(client: Client) -> None:
    await client.post("/webhooks/ib", headers=BASIC, content=body(
        *[report(f"m{i}", group_id=1, status_id=7) for i in range(5)]))
    page = (await client.get("/v1/changes", params={"after": 0, "limit": 3}, headers=READ)).json()
    assert [m["message_id"] for m in page["items"]] == ["m0", "m1", "m2"]
    rest = (await client.get("/v1/changes", params={"after": page["after"]}, headers=READ)).json()
    assert [m["message_id"] for m in rest["items"]] == ["m3", "m4"]
    seqs = [m["seq"] for m in page["items"] + rest["items"]]
    assert seqs == sorted(seqs)

    await client.post("/webhooks/ib", headers=BASIC, content=body(report("m1", group_id=1,
                                                                         status_id=7)))
    idle = (await client.get("/v1/changes", params={"after": rest["after"]}, headers=READ)).json()
    assert idle["items"] == []  # a duplicate changes no row (it may use up a seq number)
    assert idle["after"] >= rest["after"]

    await client.post("/webhooks/ib", headers=BASIC, content=body(report("m1")))
    moved = (await client.get("/v1/changes", params={"after": idle["after"]}, headers=READ)).json()
    assert [(m["message_id"], m["status"]) for m in moved["items"]] == [("m1", "DELIVERED")]


def observation(message_id: str, seconds: int = 0) -> object:
    return rules.observation(source="ib", message_id=message_id, status="DELIVERED",
                                 status_id=5, done_at=T0 + timedelta(seconds=seconds))


async def settled(engine: AsyncEngine, after: int = 0) -> int:
    """A horizon, however long the writers in flight take."""
    return await changes.Horizon().advance(engine, after, wait_s=60)


async def test_horizon_waits_for_a_writer_still_in_flight(engine: AsyncEngine) -> None:
    async with db.transaction(engine) as slow:  # takes a seq, commits last
        await store.write(slow, [], [(observation("early"), "push")])  # type: ignore[list-item]
        async with db.statement(engine) as fast:  # a later seq, committed first
            await store.write(fast, [], [(observation("late"), "push")])  # type: ignore[list-item]
        horizon = asyncio.create_task(settled(engine))
        await asyncio.sleep(0.3)
        assert not horizon.done(), "the feed must not move past a change in flight"
    seen = await horizon
    async with db.transaction(engine) as conn:
        rows = await store.changes(conn, 0, seen, 100)
    assert [r.message_id for r in rows] == ["early", "late"]


async def test_horizon_waits_for_a_writer_alone_in_flight(engine: AsyncEngine) -> None:
    # No transaction ends after the writer began: a snapshot's list of running transactions
    # stops at the newest one that ended, so it would not name this writer.
    async with db.transaction(engine) as slow:
        await store.write(slow, [], [(observation("only"), "push")])  # type: ignore[list-item]
        horizon = asyncio.create_task(settled(engine))
        await asyncio.sleep(0.3)
        assert not horizon.done(), "the feed must not move past a change in flight"
    assert await horizon == 1


async def test_consumer_never_skips_under_concurrent_writers(engine: AsyncEngine) -> None:
    rnd = random.Random(3)
    expected: dict[str, int] = {}

    async def writer(n: int) -> None:
        await asyncio.sleep(rnd.random() * 0.2)
        async with db.transaction(engine) as conn:
            for k in range(3):
                message_id = f"w{n}-{k}"
                await store.write(conn, [], [(observation(message_id, n), "push")])  # type: ignore[list-item]
                expected[message_id] = 0
            await asyncio.sleep(rnd.random() * 0.05)  # commit out of seq order

    seen: dict[str, int] = {}
    done = asyncio.Event()
    feed = changes.Horizon()

    async def consumer() -> None:
        after = 0
        while True:
            finished = done.is_set()
            horizon = await feed.advance(engine, after, wait_s=changes.WAIT_S)
            async with db.transaction(engine) as conn:
                rows = await store.changes(conn, after, horizon, 7)
            for row in rows:
                assert row.seq > after
                seen[row.message_id] = row.seq
                after = row.seq
            if len(rows) < 7:
                after = max(after, horizon)
                if finished:
                    return
            await asyncio.sleep(0.01)

    reading = asyncio.create_task(consumer())
    await asyncio.gather(*[writer(n) for n in range(20)])
    done.set()
    await reading
    assert set(seen) == set(expected)


async def test_a_writer_is_not_held_up_while_the_feed_waits(engine: AsyncEngine) -> None:
    async with db.transaction(engine) as slow:
        await store.write(slow, [], [(observation("early"), "push")])  # type: ignore[list-item]
        horizon = asyncio.create_task(settled(engine))
        await asyncio.sleep(0.3)  # the feed is now waiting for `slow`
        async with db.transaction(engine) as conn:
            await store.write(conn, [], [(observation("late"), "push")])  # type: ignore[list-item]
        assert not horizon.done(), "the writer committed while the feed still waited"
    assert await horizon == 1, "the feed serves what was in flight when it looked"


async def test_a_writer_open_past_the_wait_neither_fails_the_feed_nor_is_skipped(
        client: Client, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    await client.post("/webhooks/ib", headers=BASIC, content=body(report("a")))
    first = (await client.get("/v1/changes", headers=READ)).json()
    assert [m["message_id"] for m in first["items"]] == ["a"]
    async with db.transaction(engine) as slow:  # open for longer than the feed waits
        await store.write(slow, [], [(observation("b"), "push")])  # type: ignore[list-item]
        await client.post("/webhooks/ib", headers=BASIC, content=body(report("c")))
        with monkeypatch.context() as hurried:
            hurried.setattr(changes, "WAIT_S", 0.5)
            stuck = await client.get("/v1/changes", params={"after": first["after"]},
                                     headers=READ)
            assert stuck.status_code == 200
            assert stuck.json() == {"items": [], "after": first["after"]}
            again = (await client.get("/v1/changes", headers=READ)).json()
            assert again == first, "up to what was already proven, no further"
    rest = (await client.get("/v1/changes", params={"after": first["after"]}, headers=READ)).json()
    assert [m["message_id"] for m in rest["items"]] == ["b", "c"]
