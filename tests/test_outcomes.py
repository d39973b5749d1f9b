"""Business metrics: each message is counted once, by the write that made it final, however
its reports arrive (duplicated, replayed, retried, or raced by several processes)."""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from datetime import UTC, datetime, timedelta

from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, rules, store
from service.config import InfobipSource
from service.errors import DatabaseUnavailable
from service.providers import Report
from tests.reports import body, report

BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
SENT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def finals(source: str, status: str = "DELIVERED") -> float:
    return REGISTRY.get_sample_value("dlr_messages_final_total",
                                     {"source": source, "status": status}) or 0.0


def latency(source: str, status: str = "DELIVERED") -> tuple[float, float]:
    labels = {"source": source, "status": status}
    return (REGISTRY.get_sample_value("dlr_message_final_seconds_count", labels) or 0.0,
            REGISTRY.get_sample_value("dlr_message_final_seconds_sum", labels) or 0.0)


def observation(source: str, message_id: str, status: str, seconds: int) -> Report:
    return rules.observation(source=source, message_id=message_id, status=status,
                             status_id=5 if status == "DELIVERED" else 7, sent_at=SENT,
                             done_at=SENT + timedelta(seconds=seconds))


async def test_a_message_is_counted_once_however_often_its_final_report_comes(
        client: AsyncTestClient, engine: AsyncEngine) -> None:  # type: ignore[type-arg]
    before, (count_before, sum_before) = finals("ib"), latency("ib")
    pending = report("m1", group_id=1, status_id=7, done_at="2026-11-01T10:00:01.000+0000")
    delivered = report("m1")  # sent 10:00:00, done 10:00:05
    later = report("m1", done_at="2026-11-01T10:00:09.000+0000")  # final again: wins the merge
    for payload in (pending, pending, delivered, delivered, later, delivered, pending):
        response = await client.post("/webhooks/ib", content=body(payload), headers=BASIC)
        assert response.status_code == 200
    assert finals("ib") - before == 1
    count, total = latency("ib")
    assert (count - count_before, total - sum_before) == (1, 5.0)

    # a replay of every kept body merges them all again and changes nothing
    replayed = await ingest.replay(engine, {"ib": InfobipSource("ib", "http://127.0.0.1:9")},
                                   only_unaccepted=False)
    assert replayed.bodies == 7
    assert finals("ib") - before == 1
    assert latency("ib")[0] - count_before == 1


async def test_every_final_group_is_counted_under_its_own_status(engine: AsyncEngine) -> None:
    source = f"ib-{uuid.uuid4().hex[:8]}"
    reports = [observation(source, f"m-{status}", status, 30)
               for status in sorted(rules.FINAL_GROUPS)]
    async with db.transaction(engine) as conn:
        written = await store.write(conn, [], [(r, "pull") for r in reports])
    assert written.changed == 4
    assert sorted(f.status for f in written.finished) == sorted(rules.FINAL_GROUPS)
    async with db.transaction(engine) as conn:  # an old final, again: changes nothing
        again = await store.write(conn, [], [(r, "pull") for r in reports])
    assert again == store.Written()


async def test_racing_writers_make_each_message_final_exactly_once(
        engine: AsyncEngine, database_url: str) -> None:
    """Four engines (as four processes would) race to write the same 40 messages, each
    through PENDING and several final reports in its own order; every message is made final
    by exactly one committed write."""
    source = f"ib-{uuid.uuid4().hex[:8]}"
    ids = [f"m{i}" for i in range(40)]
    engines = [db.create_engine(database_url, pool_size=2) for _ in range(4)]

    async def writer(index: int, engine: AsyncEngine) -> list[store.Finished]:
        shuffle = random.Random(index)
        plan = [observation(source, m, status, seconds) for m in ids
                for status, seconds in (("PENDING", 1), ("DELIVERED", 3 + index),
                                        ("DELIVERED", 20 - index))]
        shuffle.shuffle(plan)
        made: list[store.Finished] = []
        for start in range(0, len(plan), 7):
            batch = [(r, "push") for r in plan[start:start + 7]]
            while True:  # a deadlock between racing batches is retried, as a provider would
                try:
                    async with db.transaction(engine) as conn:
                        written = await store.write(conn, [], batch)
                except DatabaseUnavailable:
                    continue
                made += written.finished
                break
        return made

    try:
        results = await asyncio.gather(*[writer(i, e) for i, e in enumerate(engines)])
    finally:
        for each in engines:
            await each.dispose()
    made = [f for result in results for f in result]
    assert sorted(f.message_id for f in made) == sorted(ids)
    assert {(f.source, f.status) for f in made} == {(source, "DELIVERED")}
