"""DiceSMS: the seed examples decode; the pull fills every message, with its batch, once."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import worker
from service.config import DiceSmsSource
from service.providers import dicesms, http
from service.providers.dicesms import pull as dicesms_pull
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.tables import messages, pull_cursors
from tests.conftest import PAYLOADS

SEEDS = PAYLOADS / "dicesms"
FAST = http.Retry(attempts=3, base_s=0.01, max_s=0.05)
SOURCE = DiceSmsSource("dice", "https://dicesms.asia", token="t")


def by_id(reports: list[Any]) -> dict[str, Any]:
    return {r.message_id: r for r in reports}


def test_seed_batch_report_decodes() -> None:
    statuses = dicesms.StatusTable({})
    reports, rejections = dicesms.decode_batch_report(
        SOURCE, statuses, "881127472383-4566", (SEEDS / "batch_report.json").read_bytes())
    assert rejections == []
    assert len(reports) == 5
    first = by_id(reports)["+9779842271353@2025-11-04T11:15:45.126760Z"]
    assert (first.status, first.final, first.status_name) == ("UNDELIVERABLE", True, "UNDELIVERABLE")
    assert (first.to, first.bulk_id) == ("+9779842271353", "881127472383-4566")
    assert first.text == "Burst Mode Test. Please Ignore it. @5:00"
    assert {r.status for r in reports} == {"UNDELIVERABLE", "PENDING"}


def test_fields_no_decoder_reads_are_counted_by_name() -> None:
    def counted(field: str) -> float:
        return REGISTRY.get_sample_value("dlr_unknown_fields_total",
                                         {"source": "dice", "field": field}) or 0.0

    item = {"message": "hi", "sent_at": "2025-11-04T17:00:45.153834+05:45", "status": "SENT",
            "delivered_at": None, "sender_id": "SHOP",
            "recipients": [{"client_phone": 9842271353, "client_name": None, "operator": "NT"}]}
    before = counted("sender_id"), counted("recipients.operator")
    reports, rejections = dicesms.decode_batch_report(
        SOURCE, dicesms.StatusTable({}), "b-1", json.dumps([item, item]).encode())
    assert (len(reports), rejections) == (2, [])
    assert (counted("sender_id"), counted("recipients.operator")) == (before[0] + 2,
                                                                       before[1] + 2)


@pytest.mark.parametrize(("phone", "operator"), [
    (9801912821, "Ncell"),  # phonenumbers says "NCell"; NETWORKS (by MCC+MNC) "Ncell"
    (9842271353, "Nepal Telecom"), (9612345678, "Smart Telecom"), (9741234567, "NDCL")])
def test_a_report_names_the_network_as_its_mcc_mnc_does(phone: int, operator: str) -> None:
    item = {"message": "hi", "sent_at": "2025-11-04T17:00:45.153834+05:45", "status": "SENT",
            "delivered_at": None, "recipients": [{"client_phone": phone}]}
    [report], rejections = dicesms.decode_batch_report(
        SOURCE, dicesms.StatusTable({}), "b-1", json.dumps([item]).encode())
    assert rejections == []
    assert (report.to, report.country, report.operator) == (f"+977{phone}", "NP", operator)


def test_seed_report_page_decodes_with_batches_joined_on_sent_at() -> None:
    rows, _ = dicesms.decode_batch_ids("dice", (SEEDS / "batch_ids.json").read_bytes())
    batch_of = {row.sent_at: row.batch_id for row in rows}
    reports, rejections = dicesms.decode_report_page(
        SOURCE, dicesms.StatusTable({}), (SEEDS / "report_page.json").read_bytes(), batch_of)
    assert rejections == []
    ids = by_id(reports)
    # A range the numbering metadata does not know is still Nepali: E.164, no carrier.
    unknown = ids["+97798625000000@2025-11-04T11:15:45.070173Z"]
    assert (unknown.to, unknown.operator) == ("+97798625000000", None)
    joined = ids["+9779843000000@2025-11-04T11:15:45.153834Z"]
    assert joined.bulk_id == "881127472383-4566"
    assert dicesms.next_url((SEEDS / "report_page.json").read_bytes()) == \
        "https://dicesms.asia/api/sms-report/?page=2"


def test_seed_batch_ids_statuses() -> None:
    rows, _ = dicesms.decode_batch_ids("dice", (SEEDS / "batch_ids.json").read_bytes())
    statuses = dicesms.StatusTable({})
    assert [statuses.is_final(r.status, r.delivered_at is not None) for r in rows] == \
        [True, True, False]
    assert [statuses.group(str(r.status), r.delivered_at is not None) for r in rows] == \
        ["DELIVERED", "UNDELIVERABLE", "PENDING"]


def test_status_table_overrides_and_counts_unmapped() -> None:
    statuses = dicesms.StatusTable({"4": "expired", "9": "REJECTED"})
    assert statuses.group("4", False) == "EXPIRED"
    assert statuses.group("9", False) == "REJECTED"
    assert statuses.group("SENT", False) == "PENDING"
    assert statuses.group("QUEUED_SOMEWHERE", False) == "PENDING"
    assert statuses.group("QUEUED_SOMEWHERE", True) == "DELIVERED"
    assert statuses.unmapped == {"QUEUED_SOMEWHERE": 1}


def test_bad_items_are_rejected_alone() -> None:
    body = b'[{"recipients": [{"client_phone": 9842271353}], "sent_at": "2025-11-04T17:00:45+05:45",' \
           b' "status": "SENT"}, {"recipients": [], "sent_at": "yesterday"}]'
    reports, rejections = dicesms.decode_batch_report(SOURCE, dicesms.StatusTable({}), "b", body)
    assert len(reports) == 1
    assert [r.index for r in rejections] == [1]


def messages_of_three_batches() -> list[DiceMessage]:
    out = []
    for i in range(12):
        batch = f"batch-{i % 3}"
        sent = f"2025-11-04T17:00:{i:02}.{100000 + i}+05:45"
        if i % 4 == 0:
            out.append(DiceMessage(9842271300 + i, sent, batch, "1",
                                   f"2025-11-04T17:01:{i:02}.000000+05:45"))
        elif i % 4 == 1:
            out.append(DiceMessage(9842271300 + i, sent, batch, "4"))
        else:
            out.append(DiceMessage(9842271300 + i, sent, batch, "SENT"))
    return out


async def pull(engine: AsyncEngine, fake: FakeDiceSms, walk_interval_s: float = 0) -> worker.RunResult:
    source = DiceSmsSource("dice", fake.url, token=fake.token, walk_interval_s=walk_interval_s)
    async with httpx.AsyncClient() as client:
        result = await worker.pull(engine, client, source, "test", FAST)
    assert result is not None
    return result


async def stored(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(messages))).all()
    return {row.message_id: row for row in rows}


async def test_pull_fills_every_message_once_with_its_batch(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=5) as fake:
        fake.messages = messages_of_three_batches()
        result = await pull(engine, fake)
        assert result.error is None
        assert "/api/sms-report/batch-0/" in fake.requests
    rows = await stored(engine)
    assert len(rows) == 12  # seen through batch reports and the listing: still one row each
    for message in fake.messages:
        sent = datetime.fromisoformat(message.sent_at)
        row = rows[dicesms.message_id(f"+977{message.phone}", sent)]
        assert row.bulk_id == message.batch_id
        assert row.status_name == message.status
        assert row.text == "hello"
    assert {r.status for r in rows.values()} == {"DELIVERED", "UNDELIVERABLE", "PENDING"}


async def test_second_pass_updates_and_skips_complete_batches(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=5) as fake:
        fake.messages = messages_of_three_batches()
        await pull(engine, fake)
        for m in fake.messages:
            if m.batch_id != "batch-0" and m.status == "SENT":
                m.status, m.delivered_at = "1", "2025-11-04T17:05:00.000000+05:45"
        for m in fake.messages:  # batch-0 completes too, but our copy of it is still pending
            if m.batch_id == "batch-0" and m.status == "SENT":
                m.status = "4"
        fake.requests.clear()
        await pull(engine, fake)
        assert "/api/sms-report/batch-0/" in fake.requests  # its messages here were pending
        assert all(r.final for r in (await stored(engine)).values())
        fake.requests.clear()
        await pull(engine, fake)
        # every batch is complete and final here, and nothing changed: no batch is read
        assert not [r for r in fake.requests if r.startswith("/api/sms-report/batch")]


async def test_walk_resumes_where_it_stopped(engine: AsyncEngine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicesms_pull, "WALK_PAGES_PER_RUN", 1)
    with FakeDiceSms(page_size=5) as fake:
        fake.messages = messages_of_three_batches()
        await pull(engine, fake)
        async with engine.connect() as conn:
            cursor = await conn.scalar(sa.select(pull_cursors.c.value).where(
                pull_cursors.c.name == "walk_next"))
        assert cursor == f"{fake.url}/api/sms-report/?page=3"  # the newest page, then one
        fake.requests.clear()
        await pull(engine, fake)
        assert "/api/sms-report/?page=3" in fake.requests
        assert "/api/sms-report/?page=2" not in fake.requests


async def test_next_link_to_another_origin_is_not_followed(engine: AsyncEngine) -> None:
    with FakeDiceSms() as elsewhere, FakeDiceSms(page_size=5, next_base=elsewhere.url) as fake:
        fake.messages = messages_of_three_batches()
        result = await pull(engine, fake)
        assert elsewhere.requests == []
    assert "refused to follow" in (result.error or "")


async def test_no_batches_yet_is_not_an_error(engine: AsyncEngine) -> None:
    with FakeDiceSms() as fake:
        result = await pull(engine, fake)
    assert result.error is None and result.reports == 0


async def test_wrong_token_ends_the_run(engine: AsyncEngine) -> None:
    with FakeDiceSms() as fake:
        source = DiceSmsSource("dice", fake.url, token="wrong")
        async with httpx.AsyncClient() as client:
            result = await worker.pull(engine, client, source, "test", FAST)
        assert len(fake.requests) == 1
    assert result is not None and "credentials" in (result.error or "")


def test_seed_metrics_snapshot_counts_per_day() -> None:
    body = (SEEDS / "metrics_snapshot.json").read_bytes()
    assert dicesms.enqueued_per_day(body) == {"20251105": 3}


async def test_provider_counters_are_compared_with_ours(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=50) as fake:
        fake.messages = messages_of_three_batches()  # all sent on 2025-11-04, Nepal time
        fake.snapshot = {"sms:metrics:enqueue:d:20251104": 13, "sms:metrics:enqueue": 13,
                         "sms:metrics:enqueue:op:NCELL:d:20251104": 5}
        result = await pull(engine, fake)
    assert result.detail == {"counts": {"20251104": {"provider": 13, "ours": 12, "missing": 1}}}
    assert REGISTRY.get_sample_value("dlr_provider_count_missing",
                                     {"source": "dice", "day": "20251104"}) == 1


async def test_unmapped_statuses_are_kept_raw_and_counted(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=50) as fake:
        fake.messages = [DiceMessage(9842271353, "2025-11-04T17:00:45.126760+05:45", "b",
                                     "QUEUED_AT_SMSC")]
        result = await pull(engine, fake)
    assert result.detail is not None and result.detail["unmapped_statuses"]["QUEUED_AT_SMSC"] > 0
    [row] = (await stored(engine)).values()
    assert (row.status, row.status_name) == ("PENDING", "QUEUED_AT_SMSC")


async def test_a_finished_walk_waits_for_its_interval(engine: AsyncEngine) -> None:
    with FakeDiceSms(page_size=5) as fake:
        fake.messages = messages_of_three_batches()
        await pull(engine, fake, walk_interval_s=3600)
        assert "/api/sms-report/?page=3" in fake.requests  # walked to the end
        fake.requests.clear()
        await pull(engine, fake, walk_interval_s=3600)
        assert not [r for r in fake.requests if r.startswith("/api/sms-report/?")]  # newest only
        fake.requests.clear()
        await pull(engine, fake, walk_interval_s=0)
        assert "/api/sms-report/?page=2" in fake.requests  # unchanged: the walk stops there
        assert "/api/sms-report/?page=3" not in fake.requests


async def test_phone_filter_accepts_any_spelling(engine: AsyncEngine, database_url: str) -> None:
    from litestar.testing import AsyncTestClient

    from service.app import create_app
    from tests.conftest import READ_TOKEN, make_settings

    with FakeDiceSms(page_size=50) as fake:
        fake.messages = messages_of_three_batches()
        await pull(engine, fake)
    settings = make_settings(sources=make_settings().sources | {
        "dice": DiceSmsSource("dice", "http://127.0.0.1:9", token="t")})
    async with AsyncTestClient(app=create_app(settings, database_url)) as client:
        for spelling in ("+9779842271300", "9779842271300", "9842271300", "+977 984-2271300"):
            page = (await client.get("/v1/messages", params={"to": spelling},
                                     headers={"Authorization": f"Bearer {READ_TOKEN}"})).json()
            assert [m["to"] for m in page["items"]] == ["+9779842271300"], spelling
        too_long = await client.get("/v1/messages", params={"to": "9" * 33},
                                    headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert too_long.status_code == 400  # nor does it reach the number cache
