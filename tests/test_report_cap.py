"""One cap on the reports a body holds, whatever its kind and shape: a push past it is refused
with 413 naming the cap, and kept; a registration body past it is refused the same way; a
pulled page past it (a provider may legitimately send one) is kept once and merged at most
MAX_REPORTS reports at a time, so that nothing pulled is unusable."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, providers, store, worker
from service.app import create_app
from service.config import BasicAuth, WebhookConfig
from service.providers import http
from service.providers.dicesms import DiceSmsSource
from service.providers.dicesms.fake import DiceMessage
from service.providers.infobip import InfobipSource
from service.providers.sinch import SinchSource
from service.providers.sinch.fake import Batch, FakeSinch, Recipient, batch_report
from service.providers.twilio import TwilioSource
from service.providers.twilio.fake import message
from service.providers.vonage import VonageSource
from service.providers.vonage.fake import record
from service.tables import inbox, messages
from tests.conftest import WRITE_TOKEN, make_settings
from tests.reports import report

TestClient = AsyncTestClient  # type: ignore[type-arg]
CAP = providers.MAX_REPORTS
SINCH_BASIC = {"Authorization": "Basic " + base64.b64encode(b"sinch:hook-pw").decode(),
               "Content-Type": "application/json"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
AT = datetime(2026, 11, 1, 10, 0, 5, tzinfo=UTC)
SN = SinchSource("sn", "http://127.0.0.1:1", service_plan_id="plan0001", api_token="tok",
                 webhook=WebhookConfig(basic=BasicAuth("sinch", "hook-pw")))


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[TestClient]:
    settings = make_settings(sources=make_settings().sources | {"sn": SN})
    async with AsyncTestClient(app=create_app(settings, database_url)) as test_client:
        yield test_client


def sinch_batch(batch_id: str, count: int) -> Batch:
    return Batch(batch_id, AT, [Recipient(f"4477{i:08d}", "Delivered", 0) for i in range(count)])


async def last_inbox(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(inbox).order_by(inbox.c.id.desc()).limit(1))).one()


async def stored(engine: AsyncEngine, source: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(messages).where(
            messages.c.source == source)) or 0)


# --- pushes and registrations past the cap: 413 naming it, the push kept ---------------------

@pytest.mark.parametrize("count", [CAP + 1, 100_001])
async def test_a_sinch_batch_report_past_the_cap_is_413_and_kept(
        client: TestClient, engine: AsyncEngine, count: int) -> None:
    body = json.dumps(batch_report(sinch_batch("BIG", count), full=True)).encode()
    answer = await client.post("/webhooks/sn", content=body, headers=SINCH_BASIC)
    assert answer.status_code == 413, answer.text
    assert f"at most {CAP} reports" in answer.json()["detail"]
    kept = await last_inbox(engine)
    assert (kept.source, kept.state, kept.body) == ("sn", "rejected", body)
    assert str(CAP) in kept.reason
    assert await stored(engine, "sn") == 0


async def test_a_sinch_batch_report_at_the_cap_is_merged(client: TestClient,
                                                         engine: AsyncEngine) -> None:
    body = json.dumps(batch_report(sinch_batch("FULL", CAP), full=True)).encode()
    answer = await client.post("/webhooks/sn", content=body, headers=SINCH_BASIC)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == CAP


async def test_registrations_past_the_cap_are_413(client: TestClient) -> None:
    items = [{"source": "ib", "sent_at": "2026-11-01T10:00:00Z", "message_id": f"r-{i}"}
             for i in range(CAP + 1)]
    answer = await client.post("/v1/outbound", json=items, headers=WRITE)
    assert answer.status_code == 413, answer.text
    assert f"at most {CAP}" in answer.json()["detail"]


# --- pulled pages past the cap: kept once, merged a part at a time ---------------------------

def infobip_page(count: int) -> tuple[InfobipSource, str, bytes]:
    reports = [report(f"ib-{i}") for i in range(count)]
    reports[13] = report("ib-13", sentAt="0001-01-01T00:00:00.000+0000")
    return (InfobipSource("ib", "http://ib.test"), "http://ib.test/sms/3/reports?limit=1000",
            json.dumps({"results": reports}).encode())


def twilio_page(count: int) -> tuple[TwilioSource, str, bytes]:
    account = "AC" + "a" * 32
    listed = [message(account, f"SM{i:032x}", "+14155552671", "delivered", AT) for i in range(count)]
    listed[13]["sid"] = ""
    return (TwilioSource("tw", "http://tw.test", account_sid=account, auth_token="t"),
            f"http://tw.test/2010-04-01/Accounts/{account}/Messages.json",
            json.dumps({"messages": listed, "next_page_uri": None}).encode())


def vonage_page(count: int) -> tuple[VonageSource, str, bytes]:
    listed = [record("k", f"P{i:08X}", "447700900000", "delivered", AT, AT,
                     client_ref=f"ref-{i}", price=Decimal("0.03")) for i in range(count)]
    listed[13]["date_received"] = "yesterday"
    return (VonageSource("vg", "http://vg.test", api_key="k", api_secret="s"),
            "http://vg.test/v2/reports/records",
            json.dumps({"records": listed, "request_status": "SUCCESS"}).encode())


def sinch_full_report(count: int) -> tuple[SinchSource, str, bytes]:
    full = batch_report(sinch_batch("B1", count), full=True)
    full["statuses"][0]["recipients"][13] = "4477\x00"  # no text may hold a NUL
    return (SN, "http://127.0.0.1:1/xms/v1/plan0001/batches/B1/delivery_report?type=full",
            json.dumps(full).encode())


def sinch_batches(count: int) -> tuple[SinchSource, str, bytes]:
    batches = [sinch_batch(f"L{b}", 4).resource() for b in range(count // 4)]
    batches[3]["to"][1] = "4477\x00"  # the 14th recipient listed
    return (SN, "http://127.0.0.1:1/xms/v1/plan0001/batches?page=0",
            json.dumps({"batches": batches, "count": len(batches), "page": 0,
                        "page_size": len(batches)}).encode())


def dicesms_listing(count: int) -> tuple[DiceSmsSource, str, bytes]:
    """Items of three recipients each: reports are counted, not items."""
    items = []
    for i in range(count // 3):
        item = DiceMessage(9841000000 + i, f"2026-11-01T10:00:{i:02d}.000000+05:45", "B").report()
        item["recipients"] = [{"client_name": None, "client_phone": 9841000000 + 100 * i + j}
                              for j in range(3)]
        items.append(item)
    items[4]["sent_at"] = "yesterday"  # reports 12 to 14: rejected as one item, index 4
    return (DiceSmsSource("dice", "http://dice.test"), "http://dice.test/api/sms-report/?page=2",
            json.dumps({"count": len(items), "next": None, "results": items}).encode())


PAGES: dict[str, Callable[[int], tuple[Any, str, bytes]]] = {
    "infobip": infobip_page, "twilio": twilio_page, "vonage": vonage_page,
    "sinch-full-report": sinch_full_report, "sinch-batches": sinch_batches,
    "dicesms-listing": dicesms_listing}
REJECTED_AT = {"dicesms-listing": 4}


@pytest.mark.parametrize("kind", sorted(PAGES))
async def test_a_pulled_page_past_the_cap_is_kept_once_and_merged_in_parts(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(providers, "MAX_REPORTS", 7)
    source, url, body = PAGES[kind](24)
    async with db.statement(engine) as conn:
        inbox_id = await store.keep_raw(conn, store.InboxRow(
            source.name, "pull", "application/json", body, "received", 0, 0, None, url))
    _, envelope = await ingest.merge_body(engine, inbox_id, source, "pull", body,
                                          "application/json", url)
    assert envelope.error is None, envelope.error
    assert [r.index for r in envelope.rejections] == [REJECTED_AT.get(kind, 13)]
    expected = 24 - (3 if kind == "dicesms-listing" else 1)
    assert len(envelope.reports) == expected
    kept = await last_inbox(engine)
    assert (kept.id, kept.state, kept.accepted, kept.rejected) == (
        inbox_id, "partial", expected, 1)
    assert await stored(engine, source.name) == expected


async def test_a_pulled_page_within_the_cap_is_merged_at_once(engine: AsyncEngine) -> None:
    """A Twilio page of 1000 (its PageSize) is one part, at the real cap."""
    source, url, body = twilio_page(1000)
    async with db.statement(engine) as conn:
        inbox_id = await store.keep_raw(conn, store.InboxRow(
            source.name, "pull", "application/json", body, "received", 0, 0, None, url))
    _, envelope = await ingest.merge_body(engine, inbox_id, source, "pull", body,
                                          "application/json", url)
    assert (envelope.error, len(envelope.reports), len(envelope.rejections)) == (None, 999, 1)


async def test_a_sinch_pull_of_a_batch_past_the_cap_merges_every_recipient(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch sent to a group lists more recipients than any push may hold: its full report
    is pulled, kept once and merged in parts, as is the batches page listing it."""
    monkeypatch.setattr(providers, "MAX_REPORTS", 7)
    now = datetime.now(UTC)
    with FakeSinch("plan0001", "tok") as fake:
        fake.add(Batch("GROUP", now - timedelta(minutes=1), [
            Recipient(f"4477{i:08d}", "Delivered", 0) for i in range(30)]))
        source = SinchSource("sn", fake.url, service_plan_id="plan0001", api_token="tok")
        async with httpx.AsyncClient() as provider_client:
            result = await worker.pull(engine, provider_client, source, "t",
                                       http.Retry(attempts=2, base_s=0.01))
    assert result is not None and result.error is None, result
    assert (result.pages, result.reports, result.rejected) == (2, 60, 0)
    async with engine.connect() as conn:
        finals = await conn.scalar(sa.select(sa.func.count()).select_from(messages).where(
            messages.c.source == "sn", messages.c.status == "DELIVERED"))
    assert finals == 30
