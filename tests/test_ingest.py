"""Group commit: a body whose merge fails is isolated; the others in its batch still commit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest, store
from service.tables import inbox, messages, push_replays
from tests.reports import body, pushed, report


async def test_a_failing_body_does_not_take_its_batch_down(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = store.write
    batch_sizes: list[int] = []

    async def write(conn: Any, bodies: Any, observed: Any) -> store.Written:
        batch_sizes.append(len(bodies))
        if any(report.message_id == "poison" for report, _ in observed):
            raise RuntimeError("bug in the merge")
        return await real_write(conn, bodies, observed)

    monkeypatch.setattr(store, "write", write)
    ingestor = ingest.Ingestor(engine, writers=1)
    await ingestor.start()
    try:
        envelopes = [pushed("ib", body(report(m)))
                     for m in ("a", "poison", "b")]
        outcomes = await asyncio.gather(*[ingestor.ingest(e) for e in envelopes],
                                        return_exceptions=True)
    finally:
        await ingestor.stop()
    assert batch_sizes[0] == 3, "the three bodies should have shared one transaction"
    assert [len(o.reports) for o in outcomes] == [1, 0, 1]  # type: ignore[union-attr]
    assert [r.message_id for r in outcomes[1].rejections] == ["poison"]  # type: ignore[union-attr]
    async with engine.connect() as conn:
        stored = set((await conn.execute(sa.select(messages.c.message_id))).scalars())
        states = sorted((await conn.execute(sa.select(inbox.c.state))).scalars())
    assert stored == {"a", "b"}
    assert states == ["accepted", "accepted", "rejected"]


async def test_a_body_that_cannot_even_be_kept_is_reported_as_not_stored(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    async def write(conn: Any, bodies: Any, observed: Any) -> store.Written:
        raise RuntimeError("bug in every write")

    monkeypatch.setattr(store, "write", write)
    ingestor = ingest.Ingestor(engine, writers=1)
    await ingestor.start()
    try:
        with pytest.raises(ingest.IngestFailed) as failed:
            await ingestor.ingest(pushed("ib", body(report("a"))))
    finally:
        await ingestor.stop()
    assert not failed.value.kept


async def test_a_signed_push_isolated_after_a_failed_merge_still_claims_its_replay_key(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body kept by the one-by-one path holds its replay key as a committed batch's does:
    the same push again is answered as a replay, not kept a second time."""
    real_write = store.write

    async def write(conn: Any, bodies: Any, observed: Any) -> store.Written:
        if any(report.message_id == "poison" for report, _ in observed) and len(observed) > 1:
            raise RuntimeError("bug in the merge")
        return await real_write(conn, bodies, observed)

    monkeypatch.setattr(store, "write", write)
    key = (b"k" * 32, datetime.now(UTC) + timedelta(minutes=5))
    signed = msgspec.structs.replace(pushed("ib", body(report("poison"), report("ok"))),
                                     replay=key)
    ingestor = ingest.Ingestor(engine, writers=1)
    await ingestor.start()
    try:
        first = await ingestor.ingest(signed)
        again = await ingestor.ingest(signed)
    finally:
        await ingestor.stop()
    assert not first.replayed and again.replayed
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(inbox)) == 1
        assert await conn.scalar(sa.select(sa.func.count()).select_from(push_replays)) == 1
