"""Infobip as it is today: v3 reports and logs, built and read by Infobip's own SDK; the v1,
v3 and XML shapes of one report giving one merged row; fields no decoder reads counted."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infobip_api_client import ApiClient, Configuration
from infobip_api_client.api.sms_api import SmsApi
from infobip_api_client.models import (
    MessageErrorGroup,
    MessageGeneralStatus,
    MessagePrice,
    Platform,
    SmsDeliveryReport,
    SmsDeliveryResult,
    SmsMessageError,
    SmsMessageStatus,
)
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics, providers, rules, worker
from service.config import InfobipSource
from service.providers import http, infobip
from service.providers.infobip import pull as infobip_pull
from service.providers.infobip.fake import FakeInfobip, as_v1, as_v3
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN
from tests.reports import report

Client = AsyncTestClient  # type: ignore[type-arg]
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
FAST = http.Retry(attempts=2, base_s=0.01)
SENT = datetime(2026, 11, 1, 10, 0, 0, 123000, tzinfo=UTC)


def sdk_report(i: int, parts: int = 2, **changes: Any) -> SmsDeliveryReport:
    """A delivered two-part v3 report with every field the SDK's model has."""
    fields: dict[str, Any] = dict(
        bulk_id="BULK-1", message_id=f"MSG-{i}", to="41793026727", sender="InfoSMS",
        sent_at=SENT, done_at=SENT + timedelta(seconds=30), message_count=parts,
        mcc_mnc="22801", callback_data=f"order-{i}",
        price=MessagePrice(price_per_message=0.0055, currency="EUR"),
        status=SmsMessageStatus(group_id=3, group_name=MessageGeneralStatus.DELIVERED, id=5,
                                name="DELIVERED_TO_HANDSET",
                                description="Message delivered to handset", action="none"),
        error=SmsMessageError(group_id=1, group_name=MessageErrorGroup.HANDSET_ERRORS, id=27,
                              name="EC_ABSENT_SUBSCRIBER", description="Absent subscriber",
                              permanent=False),
        platform=Platform(entity_id="promotional-traffic", application_id="marketing"),
        campaign_reference_id="summersale")
    return SmsDeliveryReport(**(fields | changes))


def sdk_json(model: Any) -> dict[str, Any]:
    """What Infobip sends for an SDK model. The SDK's own to_json() fails on any time
    (json.dumps of a datetime), and its sanitiser writes times as isoformat(): here they
    are written as Infobip writes them (milliseconds, "+0000")."""
    def infobip_times(value: Any) -> Any:
        if isinstance(value, datetime):
            return infobip.infobip_time(value)
        if isinstance(value, dict):
            return {k: infobip_times(v) for k, v in value.items()}
        if isinstance(value, list):
            return [infobip_times(v) for v in value]
        return value

    return infobip_times(ApiClient().sanitize_for_serialization(model))  # type: ignore[no-any-return]


async def push(client: Client, payload: bytes, content_type: str = "application/json") -> Any:
    return await client.post("/webhooks/ib", content=payload,
                             headers=BASIC | {"Content-Type": content_type})


async def test_sdk_built_v3_pushes_bill_every_part_and_keep_every_field(client: Client) -> None:
    result = SmsDeliveryResult(results=[sdk_report(i) for i in range(12)])
    answer = await push(client, json.dumps(sdk_json(result)).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 12

    message = (await client.get("/v1/messages/ib/MSG-3", headers=READ)).json()
    assert message["sender"] == "InfoSMS"
    assert message["sms_count"] == 2
    assert message["price"] == {"amount": "0.0055", "currency": "EUR", "origin": "reported",
                                "rate": None}
    assert message["entity_id"] == "promotional-traffic"
    assert message["application_id"] == "marketing"
    assert message["campaign_reference_id"] == "summersale"
    assert message["provider_status"]["action"] == "none"
    assert message["error"]["description"] == "Absent subscriber"
    assert message["callback_data"] == "order-3"
    assert message["mcc_mnc"] == "22801"
    assert message["to"] == "+41793026727"
    assert message["sent_at"] == "2026-11-01T10:00:00.123000Z"
    billed = (await client.get("/v1/billing/summary", headers=READ, params={
        "from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z",
        "group_by": "source"})).json()["rows"]
    assert billed == [{"source": "ib", "currency": "EUR", "messages": 12, "parts": 24,
                       "amount": "0.132", "unpriced": 0}]


# One report, in each shape Infobip sends it.
def v1_json(wire: dict[str, Any]) -> tuple[bytes, str]:
    return json.dumps({"results": [as_v1(wire)]}).encode(), "application/json"


def v3_json(wire: dict[str, Any]) -> tuple[bytes, str]:
    return json.dumps({"results": [as_v3(wire)]}).encode(), "application/json"


def _xml(name: str, value: Any) -> str:
    if isinstance(value, dict):
        return f"<{name}>" + "".join(_xml(k, v) for k, v in value.items()) + f"</{name}>"
    if value is None:
        return f"<{name}/>"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"<{name}>{escape(text)}</{name}>"


def v1_xml(wire: dict[str, Any]) -> tuple[bytes, str]:
    """As Infobip's XML report responses are laid out: one `results` element per report."""
    return f"<SMSReportResponse>{_xml('results', as_v1(wire))}</SMSReportResponse>".encode(), \
        "application/xml"


def v3_xml(wire: dict[str, Any]) -> tuple[bytes, str]:
    """The same with a `result` element per report inside one `results`."""
    reports = _xml("result", as_v3(wire))
    return f"<reportResponse><results>{reports}</results></reportResponse>".encode(), "text/xml"


SHAPES = [v1_json, v3_json, v1_xml, v3_xml]


def decoded(wire: dict[str, Any], shape: Any) -> rules.Report:
    """`wire` sent in `shape`; without campaignReferenceId, which v1 does not have."""
    body, content_type = shape({k: v for k, v in wire.items() if k != "campaignReferenceId"})
    [found], rejected = infobip.decode_reports("ib", body, content_type)
    assert rejected == []
    return found


def test_each_shape_gives_the_same_report() -> None:
    wire = sdk_json(sdk_report(1)) | {"callbackData": "a & <b>"}
    reports = [decoded(wire, shape) for shape in SHAPES]
    assert all(r == reports[0] for r in reports)
    assert reports[0].sms_count == 2 and reports[0].sender == "InfoSMS"
    assert reports[0].entity_id == "promotional-traffic"
    assert reports[0].error_description == "Absent subscriber"


@st.composite
def states(draw: st.DrawFn) -> dict[str, Any]:
    """One observation of message MSG-1 in the SDK's terms, then as Infobip's JSON."""
    group = draw(st.sampled_from(list(MessageGeneralStatus)[1:]))
    ids = {"PENDING": 1, "UNDELIVERABLE": 2, "DELIVERED": 3, "EXPIRED": 4, "REJECTED": 5}
    done = SENT + timedelta(seconds=draw(st.integers(0, 600)))
    optional = {"sender": st.sampled_from(["InfoSMS", "Shop"]), "message_count": st.integers(1, 3),
                "callback_data": st.sampled_from(["x", "y"])}
    given_now = {k: draw(s) for k, s in optional.items() if draw(st.booleans())}
    return sdk_json(sdk_report(
        1, done_at=done, status=SmsMessageStatus(
            group_id=ids[group.value], group_name=group, id=draw(st.integers(1, 30)),
            name=f"S{draw(st.integers(0, 3))}", action=draw(st.sampled_from([None, "retry"]))),
        **{"message_count": None, "sender": None, "callback_data": None,
           "campaign_reference_id": None} | given_now))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(states(), st.sampled_from(SHAPES)), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_shapes_mixed_in_one_history_merge_as_one(seen: list[tuple[dict[str, Any], Any]],
                                                  rnd: Any) -> None:
    """Whatever shape each observation came in, and in whatever order, the merged message is
    the one its observations give in v3 JSON."""
    as_v3_json = rules.merge_all(decoded(wire, v3_json) for wire, _ in seen)
    shuffled = list(seen)
    rnd.shuffle(shuffled)
    assert rules.merge_all(decoded(wire, shape) for wire, shape in shuffled) == as_v3_json


def unknown_count(source: str, field: str) -> float:
    return REGISTRY.get_sample_value("dlr_unknown_fields_total",
                                     {"source": source, "field": field}) or 0.0


async def test_fields_no_decoder_reads_are_counted_by_name(client: Client) -> None:
    wire = sdk_json(sdk_report(1)) | {"deliveryChannel": "SMS"}
    wire["status"]["reason"] = "carrier"
    before = unknown_count("ib", "deliveryChannel"), unknown_count("ib", "status.reason")
    answer = await push(client, json.dumps({"results": [wire, wire]}).encode())
    assert answer.json()["accepted"] == 2
    assert unknown_count("ib", "deliveryChannel") == before[0] + 2
    assert unknown_count("ib", "status.reason") == before[1] + 2
    message = (await client.get("/v1/messages/ib/MSG-1", headers=READ)).json()
    assert message["sms_count"] == 2  # the known fields still read


def test_invented_field_names_cannot_grow_the_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "UNKNOWN_FIELD_SLOTS", metrics.LabelSlots(
        metrics.UNKNOWN_FIELDS, metrics.UNKNOWN_FIELDS_PER_SOURCE, metrics.FIELD_LABEL_CHARS))
    for i in range(200):
        body = json.dumps({"results": [report(f"m{i}") | {f"made-up-{i}" * 20: 1}]}).encode()
        assert infobip.decode_reports("flood", body)[1] == []
    labels = {s.labels["field"] for m in REGISTRY.collect() if m.name == "dlr_unknown_fields"
              for s in m.samples if s.labels.get("source") == "flood"}
    assert len(labels) <= metrics.UNKNOWN_FIELDS_PER_SOURCE + 1 and "other" in labels
    assert all(len(label) <= metrics.FIELD_LABEL_CHARS for label in labels)


async def test_an_xml_push_is_merged_and_hostile_xml_refused_and_kept(
        client: Client, engine: AsyncEngine) -> None:
    body, content_type = v1_xml(sdk_json(sdk_report(7)))
    answer = await push(client, body, content_type)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert (await client.get("/v1/messages/ib/MSG-7", headers=READ)).json()["sms_count"] == 2

    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><reportResponse>&lol2;</reportResponse>')
    external = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b'<reportResponse><results><messageId>&x;</messageId></results></reportResponse>')
    for hostile in (laughs, external, b"<reportResponse><results>", b"<other/>"):
        answer = await push(client, hostile, "application/xml")
        assert answer.status_code == 400, answer.text
    inbox = (await client.get("/v1/inbox", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}"}, params={"state": "rejected"})).json()
    assert len(inbox["items"]) >= 4


@pytest.fixture
def fake() -> Iterator[FakeInfobip]:
    with FakeInfobip() as server:
        yield server


def sdk_client(fake: FakeInfobip) -> SmsApi:
    return SmsApi(ApiClient(Configuration(host=fake.url, api_key=fake.api_key)))


def test_the_sdk_drains_the_fake_reports_once(fake: FakeInfobip) -> None:
    fake.queue(*[sdk_json(sdk_report(i)) for i in range(3)], as_v1(sdk_json(sdk_report(3))))
    api = sdk_client(fake)
    first = api.get_outbound_sms_message_delivery_reports(limit=2)
    second = api.get_outbound_sms_message_delivery_reports(limit=1000)
    assert [r.message_id for r in first.results + second.results] == [f"MSG-{i}" for i in range(4)]
    assert all(r.message_count == 2 and r.sender == "InfoSMS" for r in second.results)
    assert second.results[-1].platform.entity_id == "promotional-traffic"
    assert not api.get_outbound_sms_message_delivery_reports(limit=1000).results
    assert fake.requests[0] == "/sms/3/reports?limit=2"


def test_the_sdk_pages_the_fake_logs_with_its_cursor(fake: FakeInfobip) -> None:
    for i in range(5):
        fake.logs[f"MSG-{i}"] = sdk_json(sdk_report(i)) | {"text": f"hello {i}"}
    api = sdk_client(fake)
    wanted = ["MSG-0", "MSG-2", "MSG-3", "MSG-4"]
    page = api.get_outbound_sms_message_logs(message_id=wanted, limit=3, use_cursor=True)
    rest = api.get_outbound_sms_message_logs(message_id=wanted, limit=3, use_cursor=True,
                                             cursor=page.cursor.next_cursor)
    logs = page.results + rest.results
    assert [log.message_id for log in logs] == wanted and rest.cursor.next_cursor is None
    assert logs[0].destination == "41793026727" and logs[0].message_count == 2
    assert logs[0].content.actual_instance.text == "hello 0"
    since = api.get_outbound_sms_message_logs(sent_since=SENT - timedelta(seconds=1), limit=1000)
    assert len(since.results) == 5


async def run_pull(engine: AsyncEngine, fake: FakeInfobip, version: int = 3) -> Any:
    source = InfobipSource("ib", fake.url, api_key=fake.api_key, api_version=version)  # type: ignore[arg-type]
    async with httpx.AsyncClient() as client:
        result = await worker.pull(engine, client, source, "test", FAST)
    assert result is not None and result.error is None, result
    return result


async def test_a_v3_pull_stores_what_v3_reports_say(client: Client, engine: AsyncEngine,
                                                    fake: FakeInfobip) -> None:
    fake.queue(*[sdk_json(sdk_report(i)) for i in range(3)])
    await run_pull(engine, fake)
    assert fake.requests[0] == "/sms/3/reports?limit=1000"
    message = (await client.get("/v1/messages/ib/MSG-2", headers=READ)).json()
    assert (message["sender"], message["sms_count"], message["campaign_reference_id"]) == (
        "InfoSMS", 2, "summersale")


def registration(i: int, sent: datetime, **extra: Any) -> dict[str, Any]:
    return {"source": "ib", "message_id": f"open-{i:05d}-{'x' * 20}", "sent_at": sent.isoformat(),
            "to": "41793026727"} | extra


async def test_gap_look_ups_ask_for_many_messages_at_once(
        client: Client, engine: AsyncEngine, fake: FakeInfobip) -> None:
    sent = datetime.now(UTC) - timedelta(hours=1)
    items = [registration(i, sent) for i in range(300)]
    answer = await client.post("/v1/outbound", json=items,
                               headers=WRITE)
    assert answer.json()["registered"] == 300
    for item in items[:250]:
        fake.logs[item["message_id"]] = as_v3(report(item["message_id"], sentAt=infobip.infobip_time(sent)))
    await run_pull(engine, fake)
    look_ups = [r for r in fake.requests if r.startswith("/sms/3/logs")]
    assert len(look_ups) == len(infobip_pull.comma_lists(sorted(i["message_id"] for i in items)))
    assert len(look_ups) <= 6
    gaps = (await client.get("/v1/gaps", headers=READ, params={"older_than": "1m",
                                                                 "limit": 1000})).json()
    assert len(gaps["items"]) == 50


async def test_many_open_messages_are_read_from_their_time_window(
        client: Client, engine: AsyncEngine, fake: FakeInfobip,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infobip_pull, "ID_REQUESTS", 1)
    monkeypatch.setattr(infobip_pull, "LOGS_LIMIT", 40)
    sent = datetime.now(UTC) - timedelta(hours=1)
    items = [registration(i, sent) for i in range(120)]
    await client.post("/v1/outbound", json=items, headers=WRITE)
    for item in items:
        fake.logs[item["message_id"]] = as_v3(report(item["message_id"], sentAt=infobip.infobip_time(sent)))
    fake.logs["too-old"] = report("too-old", sentAt=infobip.infobip_time(sent - timedelta(days=1)))
    await run_pull(engine, fake)
    look_ups = [r for r in fake.requests if r.startswith("/sms/3/logs")]
    assert len(look_ups) == 3 and all("sentSince=" in r for r in look_ups)
    assert "cursor=" in look_ups[-1]
    gaps = (await client.get("/v1/gaps", headers=READ, params={"older_than": "1m"})).json()
    assert gaps["items"] == []


@pytest.mark.parametrize("ids", [[], ["a"], ["a", "b,c", "d"], [f"id-{i:04d}" for i in 1000 * [0]],
                                 [f"{i:0100d}" for i in range(200)]])
def test_comma_lists_stay_within_the_limit(ids: list[str]) -> None:
    lists = infobip_pull.comma_lists(ids)
    assert all(len(one) <= infobip_pull.IDS_CHARS for one in lists)
    assert [i for one in lists for i in one.split(",")] == [i for i in ids if "," not in i]


def test_a_price_keeps_its_digits_through_the_unknown_field_path() -> None:
    wire = report("m1", price={"pricePerMessage": Decimal("0.0123456789"), "currency": "EUR"})
    body = json.dumps({"results": [wire | {"later": 1}]}, default=str).replace(
        '"0.0123456789"', "0.0123456789").encode()
    [found], _ = infobip.decode_reports("ib", body)
    assert found.price_amount == Decimal("0.0123456789")


async def test_registrations_without_message_id_are_looked_up_by_bulk_id(
        client: Client, engine: AsyncEngine, fake: FakeInfobip) -> None:
    sent = datetime.now(UTC) - timedelta(hours=1)
    await client.post("/v1/outbound", headers=WRITE, json=[
        {"source": "ib", "callback_data": "order-9", "bulk_id": "BULK-9",
         "sent_at": sent.isoformat()}])
    fake.logs["in-bulk"] = report("in-bulk", bulkId="BULK-9", sentAt=infobip.infobip_time(sent))
    fake.logs["elsewhere"] = report("elsewhere", bulkId="BULK-8")
    await run_pull(engine, fake)
    assert "/sms/3/logs?bulkId=BULK-9&limit=1000&useCursor=true" in fake.requests
    assert (await client.get("/v1/messages/ib/in-bulk", headers=READ)).status_code == 200
    assert (await client.get("/v1/messages/ib/elsewhere", headers=READ)).status_code == 404


async def test_an_xml_body_past_the_report_limit_is_refused_and_kept(client: Client) -> None:
    one = _xml("results", as_v1(sdk_json(sdk_report(1))))
    body = f"<SMSReportResponse>{one * (providers.MAX_REPORTS + 1)}</SMSReportResponse>".encode()
    answer = await push(client, body, "application/xml")
    assert answer.status_code == 413, answer.text
    inbox = (await client.get("/v1/inbox", headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}"}, params={"state": "rejected"})).json()
    assert inbox["items"]
