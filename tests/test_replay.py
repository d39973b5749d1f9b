"""replay: kept bodies decoded and merged again, idempotently, so a fix turns them into data."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest, store, worker
from service.config import DiceSmsSource, InfobipSource
from service.providers import infobip
from service.providers.dicesms.fake import FakeDiceSms
from service.providers.infobip.fake import FakeInfobip
from service.tables import inbox, message_history, messages
from tests.conftest import WRITE_TOKEN
from tests.reports import body, report
from tests.test_dicesms import messages_of_three_batches

BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
KINDS = {"ib": InfobipSource("ib", "http://127.0.0.1:9")}


async def states(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(inbox.c.state).order_by(inbox.c.id))).scalars())


async def message_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(messages)) or 0)


async def test_bodies_rejected_by_a_decoder_bug_are_merged_after_the_fix(
        client: AsyncTestClient, engine: AsyncEngine,  # type: ignore[type-arg]
        monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(source: str, raw: bytes) -> object:
        raise KeyError("a decoder bug")

    with monkeypatch.context() as patch:
        patch.setattr(infobip, "decode_reports", buggy)
        response = await client.post("/webhooks/ib", content=body(report("m1"), report("m2")),
                                     headers=BASIC)
        assert response.status_code == 400
    assert await states(engine) == ["rejected"]
    assert await message_count(engine) == 0

    first = await ingest.replay(engine, KINDS, only_unaccepted=True)
    assert (first.bodies, first.reports, first.changed) == (1, 2, 2)
    assert await states(engine) == ["accepted"]
    assert await message_count(engine) == 2
    again = await ingest.replay(engine, KINDS, only_unaccepted=False)
    assert (again.bodies, again.changed) == (1, 0)


async def test_a_pulled_page_that_failed_to_merge_is_recovered(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> int:
        raise RuntimeError("bug in the merge")

    with FakeInfobip() as fake:
        fake.queue(report("m1"), report("m2"), report("m3"))
        with monkeypatch.context() as patch:
            patch.setattr(store, "write", broken)
            async with httpx.AsyncClient() as client:
                source = InfobipSource("ib", fake.url, api_key=fake.api_key)
                result = await worker.pull(engine, client, source, "t")
    assert result is not None and "3 reports of page 1 could not be merged" in str(result.error)
    assert await states(engine) == ["rejected", "accepted"]  # the page, then the empty one
    result = await ingest.replay(engine, KINDS, only_unaccepted=True)
    assert result.changed == 3
    assert await message_count(engine) == 3


async def test_replay_goes_on_past_a_body_it_cannot_merge(
        client: AsyncTestClient, engine: AsyncEngine,  # type: ignore[type-arg]
        monkeypatch: pytest.MonkeyPatch) -> None:
    for message_id in ("m1", "m2", "m3"):
        await client.post("/webhooks/ib", content=body(report(message_id)), headers=BASIC)
    real_mark = store.mark_inbox

    async def broken_for_the_second(conn: object, inbox_id: int, row: object) -> None:
        if inbox_id == 2:
            raise RuntimeError("a bug on one body")
        await real_mark(conn, inbox_id, row)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "mark_inbox", broken_for_the_second)
    result = await ingest.replay(engine, KINDS, only_unaccepted=False)
    assert (result.bodies, result.failed) == (2, 1)


async def test_bodies_of_unknown_sources_are_skipped(client: AsyncTestClient,  # type: ignore[type-arg]
                                                     engine: AsyncEngine) -> None:
    await client.post("/webhooks/ib", content=body(report("m1")), headers=BASIC)
    result = await ingest.replay(engine, {}, only_unaccepted=False)
    assert (result.bodies, result.skipped) == (0, 1)


def test_replay_command(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "http://127.0.0.1:9"\n')
    env = os.environ | {"DLR_DATABASE_URL": database_url, "DLR_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "service", "replay", "--rejected",
                           "--since", "2026-01-01T00:00:00+00:00"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replayed 0 bodies")


async def test_the_first_replay_changes_nothing(client: AsyncTestClient,  # type: ignore[type-arg]
                                                engine: AsyncEngine) -> None:
    """Every kind of kept body, pushed and pulled: a replay with the same decoders re-stamps no
    row (no new seq) and adds no history, the first time as every time."""
    await client.post("/webhooks/ib", headers=BASIC, content=body(
        report("p1", group_id=1, status_id=7), report("p2")))
    sent = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    await client.post("/v1/outbound", headers={"Authorization": f"Bearer {WRITE_TOKEN}"},
                      json=[{"source": "ib", "sent_at": sent, "message_id": "reg-1"}])
    async with httpx.AsyncClient() as http_client:
        with FakeInfobip() as fake:
            fake.queue(report("q1"), report("p1"))
            fake.logs["reg-1"] = report("reg-1", group_id=1, status_id=7)
            ib = InfobipSource("ib", fake.url, api_key=fake.api_key)
            assert (await worker.pull(engine, http_client, ib, "t")).error is None  # type: ignore[union-attr]
        with FakeDiceSms(page_size=5) as dice_fake:
            dice_fake.messages = messages_of_three_batches()
            dice = DiceSmsSource("dice", dice_fake.url, token=dice_fake.token)
            assert (await worker.pull(engine, http_client, dice, "t")).error is None  # type: ignore[union-attr]
    before = await merged_state(engine)
    for only_unaccepted in (False, True, False):
        result = await ingest.replay(engine, {"ib": ib, "dice": dice},
                                     only_unaccepted=only_unaccepted)
        assert result.changed == 0
        assert await merged_state(engine) == before


async def merged_state(engine: AsyncEngine) -> tuple[dict[tuple[str, str], int], int]:
    async with engine.connect() as conn:
        seqs = {(r.source, r.message_id): r.seq for r in await conn.execute(
            sa.select(messages.c.source, messages.c.message_id, messages.c.seq))}
        history = await conn.scalar(sa.select(sa.func.count()).select_from(message_history))
    return seqs, int(history or 0)
