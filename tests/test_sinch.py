"""Sinch: callbacks built from the Sinch SDK's own models and parsed back by its event
parser, the fake read by the SDK's own client, and pulls of open batches from the fake."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sinch import SinchClient
from sinch.domains.sms.models.v1.response import BatchDeliveryReport, RecipientDeliveryReport
from sinch.domains.sms.sinch_events.v1.sms_sinch_event import SmsSinchEvent
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest, rules, worker
from service.api.webhooks import sinch_sign
from service.app import create_app
from service.config import BasicAuth, TokenAuth, WebhookConfig, load_settings
from service.errors import ConfigError
from service.providers import http, sinch
from service.providers.base import SinchSignatureAuth, StatusTable
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
    table = StatusTable("sn", sinch.STATUSES, {})
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


CREATED = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def test_a_long_text_batch_is_counted_in_parts_where_no_report_says_them() -> None:
    """number_of_message_parts comes only when the sender asked for it: the batch's body
    counts the parts then (GSM 03.38: 161 to 306 characters are two parts); a part count
    a report gives outranks the counted one."""
    source = SinchSource("sn", "http://127.0.0.1:1")
    batch = Batch("01LONG", CREATED, [Recipient("46701234567")], body="x" * 200)
    page = json.dumps({"batches": [batch.resource()], "count": 1, "page": 0,
                       "page_size": 100}).encode()
    listed = ingest.decode(source, "pull", page, "application/json",
                           lambda b: sinch.decode_batches(source, b)).reports
    assert [(r.sms_count, r.registered & rules.COUNTED) for r in listed] == [(2, rules.COUNTED)]
    unsaid = sinch.decode_report(source, json.dumps(recipient_report(batch, Recipient(
        "46701234567", status="Delivered", code=0))).encode())[0][0]
    assert rules.merge(listed[0], unsaid).sms_count == 2
    said = msgspec.structs.replace(unsaid, sms_count=3)
    assert rules.merge(rules.merge(None, said), listed[0]).sms_count == 3
    binary = Batch("01BIN", CREATED, [Recipient("46701234567")], body="AAEC")
    resource = binary.resource() | {"type": "mt_binary", "udh": "050003010201"}
    page = json.dumps({"batches": [resource], "count": 1, "page": 0, "page_size": 100}).encode()
    [report] = sinch.decode_batches(source, page)[0]
    assert (report.text, report.sms_count) == (None, None)


SINCH_SECRET, OLD_SINCH_SECRET = "sinch-callback-secret-0123456789", "old-sinch-secret-0123456789ab"


def sinch_signed(body: bytes, secret: str = SINCH_SECRET, *, age_s: int = 0,
                 nonce: str | None = None) -> dict[str, str]:
    """Headers as Sinch signs a callback; the SDK's own validator must accept them."""
    stamp = str(int(time.time()) - age_s)
    nonce = nonce or uuid.uuid4().hex
    headers = {"X-Sinch-Webhook-Signature": sinch_sign(secret, nonce, stamp, body),
               "X-Sinch-Webhook-Signature-Nonce": nonce,
               "X-Sinch-Webhook-Signature-Timestamp": stamp}
    assert SmsSinchEvent(secret).validate_authentication_header(headers, body)
    return headers


@pytest.fixture
async def signed_client(engine: AsyncEngine, database_url: str) -> AsyncIterator[TestClient]:
    hook = WebhookConfig(sinch_signature=SinchSignatureAuth([OLD_SINCH_SECRET, SINCH_SECRET]))
    settings = make_settings(sources={"sn": SinchSource("sn", "http://127.0.0.1:1",
                                                        webhook=hook)})
    async with AsyncTestClient(app=create_app(settings, database_url)) as test_client:
        yield test_client


async def test_signed_callbacks_verify_as_the_sdk_verifies(signed_client: TestClient) -> None:
    body = sdk_callback()
    assert (await post(signed_client, body, sinch_signed(body))).status_code == 200
    rotated = sdk_callback(status="Dispatched", code=401)  # the older secret, while rotating
    assert (await post(signed_client, rotated, sinch_signed(rotated, OLD_SINCH_SECRET))
            ).status_code == 200
    same = sinch_signed(body)
    assert (await post(signed_client, body, same)).status_code == 200
    again = await post(signed_client, body, same)  # a replay: the same nonce
    assert again.status_code == 200 and again.json()["replayed"] is True
    wrong = [sinch_signed(body, "another-secret-0123456789abcdef"),
             sinch_signed(body, age_s=301),
             sinch_signed(body) | {"X-Sinch-Webhook-Signature-Timestamp": "soon"},
             {k: v for k, v in sinch_signed(body).items() if not k.endswith("Nonce")},
             sinch_signed(body + b" ")]
    for headers in wrong:
        answer = await post(signed_client, body, headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"].startswith('SinchSignature realm="webhook sn"')


def test_a_sinch_secret_must_be_long_and_its_window_bounded(tmp_path: Any) -> None:
    for table, problem in (('secrets = ["short"]', "shorter than 16"),
                           (f'secrets = ["{SINCH_SECRET}"], tolerance_s = 100000000',
                            "outside 1..86400"),
                           ("secrets = []", "give the callback's secret")):
        config = tmp_path / "dlr.toml"
        config.write_text('[[sources]]\nname = "sn"\nkind = "sinch"\n'
                          'base_url = "https://us.sms.api.sinch.com"\n[sources.webhook]\n'
                          f"sinch_signature = {{ {table} }}\n")
        with pytest.raises(ConfigError, match=problem):
            load_settings({"DLR_CONFIG": str(config)})
