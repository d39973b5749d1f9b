"""Sinch: callbacks built from the Sinch SDK's own models and parsed back by its event
parser, the fake read by the SDK's own client, and pulls of open batches from the fake."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sinch import SinchClient
from sinch.domains.sms.models.v1.response import BatchDeliveryReport, RecipientDeliveryReport
from sinch.domains.sms.sinch_events.v1.sms_sinch_event import SmsSinchEvent
from sqlalchemy.ext.asyncio import AsyncEngine

from service import rules, worker
from service.app import create_app
from service.config import BasicAuth, TokenAuth, WebhookConfig
from service.providers import http, sinch
from service.providers.base import StatusTable
from service.providers.sinch import SinchSource
from service.providers.sinch.fake import Batch, FakeSinch, Recipient, batch_report, recipient_report
from tests.conftest import READ_TOKEN, make_settings

TestClient = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"sinch:hook-pw").decode()}
PLAN, TOKEN = "plan0001", "sinch-api-token"
FAST = http.Retry(attempts=2, base_s=0.01)
AT = datetime(2026, 11, 1, 10, 0, 5, tzinfo=UTC)


def source(base_url: str = "http://127.0.0.1:1") -> SinchSource:
    return SinchSource("sn", base_url, service_plan_id=PLAN, api_token=TOKEN,
                       webhook=WebhookConfig(basic=BasicAuth("sinch", "hook-pw")))


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[TestClient]:
    settings = make_settings(sources={"sn": source(), "sn-token": SinchSource(
        "sn-token", "http://127.0.0.1:1", webhook=WebhookConfig(
            token=TokenAuth("sinch-hook-token", header="X-Sinch-Hook")))})
    async with AsyncTestClient(app=create_app(settings, database_url)) as test_client:
        yield test_client


def sdk_callback(status: str = "Delivered", code: int = 0, **extra: Any) -> bytes:
    """A recipient delivery report built with the SDK's model, as Sinch posts it."""
    fields: dict[str, Any] = dict(
        type="recipient_delivery_report_sms", batch_id="01FC66621XXXXX119Z8PMV1QPQ",
        recipient="447700900123", code=code, status=status, at=AT,
        operator_status_at=AT - timedelta(seconds=2), client_reference="order-9",
        number_of_message_parts=2, applied_originator="Acme", operator="23410")
    model = RecipientDeliveryReport(**(fields | extra))
    return model.model_dump_json(exclude_none=True).encode()


async def post(client: TestClient, body: bytes, headers: dict[str, str] = BASIC) -> Any:
    return await client.post("/webhooks/sn", content=body,
                             headers=headers | {"Content-Type": "application/json"})


async def test_sdk_built_callbacks_are_read_back_field_by_field(client: TestClient) -> None:
    pending = sdk_callback("Dispatched", 401, operator_status_at=None)
    assert (await post(client, pending)).status_code == 200
    answer = await post(client, sdk_callback())
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    got = (await client.get("/v1/messages/sn/01FC66621XXXXX119Z8PMV1QPQ:+447700900123",
                            headers=READ)).json()
    assert got["status"] == "DELIVERED" and got["final"] is True
    assert got["provider_status"] == {"id": 0, "name": "Delivered", "description": None,
                                      "action": None}
    assert got["to"] == "+447700900123" and got["bulk_id"] == "01FC66621XXXXX119Z8PMV1QPQ"
    assert got["callback_data"] == "order-9" and got["sms_count"] == 2
    assert got["sender"] == "Acme" and got["operator"] == "23410"
    assert got["done_at"] == "2026-11-01T10:00:03Z"  # operator_status_at
    assert sorted(h["status"] for h in got["history"]) == ["DELIVERED", "PENDING"]


async def test_a_batch_summary_is_kept_and_a_full_report_read(client: TestClient) -> None:
    summary = BatchDeliveryReport(type="delivery_report_sms", batch_id="B1",
                                  statuses=[{"code": 0, "count": 2, "status": "Delivered"}],
                                  total_message_count=2)
    answer = await post(client, summary.model_dump_json(exclude_none=True).encode())
    assert answer.status_code == 200 and answer.json()["accepted"] == 0
    batch = Batch("B2", AT, [Recipient("447700900001", "Delivered", 0),
                             Recipient("447700900002", "Failed", 402)], client_reference="c")
    body = json.dumps(batch_report(batch, full=True)).encode()
    SmsSinchEvent().parse_event(body)  # the SDK reads it as Sinch's own
    answer = await post(client, body)
    assert answer.json()["accepted"] == 2
    got = (await client.get("/v1/messages/sn/B2:+447700900002", headers=READ)).json()
    assert got["status"] == "UNDELIVERABLE" and got["provider_status"]["id"] == 402


async def test_wrong_credentials_get_401_and_unknown_statuses_are_counted(
        client: TestClient) -> None:
    assert (await post(client, sdk_callback(), {})).status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"sinch:nope").decode()}
    assert (await post(client, sdk_callback(), wrong)).status_code == 401
    token = await client.post("/webhooks/sn-token", content=sdk_callback(),
                              headers={"X-Sinch-Hook": "sinch-hook-token"})
    assert token.status_code == 200

    def unmapped() -> float:
        return REGISTRY.get_sample_value("dlr_unmapped_statuses_total",
                                         {"source": "sn", "status": "Teleported"}) or 0.0

    before = unmapped()
    assert (await post(client, sdk_callback("Teleported", 499))).status_code == 200
    assert unmapped() == before + 1
    answer = await post(client, b'{"type": "mo_text", "body": "hi"}')
    assert answer.status_code == 400


def test_the_sdk_reads_the_fake_as_it_reads_sinch() -> None:
    batch = Batch("01BATCH", AT, [Recipient("447700900001", "Delivered", 0, AT, AT, 1),
                                  Recipient("447700900002", "Dispatched", 401, AT)],
                  client_reference="ref-1")
    with FakeSinch(PLAN, TOKEN) as fake:
        fake.add(batch)
        sdk = SinchClient(service_plan_id=PLAN, sms_api_token=TOKEN, sms_region="us")
        sdk.configuration.sms_domain_with_service_plan_id = fake.url
        report = sdk.sms.delivery_reports.get(batch_id="01BATCH", report_type="full")
        assert report.total_message_count == 2
        assert {s.status: s.recipients for s in report.statuses} == {
            "Delivered": ["447700900001"], "Dispatched": ["447700900002"]}
        one = sdk.sms.delivery_reports.get_for_number(batch_id="01BATCH",
                                                      recipient="447700900001")
        assert one.status == "Delivered" and one.client_reference == "ref-1"
        assert one.operator_status_at == AT
        listed = sdk.sms.batches.list(start_date=AT - timedelta(days=1))
        assert [b.id for b in listed.content()] == ["01BATCH"]


async def pulled(engine: AsyncEngine, sn: SinchSource) -> worker.RunResult:
    async with httpx.AsyncClient() as provider_client:
        result = await worker.pull(engine, provider_client, sn, "t", FAST)
    assert result is not None
    return result


async def test_pull_reads_open_batches_and_skips_complete_ones(engine: AsyncEngine,
                                                               client: TestClient) -> None:
    now = datetime.now(UTC)
    batches = [Batch(f"B{i:03d}", now - timedelta(minutes=i), [
        Recipient(f"4477009{i:03d}{j:02d}", "Delivered", 0) for j in range(3)])
        for i in range(150)]
    batches.append(Batch("OLD", now - timedelta(days=3), [Recipient("447700900999")]))
    with FakeSinch(PLAN, TOKEN) as fake:
        fake.add(*batches)
        result = await pulled(engine, source(fake.url))
        assert result.error is None, result.error
        assert result.reports == 450 + 450  # sent (the list), then delivered (the reports)
        first = len(fake.requests)
        # all final now, and no batch created since: one page of the list, nothing else
        result = await pulled(engine, source(fake.url))
        assert result.changed == 0 and len(fake.requests) - first == 1
    got = (await client.get("/v1/messages/sn/B007:+447700900701", headers=READ)).json()
    assert got["status"] == "DELIVERED" and got["bulk_id"] == "B007"
    with FakeSinch(PLAN, TOKEN) as fake:
        wrong = SinchSource("sn", fake.url, service_plan_id=PLAN, api_token="nope")
        result = await pulled(engine, wrong)
    assert result.error is not None and "401" in result.error


@given(st.permutations(list(range(4))), st.lists(st.integers(0, 3), max_size=3))
def test_callbacks_and_batch_reports_merge_the_same_in_any_order(
        order: list[int], again: list[int]) -> None:
    table = StatusTable("sn", sinch.DEFAULT_STATUS_MAP, {})
    batch = Batch("B9", AT, [Recipient("447700900001", "Dispatched", 401, AT, None, 2)])
    reports = [sinch.recipient_report("sn", table, sinch._recipient.decode(
        json.dumps(recipient_report(batch, batch.recipients[0])).encode(), lambda n: None))]
    batch.recipients[0] = Recipient("447700900001", "Delivered", 0, AT, AT, 2)
    reports.append(sinch.recipient_report("sn", table, sinch._recipient.decode(
        json.dumps(recipient_report(batch, batch.recipients[0])).encode(), lambda n: None)))
    full = sinch._batch.decode(json.dumps(batch_report(batch, True)).encode(), lambda n: None)
    reports.append(sinch.batch_recipient_report("sn", table, full, full.statuses[0],
                                                "447700900001"))
    reports.append(reports[0])

    def fold(items: list[Any]) -> Any:
        merged = None
        for r in items:
            merged = rules.merge(merged, r)
        return merged

    merged = fold([reports[i] for i in order] + [reports[i] for i in again])
    assert merged == fold(reports)
    assert merged.status == "DELIVERED" and merged.sms_count == 2
