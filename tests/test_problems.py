"""Every error answer is an RFC 9457 problem (application/problem+json: type, title, status,
detail, and extension members), whoever answers it: a handler, Litestar's routing and
validation, or the HTTP layer; and every 401 says how to authenticate."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import ingest
from service.app import create_app
from service.config import DiceSmsSource, InfobipSource
from service.providers import judge_all
from service.providers.sinch import SinchSource
from service.providers.twilio import TwilioSource
from service.providers.vonage import VonageSource
from tests.conftest import READ_TOKEN, WRITE_TOKEN, free_port, make_settings
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """The answer's problem document, checked for the members every problem has."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document = json.loads(response.content)
    assert document["type"] == "about:blank"
    assert document["title"] == HTTPStatus(status).phrase
    assert document["status"] == status
    assert isinstance(document["detail"], str) and document["detail"]
    assert response.headers["x-request-id"]
    return dict(document)


async def test_an_unknown_path_and_method_are_problems(client: Client) -> None:
    problem_of(await client.get("/nothing/here"), 404)
    refused = await client.delete("/health/live")
    assert problem_of(refused, 405)["detail"].startswith("this path does not take this method")
    assert "GET" in refused.headers["allow"]


async def test_a_parameter_litestar_refuses_is_a_problem_naming_it(client: Client) -> None:
    document = problem_of(await client.get("/v1/changes?after=-1", headers=READ), 400)
    assert document["errors"] == [{"message": "Expected `int` >= 0", "key": "after",
                                   "source": "query"}]


async def test_a_handler_refusal_is_a_problem(client: Client) -> None:
    document = problem_of(await client.get("/v1/billing/summary", headers=READ, params={
        "from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}), 400)
    assert document["detail"] == "to: must be after from"
    assert "error" not in document


async def test_a_webhook_400_lists_its_rejected_reports_as_members(client: Client) -> None:
    answer = await client.post("/webhooks/ib", headers=BASIC,
                               content=body(report("bad", smsCount="two")))
    document = problem_of(answer, 400)
    assert document["rejected_count"] == 1
    assert document["rejected"][0]["index"] == 0
    assert "smsCount" in document["rejected"][0]["reason"]


async def test_an_outbound_400_lists_its_rejected_items_as_members(client: Client) -> None:
    answer = await client.post("/v1/outbound", headers=WRITE,
                               json=[{"source": "nope", "sent_at": "2026-11-01T00:00:00Z",
                                      "message_id": "m"}])
    document = problem_of(answer, 400)
    assert document["rejected_count"] == 1
    assert document["rejected"][0]["reason"].startswith("$[0].source")


async def test_too_many_reports_and_too_big_a_body_are_413_problems(engine: AsyncEngine,
                                                                     database_url: str) -> None:
    app = create_app(make_settings(max_body_bytes=4096), database_url)
    async with AsyncTestClient(app=app) as small:
        over = await small.post("/webhooks/ib", headers=BASIC, content=b" " * 5000)
        assert "DLR_MAX_BODY_BYTES" in problem_of(over, 413)["detail"]
    async with AsyncTestClient(app=create_app(make_settings(), database_url)) as client:
        many = body(*[{"messageId": f"m{i}"} for i in range(2501)])
        assert "2500" in problem_of(await client.post("/webhooks/ib", headers=BASIC,
                                                      content=many), 413)["detail"]


@pytest.mark.parametrize(("path", "headers", "challenge"), [
    ("/v1/messages", {}, 'Bearer realm="dlr-reconciler"'),
    ("/v1/messages", {"Authorization": "Bearer wrong"},
     'Bearer realm="dlr-reconciler", error="invalid_token"'),
    ("/v1/messages", BASIC, 'Bearer realm="dlr-reconciler", error="invalid_token"'),
])
async def test_an_api_401_carries_a_bearer_challenge(client: Client, path: str,
                                                    headers: dict[str, str],
                                                    challenge: str) -> None:
    answer = await client.get(path, headers=headers)
    problem_of(answer, 401)
    assert answer.headers["www-authenticate"] == challenge


async def test_a_missing_scope_is_a_403_saying_which(client: Client) -> None:
    answer = await client.get("/v1/runs", headers=READ)
    problem_of(answer, 403)
    assert answer.headers["www-authenticate"] == (
        'Bearer realm="dlr-reconciler", error="insufficient_scope", scope="admin"')
    problem_of(await client.post("/v1/outbound", headers=READ, json=[]), 403)


@pytest.mark.parametrize(("source", "challenge"), [
    ("ib", 'Basic realm="webhook ib", charset="UTF-8"'),
    ("ib-token", 'Token realm="webhook ib-token", header="X-Webhook-Token"'),
    ("ib-signed", 'StandardWebhooks realm="webhook ib-signed", '
                  'headers="webhook-id webhook-timestamp webhook-signature"'),
])
async def test_a_webhook_401_says_which_credentials_it_takes(client: Client, source: str,
                                                            challenge: str) -> None:
    answer = await client.post(f"/webhooks/{source}", content=body(report("m1")),
                               headers={"Authorization": "Bearer nothing-here"})
    problem_of(answer, 401)
    assert answer.headers["www-authenticate"] == challenge


async def test_an_unavailable_database_is_a_503_problem_with_retry_after(engine: AsyncEngine,
                                                                          ) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(make_settings(db_timeout_s=1.0), url)
    async with AsyncTestClient(app=app) as client:
        for answer in (await client.post("/webhooks/ib", headers=BASIC, content=body(report("m"))),
                       await client.get("/v1/messages", headers=READ),
                       await client.get("/health/ready")):
            document = problem_of(answer, 503)
            assert document["retry_after"] == int(answer.headers["retry-after"]) > 0
            assert document["detail"].startswith("database unavailable")


async def test_a_bug_is_a_500_problem(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("service.store.get_message", broken)
    document = problem_of(await client.get("/v1/messages/ib/m1", headers=READ), 500)
    assert document["detail"] == "internal error"



# --- details and reasons in words -----------------------------------------------------------

# A Python repr (`DTDForbidden(name='r', ...)`, `[<class 'decimal.ConversionSyntax'>]`) or a
# value shown with Python's quoting (`type 'None'`), outside the quoted text a reason may
# repeat from the body.
REPR = re.compile(r"\b[A-Z]\w*\(|<class |NoneType|\bNone\b|\w+\(\)")
QUOTED = re.compile(r"'[^']*'|`[^`]*`|\"[^\"]*\"")
# Sources of their own: the fields they count as unknown take no other test's label slots.
SOURCES = [InfobipSource("words-ib", "http://x"), TwilioSource("words-tw", "http://x"),
           VonageSource("words-vg", "http://x"), SinchSource("words-sn", "http://x"),
           DiceSmsSource("words-dice", "http://x")]
URLS = [None, "http://x/sms/3/reports", "http://x/2010-04-01/Accounts/AC1/Messages.json",
        "http://x/v2/reports/records", "http://x/xms/v1/plan/batches",
        "http://x/xms/v1/plan/batches/b1/delivery_report", "http://x/api/sms-report",
        "http://x/api/batch-ids", "http://x/api/sms-report/b1"]
KEYS = st.sampled_from([
    "results", "messageId", "status", "groupName", "sentAt", "doneAt", "price",
    "pricePerMessage", "smsCount", "messageCount", "to", "error", "id", "MessageSid",
    "MessageStatus", "ErrorCode", "NumSegments", "RawDlrDoneDate", "data", "messageSid",
    "messageStatus", "errorCode", "type", "specversion", "messages", "sid", "num_segments",
    "price_unit", "date_sent", "records", "message_id", "total_price", "date_received",
    "batch_id", "code", "recipient", "at", "statuses", "recipients", "count", "batches",
    "created_at", "phone", "sms_count", "delivered_at", "sent_at", "msisdn", "scts",
    "err-code", "client-ref", "timestamp", "sig", "operator_status_at", "x"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False), st.text(max_size=12).filter(lambda t: t != "None"),
                    st.sampled_from(["2026-11-01T10:00:00Z", "2026-13-01", "2611011003",
                                     "DELIVERED", "delivered", "Delivered", "1e999", "NaN",
                                     "-0.01", "+9779842271353", "recipient_delivery_report_sms",
                                     "delivery_report_sms", "com.twilio.messaging.message.sent"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=5)), max_leaves=12)
BODIES = st.one_of(
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(KEYS, VALUES, max_size=6).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(KEYS, SCALARS.map(lambda v: "" if v is None else str(v)), max_size=6).map(
        lambda v: urlencode(v).encode()),
    st.sampled_from([b'<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>',
                     b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://evil/x"><r/>',
                     b"<r><results><messageId>m</messageId><smsCount>x</smsCount></results></r>",
                     b"<r", b"\xff\xfe", b"{", b"[" * 100_000, b"null", b"%ff=%fe"]),
    st.binary(max_size=40),
)


def assert_worded(text: str) -> None:
    assert "'None'" not in text and not REPR.search(QUOTED.sub("", text)), text


@settings(max_examples=400, deadline=None)
@given(body=BODIES, content_type=st.sampled_from([None, "application/json", "application/xml",
                                                   "application/x-www-form-urlencoded"]))
def test_no_detail_or_reason_is_a_python_repr(body: bytes, content_type: str | None) -> None:
    for source in SOURCES:
        for url in URLS:
            envelope = ingest.decode(source, "push" if url is None else "pull", body,
                                     content_type,
                                     ingest.decoder_for(source, url, content_type), url)
            assert_worded(envelope.error or "")
            for rejection in envelope.rejections:
                assert_worded(rejection.reason)


async def test_an_xml_body_with_a_dtd_is_refused_in_words(client: Client) -> None:
    document = problem_of(await client.post(
        "/webhooks/ib", content=b'<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>',
        headers=BASIC | {"Content-Type": "application/xml"}), 400)
    assert document["detail"] == ("invalid XML: a DTD, an entity or an external reference is "
                                  "not accepted")


@pytest.mark.parametrize("fails", [lambda: Decimal("twelve"), lambda: int("²"),
                                   lambda: datetime(2026, 13, 1), lambda: 10.0 ** 400,
                                   lambda: b"\xff".decode()])
def test_a_library_error_in_one_report_is_worded(fails: Any) -> None:
    def build(_: object) -> list[object]:
        fails()
        return []

    _, [rejection] = judge_all([{}], build, "$.results[{}]")
    assert rejection.reason.startswith("$.results[0]: unusable value (")
    assert_worded(rejection.reason)
