"""A body is read within bounds as it is parsed: XML and JSON alike stop at a count of
elements or values derived from the report cap and at a nesting depth, so that a hostile
body costs about what a legal one of its size costs; what they refuse is kept."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient, TestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, providers
from service.app import create_app
from service.errors import BadRequest
from service.providers import dicesms, infobip, sinch, twilio, vonage
from service.providers.dicesms import DiceSmsSource
from service.providers.dicesms.fake import DiceMessage
from service.providers.infobip import pull as infobip_pull
from service.providers.sinch import SinchSource
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


@pytest.mark.parametrize("encoding", ["x-bogus", "shift_jis", "utf-7", "rot13", "hex",
                                      "idna", "undefined"])
async def test_an_xml_body_in_an_encoding_expat_cannot_read_is_refused_in_words(
        client: Client, engine: AsyncEngine, encoding: str) -> None:
    """An encoding declared that expat cannot read (unknown, multi-byte, not a text
    encoding) is a bad body like any other: 400 saying so, kept, no traceback logged.
    (Taken for a decoder bug, each was logged with its traceback and kept "for replay after
    a fix".)"""
    body = f'<?xml version="1.0" encoding="{encoding}"?><reportResponse>' \
           f"{xml_report('enc-1')}</reportResponse>".encode()
    answer = await push(client, body, XML)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == "invalid XML: its encoding cannot be read (declare " \
                                      "UTF-8, UTF-16 or a one-byte encoding)"
    assert (await last_kept(engine)).state == "rejected"


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
    assert str(providers.MAX_REPORTS) in answer.json()["detail"]
    kept = await last_kept(engine)
    assert (kept.state, kept.body) == ("rejected", body)


@pytest.mark.parametrize("inside", [b'""' * 4_000_000, b'"' + b'\\"' * 4_000_000 + b'"'])
async def test_millions_of_strings_are_cut_short_and_escaped_quotes_are_none(
        client: Client, inside: bytes) -> None:
    """Strings are counted too (keys and values, twice the values): millions of empty ones
    after a report nested too deep are refused before the report is cut out; a quote after
    a backslash is no string of its own."""
    body = b'{"results":[' + deep(3000).encode() + b",[" + inside + b"]]}"
    answer = await push(client, body)
    if inside.startswith(b'""'):
        assert answer.status_code == 413, answer.text
        assert f"{2 * providers.MAX_VALUES} strings" in answer.json()["detail"]
    else:
        assert answer.status_code == 400, answer.text  # no usable report: both rejected
        assert [r["index"] for r in answer.json()["rejected"]] == [0, 1]


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


async def test_a_lone_surrogate_rejects_its_report_alone(client: Client) -> None:
    """`\\ud83d` without its other half (an emoji cut short, in a callbackData the sender
    truncated) is JSON that msgspec will not read: that report is rejected alone, the
    others merged; outside the reports it refuses the body. (It refused every report of
    the body, pushed or in a pulled page.)"""
    cut = json.dumps(report("cut-1"))[:-1] + ', "callbackData": "order 7 \\ud83d"}'
    whole = json.dumps(report("ok-2", callbackData="\U0001F600"))  # \ud83d\ude00: a pair
    body = f'{{"results": [{json.dumps(report("ok-0"))}, {cut}, {whole}]}}'.encode()
    answer = await push(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
    assert [r["index"] for r in answer.json()["rejected"]] == [1]
    outside = f'{{"results": [{json.dumps(report("ok-3"))}], "x": "\\udc00"}}'.encode()
    assert (await push(client, outside)).status_code == 400


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


# --- JSON: a key given twice -----------------------------------------------------------------

async def test_a_key_given_twice_at_the_top_of_a_body_is_400_and_kept(
        client: Client, engine: AsyncEngine) -> None:
    for body in (b'{"results":[' + json.dumps(report("dup-1")).encode() + b'],"results":[]}',
                 b'{"results":[' + json.dumps(report("dup-2")).encode() + b'], "x": {"a": 1},'
                 b' "results" : []}'):
        answer = await push(client, body)
        assert answer.status_code == 400, answer.text
        assert "duplicate key 'results'" in answer.json()["detail"]
        kept = await last_kept(engine)
        assert (kept.state, kept.body) == ("rejected", body)


async def test_a_key_given_twice_in_a_report_rejects_it_alone(client: Client) -> None:
    twice = json.dumps(report("dup-3"))[:-1] + ', "messageId": "dup-4"}'
    status = json.dumps(report("dup-5")).replace('"id": 5', '"id": 5, "id": 6')
    body = f'{{"results": [{json.dumps(report("fine"))}, {twice}, {status}]}}'.encode()
    answer = await push(client, body)
    assert answer.status_code == 200, answer.text
    assert [(r["index"], r["reason"]) for r in answer.json()["rejected"]] == [
        (1, "$.results[1].messageId: given twice (a duplicate key)"),
        (2, "$.results[2].status.id: given twice (a duplicate key)")]
    assert answer.json()["accepted"] == 1


async def test_a_registration_with_a_key_given_twice_is_rejected_alone(client: Client) -> None:
    body = (b'[{"source":"ib","sent_at":"2026-11-01T10:00:00Z","message_id":"r-1"},'
            b'{"source":"ib","sent_at":"2026-11-01T10:00:00Z","message_id":"r-2",'
            b'"message_id":"r-3"}]')
    answer = await client.post("/v1/outbound", content=body, headers=WRITE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["rejected"] == [
        {"index": 1, "reason": "$[1].message_id: given twice (a duplicate key)"}]


def test_every_kind_refuses_a_key_given_twice_at_the_top() -> None:
    at = datetime(2026, 11, 1, 10, tzinfo=UTC)
    sinch_source = SinchSource("sn", "http://s")
    callback = json.dumps({"type": "recipient_delivery_report_sms", "batch_id": "B",
                           "recipient": "447700900001", "code": 0, "status": "Delivered",
                           "at": "2026-11-01T10:00:00.000Z"})
    bodies = {
        "twilio": (lambda body: twilio.decode_page(TwilioSource("tw", "http://t"), body),
                   json.dumps({"messages": [message("AC" + "a" * 32, "SM1", "+14155552671",
                                                    "delivered", at)]})[:-1]
                   + ', "messages": []}'),
        "vonage": (lambda body: vonage.decode_records(VonageSource("vg", "http://v"), body),
                   '{"records": [], "records": []}'),
        "vonage receipt": (lambda body: vonage.decode_receipt(
            VonageSource("vg", "http://v"), body, "application/json"),
            '{"messageId": "1", "status": "delivered", "status": "failed"}'),
        "dicesms": (lambda body: dicesms.decode_report_page(
            DiceSmsSource("dice", "http://d"), dicesms.StatusTable({}), body),
            '{"results": [], "next": null, "results": []}'),
        "sinch": (lambda body: sinch.decode_report(sinch_source, body),
                  callback[:-1] + ', "status": "Failed"}'),
        "sinch batch": (lambda body: sinch.decode_report(sinch_source, body),
                        '{"type": "delivery_report_sms", "batch_id": "B", "statuses": '
                        '[{"code": 0, "count": 1, "status": "Delivered", "count": 2}]}'),
        "sinch batches": (lambda body: sinch.decode_batches(sinch_source, body),
                          '{"batches": [], "page": 0, "page": 1}'),
    }
    for kind, (decode, body) in bodies.items():
        with pytest.raises(BadRequest) as refused:
            decode(body.encode())
        assert "twice" in refused.value.message or "duplicate key" in refused.value.message, kind


def test_every_kind_refuses_a_key_at_the_top_that_is_not_utf8() -> None:
    """A body's decoder skips a key it does not read, unread; the check for keys given
    twice reads them all: one that is not UTF-8 is invalid JSON (400), not a decoder bug
    (which was logged with its traceback and kept "for replay after a fix")."""
    sinch_source = SinchSource("sn", "http://s")
    callback = {"type": "recipient_delivery_report_sms", "batch_id": "B",
                "recipient": "447700900001", "code": 0, "status": "Delivered",
                "at": "2026-11-01T10:00:00.000Z"}
    decoders = {
        "infobip": (lambda body: infobip.decode_reports("ib", body), {"results": [report("u")]}),
        "sinch": (lambda body: sinch.decode_report(sinch_source, body), callback),
        "sinch batches": (lambda body: sinch.decode_batches(sinch_source, body), {"batches": []}),
        "vonage": (lambda body: vonage.decode_records(VonageSource("vg", "http://v"), body),
                   {"records": []}),
        "dicesms": (lambda body: dicesms.decode_report_page(
            DiceSmsSource("dice", "http://d"), dicesms.StatusTable({}), body), {"results": []}),
    }
    for kind, (decode, good) in decoders.items():
        decode(json.dumps(good).encode())
        with pytest.raises(BadRequest) as refused:
            decode(b'{"k\xff": 1, ' + json.dumps(good).encode()[1:])
        assert "invalid JSON" in refused.value.message, kind


def test_a_colon_written_as_an_escape_hides_no_key_given_twice() -> None:
    """Keys holding colons, some written \\u003a: a key given twice is still found, and
    keys that only look alike are not taken for one."""
    good = report("esc-1")
    twice = json.dumps(good)[:-1] + ', "a\\u003ab": 1, "a:b": 2, "c": "x\\u003a"}'
    apart = json.dumps(good)[:-1] + ', "a\\u003ab": 1, "a:c": 2, "c:\\u003a": "::"}'
    body = f'{{"results": [{twice}, {apart}]}}'.encode()
    reports, rejections = infobip.decode_reports("ib", body)
    assert [r.message_id for r in reports] == ["esc-1"]
    assert [(r.index, r.reason) for r in rejections] == [
        (0, "$.results[0].a:b: given twice (a duplicate key)")]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(extra=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(st.sampled_from("ab:\\\"é"), max_size=3), inner, max_size=3), max_leaves=12),
    data=st.data())
def test_a_key_given_twice_is_found_wherever_it_is(extra: Any, data: st.DataObject) -> None:
    """The same report with an unknown field of any shape: merged as it is; with one key of
    one of its objects given twice (written again at a random place), rejected."""
    good = report("any-1", extra=extra)
    assert infobip.decode_reports("ib", json.dumps({"results": [good]}).encode())[0]
    objects = list(_objects(good))
    target = data.draw(st.sampled_from(objects))
    key = data.draw(st.sampled_from(sorted(target)))
    spaced = data.draw(st.booleans())
    text = _with_repeated(good, target, key, spaced)
    reports, rejections = infobip.decode_reports("ib", b'{"results": [' + text + b"]}")
    assert not reports and "given twice" in rejections[0].reason, text


def _objects(value: Any) -> Any:
    if isinstance(value, dict):
        if value:
            yield value
        for inner in value.values():
            yield from _objects(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _objects(inner)


def _with_repeated(value: Any, target: dict[str, Any], key: str, spaced: bool) -> bytes:
    """`value` as JSON, `target`'s `key` written twice (first with another value)."""
    comma, colon = (", ", ": ") if spaced else (",", ":")
    if isinstance(value, dict):
        members = [f"{json.dumps(k)}{colon}{_with_repeated(v, target, key, spaced).decode()}"
                   for k, v in value.items()]
        if value is target:
            members.insert(0, f"{json.dumps(key)}{colon}0")
        return ("{" + comma.join(members) + "}").encode()
    if isinstance(value, list):
        return ("[" + comma.join(_with_repeated(v, target, key, spaced).decode()
                                 for v in value) + "]").encode()
    return json.dumps(value).encode()


async def test_an_xml_element_given_twice_in_a_report_rejects_it_alone(client: Client) -> None:
    twice = xml_report("x-2").replace("<to>", "<messageId>x-3</messageId><to>")
    nested = xml_report("x-4").replace("<id>5</id>", "<id>5</id><id>6</id>")
    body = f"<reportResponse><results>{xml_report('x-1')}{twice}{nested}</results>" \
           "</reportResponse>"
    answer = await push(client, body.encode(), XML)
    assert answer.status_code == 200, answer.text
    assert [(r["index"], r["reason"]) for r in answer.json()["rejected"]] == [
        (1, "results[1].messageId: given twice (a duplicate element)"),
        (2, "results[2].status.id: given twice (a duplicate element)")]


# --- any shape, depth and size: 200, 400 or 413, and kept -------------------------------------

@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON push of a random shape: reports good and bad, values many or nested, keys
    repeated, random JSON, and any of them cut short or with junk in it."""
    count = draw(st.sampled_from([0, 1, 3, 100, providers.MAX_REPORTS, providers.MAX_REPORTS + 1]))
    depth = draw(st.sampled_from([1, 10, 999, 1001, 5000, 200_000]))
    many = draw(st.sampled_from([1, 1000, providers.MAX_VALUES, 2_000_000]))
    filler = draw(st.sampled_from(["[]", "0", '""', "{}", '{"a":1}', '"x,[{:"']))
    odd = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                st.text(max_size=4), inner, max_size=4), max_leaves=20))
    shape = draw(st.sampled_from(["reports", "deep field", "deep report", "many", "odd",
                                  "duplicate top", "duplicate inside", "bare"]))
    reports = [json.dumps(report(f"j-{i}")) for i in range(count)]
    if shape == "deep field" and reports:
        at = draw(st.integers(0, len(reports) - 1))
        reports[at] = reports[at][:-1] + f', "x": {deep(depth)}}}'
    elif shape == "deep report":
        reports.append(deep(depth))
    elif shape == "many":
        reports.append("[" + ",".join([filler] * many) + "]")
    elif shape == "odd":
        reports.append(json.dumps(odd))
    elif shape == "duplicate inside" and reports:
        reports[0] = reports[0][:-1] + ', "messageId": "again"}'
    listed = ",".join(reports)
    body = {"duplicate top": f'{{"results": [{listed}], "results": []}}',
            "bare": f"[{listed}]"}.get(shape, f'{{"results": [{listed}]}}').encode()
    cut = draw(st.sampled_from([None, None, None, 1, 2, 7]))
    if cut is not None and body:
        body = body[:len(body) * cut // 8] if cut < 7 else body.replace(b'"', b"'", 1)
    return body[:MAX_BODY]


@st.composite
def xml_bodies(draw: st.DrawFn) -> bytes:
    """An XML push of a random shape: reports, elements many, nested or attributed, DTDs
    and entities, cut short."""
    count = draw(st.sampled_from([0, 1, 3, 100, providers.MAX_REPORTS, providers.MAX_REPORTS + 1]))
    depth = draw(st.sampled_from([1, 10, 17, 1000, 1_000_000]))
    many = draw(st.sampled_from([1, 1000, providers.MAX_VALUES + 1, 2_000_000]))
    shape = draw(st.sampled_from(["reports", "deep", "many", "attributes", "dtd", "entity",
                                  "text", "twice"]))
    reports = [xml_report(f"x-{i}") for i in range(count)]
    inside = "".join(reports)
    if shape == "deep":
        inside += "<a>" * depth + "</a>" * depth
    elif shape == "many":
        inside += "<a/>" * many
    elif shape == "attributes":
        inside += "<a " + " ".join(f'a{i}=""' for i in range(min(many, 800_000))) + "/>"
    elif shape == "text":
        inside += "<a>" + "&amp;<![CDATA[<x>]]>" * min(many, 300_000) + "</a>"
    elif shape == "twice" and reports:
        inside = reports[0].replace("<to>", "<to>1</to><to>") + inside
    prolog = {"dtd": '<!DOCTYPE r [<!ELEMENT r ANY>]>',
              "entity": '<!DOCTYPE r [<!ENTITY e "e">]>'}.get(shape, "")
    body = f'<?xml version="1.0"?>{prolog}<reportResponse><results>{inside}</results>' \
           "</reportResponse>"
    cut = draw(st.sampled_from([None, None, 1, 4]))
    if cut is not None:
        body = body[:len(body) * cut // 8]
    return body.encode()[:MAX_BODY]


BODIES = settings(max_examples=40, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow, HealthCheck.data_too_large])


@BODIES
@given(body=json_bodies())
def test_any_json_push_is_answered_and_kept(web: TestClient, database_url: str,  # type: ignore[type-arg]
                                            body: bytes) -> None:
    answered_and_kept(web, database_url, body, "application/json")


@BODIES
@given(body=xml_bodies())
def test_any_xml_push_is_answered_and_kept(web: TestClient, database_url: str,  # type: ignore[type-arg]
                                           body: bytes) -> None:
    answered_and_kept(web, database_url, body, XML)


def answered_and_kept(web: TestClient, url: str, body: bytes,  # type: ignore[type-arg]
                      content_type: str) -> None:
    answer = web.post("/webhooks/ib", content=body, headers=BASIC | {"Content-Type": content_type})
    assert answer.status_code in (200, 400, 413), answer.text[:300]
    said = answer.json()
    assert "kept for replay after a fix" not in json.dumps(said), said  # no decoder bug
    assert _last_body(url) == body


def _last_body(url: str) -> bytes:
    async def query() -> bytes:
        engine = db.create_engine(url)
        try:
            async with engine.connect() as conn:
                return bytes(await conn.scalar(sa.select(inbox.c.body).order_by(
                    inbox.c.id.desc()).limit(1)))
        finally:
            await engine.dispose()

    return asyncio.run(query())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.sampled_from('a"\\:,[]{} é'),
                                                            max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(st.sampled_from('a"\\:,[]{}'), max_size=3), inner, max_size=4),
    max_leaves=30), spaced=st.booleans())
def test_the_splitter_finds_what_a_parser_finds(value: Any, spaced: bool) -> None:
    """An array or object cut into its members without recursion gives the members a parser
    gives, whatever the strings and spaces in them."""
    text = json.dumps(value, indent=1 if spaced else None, ensure_ascii=spaced).encode()
    if not isinstance(value, list | dict):
        with pytest.raises(ValueError):
            providers._split(text, 0)
        return
    members, end = providers._split(text, 0)
    assert end == len(text)
    if isinstance(value, list):
        assert [json.loads(text[first:last]) for first, _, last in members] == value
    else:
        assert {json.loads(text[first:colon]): json.loads(text[colon + 1:last])
                for first, colon, last in members} == value


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.binary(max_size=60) | st.text(st.sampled_from('"\\[]{},: a1'), max_size=40)
       .map(str.encode))
def test_the_splitter_fails_on_anything_only_with_value_error(text: bytes) -> None:
    try:
        _, end = providers._split(text, 0)
    except ValueError:
        return
    assert 0 < end <= len(text)


def test_a_sinch_batch_report_of_invalid_utf8_is_a_bad_request() -> None:
    body = b'{"type": "delivery_report_sms", "batch_id": "B", "statuses": [{"code": 0, ' \
           b'"count": 1, "status": "Deliv\xff"}]}'
    with pytest.raises(BadRequest) as refused:
        sinch.decode_report(SinchSource("sn", "http://s"), body)
    assert "not a Sinch batch delivery report" in refused.value.message


def test_a_dicesms_listing_page_with_a_deep_item_still_gives_its_next_link() -> None:
    items = [json.dumps(DiceMessage(9841000000, "2026-11-01T10:00:00.000000+05:45",
                                    "B").report()), deep(5000)]
    body = f'{{"count": 2, "next": "https://d/api/sms-report/?page=2", "results": ' \
           f'[{", ".join(items)}]}}'.encode()
    reports, rejections = dicesms.decode_report_page(
        DiceSmsSource("dice", "http://d"), dicesms.StatusTable({}), body)
    assert (len(reports), [r.index for r in rejections]) == (1, [1])
    assert dicesms.next_url(body) == "https://d/api/sms-report/?page=2"


def test_the_next_page_of_a_page_holding_a_too_deep_item_is_still_read() -> None:
    """A pulled page whose one item nests too deeply is merged but for that item: the pass
    must still follow the page's link to the next one."""
    bad = deep(5000)
    twilio_page = f'{{"messages": [{bad}], "next_page_uri": "/2010-04-01/next"}}'.encode()
    vonage_page = f'{{"records": [{bad}], "request_status": "TRUNCATED", ' \
                  f'"_links": {{"next": {{"href": "/v2/reports/records?cursor=2"}}}}}}'.encode()
    logs_page = f'{{"results": [{bad}], "cursor": {{"nextCursor": "Mg=="}}}}'.encode()
    assert twilio.next_page(twilio_page) == "/2010-04-01/next"
    assert vonage.next_href(vonage_page) == "/v2/reports/records?cursor=2"
    assert infobip_pull.next_cursor(logs_page) == "Mg=="
