"""A body is read within bounds as it is parsed: XML and JSON alike stop at a count of
elements or values derived from the report cap and at a nesting depth, so that a hostile
body costs about what a legal one of its size costs; what they refuse is kept."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient, TestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import providers
from service.app import create_app
from service.providers import dicesms, infobip, twilio, vonage
from service.providers.dicesms import DiceSmsSource
from service.providers.dicesms.fake import DiceMessage
from service.providers.twilio import TwilioSource
from service.providers.twilio.fake import message
from service.providers.vonage import VonageSource
from service.providers.vonage.fake import record
from service.tables import inbox
from tests.conftest import WRITE_TOKEN, make_settings
from tests.reports import report

Client = AsyncTestClient  # type: ignore[type-arg]
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}", "Content-Type": "application/json"}
MAX_BODY = 8 * 1024 * 1024  # DLR_MAX_BODY_BYTES by default
XML = "application/xml"


@pytest.fixture
def web(engine: AsyncEngine, database_url: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """The app over HTTP, usable from a synchronous hypothesis test."""
    with TestClient(app=create_app(make_settings(), database_url)) as client:
        yield client


async def push(client: Client, body: bytes, content_type: str = "application/json") -> Any:
    return await client.post("/webhooks/ib", content=body,
                             headers=BASIC | {"Content-Type": content_type})


async def last_kept(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(inbox).order_by(inbox.c.id.desc()).limit(1))).one()


def xml_report(message_id: str) -> str:
    return (f"<result><messageId>{message_id}</messageId><to>41793026727</to><status>"
            "<groupId>3</groupId><groupName>DELIVERED</groupName><id>5</id></status></result>")


# --- XML --------------------------------------------------------------------------------------

async def test_an_xml_body_of_a_million_empty_elements_is_cut_short(
        client: Client, engine: AsyncEngine) -> None:
    body = b"<reportResponse>" + b"<a/>" * ((MAX_BODY - 40) // 4) + b"</reportResponse>"
    answer = await push(client, body, XML)
    assert answer.status_code == 413, answer.text
    assert f"at most {providers.MAX_VALUES}" in answer.json()["detail"]
    kept = await last_kept(engine)
    assert (kept.state, kept.body) == ("rejected", body)


async def test_an_xml_body_nested_a_million_deep_is_cut_short(client: Client,
                                                               engine: AsyncEngine) -> None:
    depth = (MAX_BODY - 40) // 7
    body = b"<results>" + b"<a>" * depth + b"</a>" * depth + b"</results>"
    answer = await push(client, body, XML)
    assert answer.status_code == 400, answer.text
    assert f"deeper than {infobip.MAX_XML_DEPTH}" in answer.json()["detail"]
    assert (await last_kept(engine)).state == "rejected"


async def test_an_xml_element_of_a_million_attributes_is_cut_short(client: Client) -> None:
    attributes = b" ".join(b'a%d=""' % i for i in range(900_000))[:MAX_BODY - 100]
    body = b"<reportResponse><a " + attributes.rpartition(b" ")[0] + b"/></reportResponse>"
    answer = await push(client, body, XML)
    assert answer.status_code in (400, 413), answer.text
    assert "XML" in answer.json()["detail"]


async def test_many_attributes_count_against_the_elements(client: Client) -> None:
    tag = b"<a " + b" ".join(b'a%d=""' % i for i in range(1000)) + b"/>"
    body = b"<reportResponse>" + tag * (providers.MAX_VALUES // 1000 + 1) + b"</reportResponse>"
    answer = await push(client, body, XML)
    assert answer.status_code == 413, answer.text


async def test_a_legal_xml_body_at_the_cap_is_read(client: Client) -> None:
    reports = "".join(xml_report(f"x-{i}") for i in range(providers.MAX_REPORTS))
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<reportResponse xmlns="urn:x"><results>' \
           f"{reports}</results></reportResponse>".encode()
    answer = await push(client, body, XML)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == providers.MAX_REPORTS


# --- JSON: values ----------------------------------------------------------------------------

async def test_a_json_body_of_millions_of_tiny_values_is_cut_short(
        client: Client, engine: AsyncEngine) -> None:
    tiny = b",".join([b"[]"] * ((MAX_BODY - 200) // 3))
    body = b'{"results":[{"messageId":"m","status":{"groupId":3},"x":[' + tiny + b"]}]}"
    answer = await push(client, body)
    assert answer.status_code == 413, answer.text
    assert f"more than {providers.MAX_VALUES} JSON values" in answer.json()["detail"]
    kept = await last_kept(engine)
    assert (kept.state, kept.body) == ("rejected", body)


async def test_commas_and_brackets_inside_strings_are_no_values(client: Client) -> None:
    noisy = "[,{" * 700  # 2100 a report: a quick count of the body is past the bound
    body = json.dumps({"results": [report(f"n-{i}", callbackData=noisy)
                                   for i in range(providers.MAX_REPORTS)]}).encode()
    assert len(body) < MAX_BODY
    answer = await push(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == providers.MAX_REPORTS


# --- JSON: a field nested too deeply rejects its report alone --------------------------------

def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_body(depth: int) -> bytes:
    bad = json.dumps(report("deep-1"))[:-1] + f', "x": {{"y": {deep(depth)}}}}}'
    return f'{{"results": [{json.dumps(report("ok-0"))}, {bad}, ' \
           f'{json.dumps(report("ok-2"))}]}}'.encode()


@pytest.mark.parametrize("depth", [2000, 100_000])
async def test_a_deeply_nested_unknown_field_rejects_its_report_alone(client: Client,
                                                                     depth: int) -> None:
    answer = await push(client, nested_body(depth))
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["accepted"] == 2
    [rejected] = got["rejected"]
    assert rejected["index"] == 1
    assert rejected["reason"] == "$.results[1]: nested too deeply"


def test_every_kind_rejects_a_deeply_nested_item_alone() -> None:
    at = datetime(2026, 11, 1, 10, tzinfo=UTC)
    pages = {
        "twilio": (lambda body: twilio.decode_page(TwilioSource("tw", "http://t"), body),
                   "messages", [message("AC" + "a" * 32, f"SM{i:032x}", "+14155552671",
                                        "delivered", at) for i in range(3)]),
        "vonage": (lambda body: vonage.decode_records(VonageSource("vg", "http://v"), body),
                   "records", [record("k", f"P{i}", "447700900000", "delivered", at, at)
                               for i in range(3)]),
        "dicesms": (lambda body: dicesms.decode_report_page(
            DiceSmsSource("dice", "http://d"), dicesms.StatusTable({}), body),
            "results", [DiceMessage(9841000000 + i, f"2026-11-01T10:00:0{i}.000000+05:45",
                                    "B").report() for i in range(3)]),
    }
    for kind, (decode, field, items) in pages.items():
        listed = [json.dumps(item) for item in items]
        listed[1] = listed[1][:-1] + f', "extra": {deep(5000)}}}'
        reports, rejections = decode(f'{{"{field}": [{", ".join(listed)}]}}'.encode())
        assert len(reports) == 2, kind
        assert [(r.index, r.reason) for r in rejections] == [
            (1, f"$.{field}[1]: nested too deeply")], kind


async def test_a_deeply_nested_registration_is_rejected_alone(client: Client) -> None:
    good = {"source": "ib", "sent_at": "2026-11-01T10:00:00Z", "message_id": "reg-ok"}
    body = f'[{json.dumps(good)}, {{"source": "ib", "x": {deep(3000)}}}]'.encode()
    answer = await client.post("/v1/outbound", content=body, headers=WRITE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["registered"] == 1
    [rejected] = answer.json()["rejected"]
    assert rejected["index"] == 1 and rejected["reason"].startswith("$[1]"), rejected


async def test_a_body_nested_too_deeply_outside_its_reports_is_refused(client: Client) -> None:
    body = f'{{"results": [{json.dumps(report("m"))}], "x": {deep(5000)}}}'.encode()
    answer = await push(client, body)
    assert answer.status_code == 400
    assert "nested too deeply" in answer.json()["detail"]
    for broken in (b'{"results": [[[[[', b'{"results": [1,, ' + deep(3000).encode() + b"]}",
                   b'{"results": [' + deep(3000).encode() + b"]", b'{"results": [' +
                   deep(3000).encode() + b"}}"):
        answer = await push(client, broken)
        assert answer.status_code == 400, broken[:40]
