"""A signed push replayed within its window is recognised: answered 200, not kept again,
counted. Standard Webhooks by `webhook-id`, Vonage by `nonce`, Twilio (which signs no
time) by its signature and query; the key is claimed in the transaction that keeps the body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest, store
from service.app import create_app
from service.providers.vonage.fake import receipt
from service.tables import inbox, push_replays
from tests import test_twilio, test_vonage
from tests.conftest import make_settings
from tests.reports import body, report
from tests.test_webhooks import signed_headers

TestClient = AsyncTestClient  # type: ignore[type-arg]
Push = Callable[[TestClient], Awaitable[Any]]


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[TestClient]:
    settings = make_settings()
    sources = dict(settings.sources) | {"tw": test_twilio.source(), "vg": test_vonage.source()}
    app = create_app(make_settings(sources=sources), database_url)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def standard_webhooks() -> Push:
    payload = body(report("m-sw"))
    headers = signed_headers(payload) | {"Content-Type": "application/json"}
    return lambda client: client.post("/webhooks/ib-signed", content=payload, headers=headers)


def twilio() -> Push:
    params = test_twilio.callback(test_twilio.resource(1), "delivered")
    return lambda client: test_twilio.post(client, params)


def vonage() -> Push:
    params = test_vonage.signed(receipt(test_vonage.part(1)))
    return lambda client: client.get(f"/webhooks/vg?{urlencode(params)}")


def vonage_posted() -> Push:
    params = test_vonage.signed(receipt(test_vonage.part(2)))
    content = urlencode(params).encode()
    return lambda client: client.post("/webhooks/vg", content=content, headers={
        "Content-Type": "application/x-www-form-urlencoded"})


def replays(source: str) -> float:
    return REGISTRY.get_sample_value("dlr_webhook_replays_total", {"source": source}) or 0.0


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


@pytest.mark.parametrize(("source", "make"), [("ib-signed", standard_webhooks), ("tw", twilio),
                                              ("vg", vonage), ("vg", vonage_posted)])
async def test_a_hundred_replays_keep_one_body(client: TestClient, engine: AsyncEngine,
                                               source: str, make: Callable[[], Push]) -> None:
    push = make()
    before = replays(source)
    first = await push(client)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 1 and "replayed" not in first.json()
    for _ in range(99):
        again = await push(client)
        assert again.status_code == 200, again.text
        assert again.json() == {"accepted": 0, "rejected": [], "rejected_count": 0,
                                "replayed": True}
    assert await count(engine, inbox) == 1
    assert await count(engine, push_replays) == 1
    assert replays(source) - before == 99


async def test_distinct_signed_pushes_are_each_kept(client: TestClient,
                                                    engine: AsyncEngine) -> None:
    for make in (standard_webhooks, standard_webhooks, vonage, vonage):  # new ids, nonces
        assert (await make()(client)).status_code == 200
    assert await count(engine, inbox) == 4


async def test_a_replay_after_its_window_is_kept_again(client: TestClient,
                                                       engine: AsyncEngine) -> None:
    push = twilio()
    assert (await push(client)).status_code == 200
    async with engine.begin() as conn:  # as if a day had passed
        await conn.execute(sa.update(push_replays).values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert "replayed" not in (await push(client)).json()
    assert await count(engine, inbox) == 2


async def test_a_replay_after_its_window_holds_the_key_again(client: TestClient,
                                                             engine: AsyncEngine) -> None:
    """The first replay past the window is kept, and takes the key for a new window: the
    next is a replay again (the key's old row, not yet forgotten, is renewed)."""
    push = twilio()
    assert (await push(client)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(sa.update(push_replays).values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert "replayed" not in (await push(client)).json()
    assert (await push(client)).json()["replayed"] is True
    assert await count(engine, inbox) == 2


def keyed_push(message_id: str) -> ingest.Envelope:
    """A signed push as the webhook hands it to the ingestor: decoded, with its replay key."""
    source = make_settings().sources["ib-signed"]
    decoded = ingest.decode(source, "push", body(report(message_id)), "application/json",
                            ingest.decoder_for(source, None, "application/json"))
    until = datetime.now(UTC) + timedelta(minutes=5)
    return msgspec.structs.replace(decoded, replay=(store.sha256(message_id.encode()), until))


async def test_identical_pushes_at_once_keep_one_body(engine: AsyncEngine) -> None:
    """Twenty copies of one signed push at once, none seeing another's key before it was
    committed: one is kept, nineteen are replays, whether they are written in one batch
    or by transactions side by side. (Checked only before the write, each was kept.)"""
    ingestor = ingest.Ingestor(engine)
    await ingestor.start()
    try:
        push = keyed_push("m-at-once")
        written = await asyncio.gather(*[ingestor.ingest(push) for _ in range(20)])
    finally:
        await ingestor.stop()
    assert await count(engine, inbox) == 1
    assert sorted(e.replayed for e in written) == [False] + [True] * 19
    side_by_side = keyed_push("m-side-by-side")
    replayed: list[list[int]] = [[] for _ in range(8)]
    await asyncio.gather(*[ingest.write(engine, [side_by_side], into) for into in replayed])
    assert sorted(len(into) for into in replayed) == [0] + [1] * 7
    assert await count(engine, inbox) == 2
    assert await count(engine, push_replays) == 2


async def test_keys_whose_window_ended_are_forgotten(client: TestClient,
                                                     engine: AsyncEngine) -> None:
    for make in (standard_webhooks, twilio):
        assert (await make()(client)).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(sa.update(push_replays).where(push_replays.c.source == "tw").values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        assert await store.forget_replays(conn) == 1
    assert await count(engine, push_replays) == 1


async def test_unsigned_pushes_are_never_taken_for_replays(client: TestClient,
                                                           engine: AsyncEngine) -> None:
    """Basic and token sources carry no key: the same body twice is kept twice (and merges
    to the same state), as before."""
    payload = body(report("m-basic"))
    for _ in range(2):
        answer = await client.post("/webhooks/ib", content=payload, auth=("hook", "hook-password"))
        assert answer.status_code == 200 and "replayed" not in answer.json()
    assert (await count(engine, inbox), await count(engine, push_replays)) == (2, 0)


async def test_a_twilio_callback_written_again_differently_is_a_replay(
        client: TestClient, engine: AsyncEngine) -> None:
    """Twilio's signature covers the URL and the form's parameters sorted, each value once:
    the same callback with its parameters reordered, one repeated, or a name
    percent-encoded carries the same signature, and is the same replay. (Keyed by the body
    as sent, each of these was kept again, as many times as it could be rewritten.)"""
    params = test_twilio.callback(test_twilio.resource(3), "delivered")
    headers = test_twilio.signed(params)
    pairs = list(params.items())
    first = urlencode(pairs).encode()
    rewritten = [urlencode(pairs[::-1]).encode(), first + b"&" + urlencode(pairs[:1]).encode(),
                 first.replace(b"MessageSid=", b"%4DessageSid="), first + b"&"]
    assert (await client.post("/webhooks/tw", content=first, headers=headers)).status_code == 200
    for content in rewritten:
        again = await client.post("/webhooks/tw", content=content, headers=headers)
        assert again.status_code == 200 and again.json()["replayed"] is True, again.text
    assert await count(engine, inbox) == 1
