"""Group commit: a body whose merge fails is isolated; the others in its batch still commit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest, store
from service.tables import inbox, messages
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
