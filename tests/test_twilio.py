"""Twilio: status callbacks signed by Twilio's own RequestValidator, the Messages list read
by Twilio's own Client from the fake, and the pull pass over that fake."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from service import rules, worker
from service.app import create_app
from service.config import WebhookConfig, load_settings
from service.errors import ConfigError
from service.providers import http, twilio
from service.providers.base import StatusTable, TwilioSignatureAuth
from service.providers.fakes import Fault
from service.providers.twilio import TwilioSource
from service.providers.twilio.fake import FakeTwilio, callback, message
from tests.conftest import READ_TOKEN, make_settings

TestClient = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
ACCOUNT = "AC" + "a" * 32
TOKEN = "12345678901234567890123456789012"
OLD_TOKEN = "old-token-old-token-old-token-12"
PUBLIC = "https://hooks.example.com/webhooks/tw"
FAST = http.Retry(attempts=2, base_s=0.01)
SENT = datetime(2026, 11, 1, 10, 0, 0, tzinfo=UTC)


def sid(i: int) -> str:
    return f"SM{i:032x}"


def source(base_url: str = "http://127.0.0.1:1", **extra: Any) -> TwilioSource:
    return TwilioSource("tw", base_url, account_sid=ACCOUNT, auth_token=TOKEN,
                        webhook=WebhookConfig(twilio_signature=TwilioSignatureAuth(
                            [OLD_TOKEN, TOKEN], PUBLIC)), **extra)


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[TestClient]:
    app = create_app(make_settings(sources={"tw": source()}), database_url)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def signed(params: dict[str, str], url: str = PUBLIC, token: str = TOKEN) -> dict[str, str]:
    """Headers as Twilio sends them, the signature computed by Twilio's own helper library."""
    return {"Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


async def post(client: TestClient, params: dict[str, str], query: str = "",
               headers: dict[str, str] | None = None) -> Any:
    path = "/webhooks/tw" + (f"?{query}" if query else "")
    url = PUBLIC + (f"?{query}" if query else "")
    return await client.post(path, content=urlencode(params).encode(),
                             headers=headers if headers is not None else signed(params, url))


def resource(i: int, status: str = "delivered", **extra: Any) -> dict[str, Any]:
    return message(ACCOUNT, sid(i), "+14155552671", status, SENT + timedelta(seconds=i),
                   sender="+15017122661", segments=2, price=Decimal("0.0079"), **extra)


def test_our_signature_is_twilios() -> None:
    params = {"MessageSid": sid(1), "MessageStatus": "sent", "To": "+14155552671", "Empty": ""}
    assert twilio.sign(TOKEN, PUBLIC, params) == \
        RequestValidator(TOKEN).compute_signature(PUBLIC, params)
    validator = RequestValidator(TOKEN)
    assert validator.validate(PUBLIC, params, twilio.sign(TOKEN, PUBLIC, params))


async def test_sdk_signed_callbacks_are_read_back_field_by_field(client: TestClient) -> None:
    sent = callback(resource(1), "sent")
    answer = await post(client, sent)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    pending = (await client.get(f"/v1/messages/tw/{sid(1)}", headers=READ)).json()
    assert pending["status"] == "PENDING"
    assert pending["provider_status"]["name"] == "sent"
    assert pending["to"] == "+14155552671"
    assert pending["sender"] == "+15017122661"

    failed = callback(resource(1), "undelivered", raw_dlr_done="2611011003", error_code=30003)
    answer = await post(client, failed, query="tag=abc")  # a query string is signed too
    assert answer.status_code == 200, answer.text
    got = (await client.get(f"/v1/messages/tw/{sid(1)}", headers=READ)).json()
    assert got["status"] == "UNDELIVERABLE" and got["final"] is True
    assert got["provider_status"]["name"] == "undelivered"
    assert got["error"]["id"] == 30003
    assert got["done_at"] == "2026-11-01T10:03:00Z"  # RawDlrDoneDate, read as UTC
    assert [h["status"] for h in got["history"]] == ["PENDING", "UNDELIVERABLE"]

    # the secondary (rotating) Auth Token signs as well
    answer = await post(client, callback(resource(2), "delivered"),
                        headers=signed(callback(resource(2), "delivered"), token=OLD_TOKEN))
    assert answer.status_code == 200


async def test_wrong_or_missing_signatures_get_401_and_store_nothing(client: TestClient) -> None:
    params = callback(resource(3), "delivered")
    forged = signed(params, token="not-the-token-not-the-token-1234")
    assert (await post(client, params, headers=forged)).status_code == 401
    other_url = signed(params, url="https://elsewhere.example.com/webhooks/tw")
    assert (await post(client, params, headers=other_url)).status_code == 401
    tampered = signed(params)
    assert (await post(client, params | {"MessageStatus": "failed"}, headers=tampered)
            ).status_code == 401
    as_json = signed({}) | {"Content-Type": "application/json"}  # URL signed, body not
    assert (await client.post("/webhooks/tw", content=b'{"MessageSid": "SM1"}',
                              headers=as_json)).status_code == 401
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await post(client, params, headers=unsigned)).status_code == 401
    assert (await client.get(f"/v1/messages/tw/{sid(3)}", headers=READ)).status_code == 404


async def post_json(client: TestClient, payload: Any, token: str = TOKEN) -> Any:
    """A JSON body as Twilio signs one: its SHA-256 in the URL's bodySHA256, the URL signed
    with no parameters, both by Twilio's own RequestValidator."""
    raw = json.dumps(payload)
    validator = RequestValidator(token)
    query = urlencode({"bodySHA256": validator.compute_hash(raw)})
    headers = {"Content-Type": "application/json",
               "X-Twilio-Signature": validator.compute_signature(f"{PUBLIC}?{query}", {})}
    assert validator.validate(f"{PUBLIC}?{query}", raw, headers["X-Twilio-Signature"])
    return await client.post(f"/webhooks/tw?{query}", content=raw.encode(), headers=headers)


def message_status_event(i: int, status: str, **data: Any) -> dict[str, Any]:
    """An Event Streams event of the Messaging.MessageStatus schema, as a webhook sink
    delivers it: a CloudEvent whose data has the callback's fields in camelCase."""
    return {"specversion": "1.0", "type": f"com.twilio.messaging.message.{status}",
            "source": f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid(i)}.json",
            "id": f"EZ{i:032x}", "dataschema": "https://events-schemas.twilio.com/"
            "Messaging.MessageStatus/4", "datacontenttype": "application/json",
            "time": "2026-11-01T10:00:05.000Z", "data": {
                "accountSid": ACCOUNT, "apiVersion": "2010-04-01", "eventName": status,
                "from": "+15017122661", "messageSid": sid(i), "messageStatus": status.upper(),
                "timestamp": "2026-11-01T10:00:05.000Z", "to": "+14155552671", **data}}


async def test_a_json_callback_signed_through_body_sha256_is_merged(client: TestClient) -> None:
    flat = callback(resource(20), "undelivered", raw_dlr_done="2611011003") | {
        "ErrorCode": 30003, "NumSegments": 2}  # JSON may give numbers as numbers
    answer = await post_json(client, flat)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    got = (await client.get(f"/v1/messages/tw/{sid(20)}", headers=READ)).json()
    assert (got["status"], got["error"]["id"], got["sms_count"]) == ("UNDELIVERABLE", 30003, 2)
    assert got["done_at"] == "2026-11-01T10:03:00Z"

    events = [message_status_event(21, "sent"), message_status_event(22, "delivered"),
              message_status_event(23, "undelivered", errorCode=30005)]
    answer = await post_json(client, events, token=OLD_TOKEN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 3
    got = [(await client.get(f"/v1/messages/tw/{sid(i)}", headers=READ)).json()
           for i in (21, 22, 23)]
    assert [m["status"] for m in got] == ["PENDING", "DELIVERED", "UNDELIVERABLE"]
    assert got[2]["error"]["id"] == 30005 and got[2]["to"] == "+14155552671"
    answer = await post_json(client, message_status_event(22, "delivered"))  # one event alone
    assert answer.status_code == 200 and answer.json()["accepted"] == 1

    kept = json.dumps(events).encode()  # replayed from the inbox, typed or not
    for content_type in ("application/json; charset=utf-8", None):
        reports, rejected = twilio.decoder(source(), None, content_type)(kept)
        assert ([r.message_id for r in reports], rejected) == ([sid(21), sid(22), sid(23)], [])

    wrong = await post_json(client, {"MessageStatus": "sent"})  # signed, but no message
    assert wrong.status_code == 400
    assert "MessageSid" in wrong.json()["detail"]


def unmapped(raw: str) -> float:
    return REGISTRY.get_sample_value("dlr_unmapped_statuses_total",
                                     {"source": "tw", "status": raw}) or 0.0


def unknown_field(name: str) -> float:
    return REGISTRY.get_sample_value("dlr_unknown_fields_total",
                                     {"source": "tw", "field": name}) or 0.0


async def test_unknown_statuses_and_fields_are_kept_raw_and_counted(client: TestClient) -> None:
    before, before_field = unmapped("teleported"), unknown_field("BrandNewField")
    params = callback(resource(4), "teleported") | {"BrandNewField": "x"}
    answer = await post(client, params)
    assert answer.status_code == 200, answer.text
    got = (await client.get(f"/v1/messages/tw/{sid(4)}", headers=READ)).json()
    assert got["status"] == "PENDING" and got["provider_status"]["name"] == "teleported"
    assert unmapped("teleported") == before + 1
    assert unknown_field("BrandNewField") == before_field + 1


async def test_a_bad_callback_is_400_and_kept(client: TestClient) -> None:
    params = {"MessageStatus": "sent", "To": "+14155552671"}  # no MessageSid
    answer = await post(client, params)
    assert answer.status_code == 400
    params = callback(resource(5), "delivered") | {"RawDlrDoneDate": "tomorrow"}
    answer = await post(client, params)
    assert answer.status_code == 400
    assert "RawDlrDoneDate" in answer.text


def test_status_map_overrides_the_defaults() -> None:
    table = StatusTable("tw", twilio.STATUSES, {"sent": "DELIVERED"})
    assert table.group("SENT") == "DELIVERED"
    assert table.group("failed") == "REJECTED"
    bad = TwilioSource("tw", "http://x", status_map={"sent": "DONE"})
    assert bad.problem() == ("status_map.sent", "'DONE' is not one of PENDING, DELIVERED, "
                             "UNDELIVERABLE, EXPIRED, REJECTED")


def test_twilios_client_reads_the_fake_as_it_reads_twilio() -> None:
    with FakeTwilio(ACCOUNT, TOKEN) as fake:
        fake.add(*[resource(i) for i in range(120)])
        fake.add(message(ACCOUNT, sid(999), "+15017122661", "received", SENT,
                         direction="inbound"))
        sdk = Client(ACCOUNT, TOKEN)
        sdk.api.base_url = fake.url  # the SDK's own paging follows next_page_uri
        listed = sdk.messages.list(date_sent_after=SENT + timedelta(seconds=20), page_size=50)
        assert len(listed) == 100
        first = next(m for m in listed if m.sid == sid(7 + 20))
        assert first.price == "-0.01580" and first.price_unit == "USD"
        assert first.num_segments == "2" and first.status == "delivered"
        assert first.date_sent == SENT + timedelta(seconds=27)
        assert any("Page=1" in r and "PageToken=" in r for r in fake.requests)
        bad = Client(ACCOUNT, "wrong")
        bad.api.base_url = fake.url
        with pytest.raises(Exception, match=r"20003|401"):
            bad.messages.list(limit=1)


async def pulled(engine: AsyncEngine, tw: TwilioSource) -> worker.RunResult:
    async with httpx.AsyncClient() as provider_client:
        result = await worker.pull(engine, provider_client, tw, "t", FAST)
    assert result is not None
    return result


async def test_pull_reads_every_page_and_bills_per_segment(engine: AsyncEngine,
                                                           client: TestClient) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with FakeTwilio(ACCOUNT, TOKEN) as fake:
        fake.add(*[message(ACCOUNT, sid(i), "+14155552671", "delivered",
                           now - timedelta(minutes=i), segments=2, price=Decimal("0.0079"))
                   for i in range(1500)])
        fake.add(message(ACCOUNT, sid(5000), "+14155552671", "delivered",
                         now - timedelta(days=5), price=Decimal("0.0079")))  # too old
        fake.add(message(ACCOUNT, sid(5001), "+15017122661", "received", now,
                         direction="inbound"))
        fake.add(message(ACCOUNT, sid(5002), "+14155552671", "failed", now, price=None,
                         error_code=30007, error_message="Message filtered"))
        result = await pulled(engine, source(fake.url))
    assert result.error is None, result.error
    assert result.pages == 2 and result.reports == 1501
    got = (await client.get(f"/v1/messages/tw/{sid(3)}", headers=READ)).json()
    assert got["price"] == {"amount": "0.0079", "currency": "USD", "origin": "reported",
                            "rate": None} and got["sms_count"] == 2
    assert got["sent_at"] == (now - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = (await client.get(f"/v1/messages/tw/{sid(5002)}", headers=READ)).json()
    assert failed["status"] == "REJECTED" and failed["error"]["id"] == 30007
    assert failed["error"]["description"] == "Message filtered"
    for absent in (sid(5000), sid(5001)):
        assert (await client.get(f"/v1/messages/tw/{absent}", headers=READ)).status_code == 404
    billed = (await client.get("/v1/billing/summary", headers=READ, params={
        "from": (now - timedelta(days=3)).isoformat(), "to": (now + timedelta(days=1)).isoformat(),
        "group_by": "source"})).json()["rows"]
    assert {"source": "tw", "currency": "USD", "messages": 1500, "parts": 3000,
            "amount": "23.7", "unpriced": 0} in billed  # 1500 x 2 x 0.0079; the failed one is free


async def test_pull_with_an_api_key_and_a_wrong_token(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    with FakeTwilio(ACCOUNT, TOKEN, api_key=("SK" + "b" * 32, "key-secret")) as fake:
        fake.add(message(ACCOUNT, sid(1), "+14155552671", "sent", now))
        keyed = TwilioSource("tw", fake.url, account_sid=ACCOUNT, api_key_sid="SK" + "b" * 32,
                             api_key_secret="key-secret")
        assert (await pulled(engine, keyed)).reports == 1
        wrong = TwilioSource("tw", fake.url, account_sid=ACCOUNT, auth_token="wrong")
        result = await pulled(engine, wrong)
    assert result.error is not None and "401" in result.error


async def test_a_next_page_on_another_origin_is_not_followed(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    page = {"messages": [message(ACCOUNT, sid(1), "+14155552671", "sent", now)],
            "next_page_uri": "https://evil.example.com/2010-04-01/Accounts/x/Messages.json",
            "page": 0, "page_size": 1000}
    with FakeTwilio(ACCOUNT, TOKEN) as fake:
        import json
        fake.faults.append(Fault(200, body=json.dumps(page).encode()))
        result = await pulled(engine, source(fake.url))
    assert result.error is not None and "evil.example.com" in result.error
    assert not any("evil" in r for r in fake.requests)


def test_price_per_part() -> None:
    assert twilio.per_part("-0.01580", 2) == Decimal("0.0079")
    assert twilio.per_part("-0.00750", None) == Decimal("0.0075")
    assert twilio.per_part("-0.01", 3) == Decimal("0.0033333333")  # rounded: not Twilio's way
    assert twilio.per_part(None, 2) is None


@st.composite
def twilio_observations(draw: st.DrawFn) -> list[Any]:
    """What one message may yield: callbacks for some statuses, and list pages at any time."""
    statuses = TwilioSource("tw", "http://x")
    table = StatusTable("tw", twilio.STATUSES, statuses.status_map)
    final = draw(st.sampled_from(["delivered", "undelivered", "failed", "read"]))
    res = resource(1, final, error_code=30003 if final == "undelivered" else None)
    out = []
    for status in draw(st.lists(st.sampled_from(["queued", "sent", final]), min_size=1,
                                max_size=4)):
        params = callback(res, status, raw_dlr_done="2611011003" if status == final else None)
        out.append(twilio.callback_report("tw", table, twilio.StatusCallback(**params)))
    for status in draw(st.lists(st.sampled_from(["sent", final]), max_size=2)):
        wire = twilio.Message(**{("from_" if k == "from" else k): v
                                 for k, v in (res | {"status": status}).items()})
        out.append(twilio.message_report("tw", table, wire))
    return out


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(twilio_observations(), st.randoms())
def test_twilio_reports_merge_the_same_in_any_order(reports: list[Any], rnd: Any) -> None:
    def fold(items: list[Any]) -> Any:
        merged = None
        for r in items:
            merged = rules.merge(merged, r)
        return merged

    shuffled = reports + reports[: rnd.randint(0, len(reports))]
    rnd.shuffle(shuffled)
    assert fold(shuffled) == fold(reports)


def test_a_positive_price_is_dropped_and_counted_and_the_status_still_merged() -> None:
    """Twilio's prices are charges (negative); a positive one is not what it documents."""
    page = {"messages": [resource(7, "delivered") | {"price": "0.0079"}], "next_page_uri": None,
            "page": 0, "page_size": 50, "uri": "/x", "first_page_uri": "/x",
            "previous_page_uri": None, "start": 0, "end": 0}
    labels = {"source": "tw", "field": "price"}
    before = REGISTRY.get_sample_value("dlr_dropped_values_total", labels) or 0.0
    reports, rejections = twilio.decode_page(source(), json.dumps(page).encode())
    assert rejections == [] and len(reports) == 1
    assert (reports[0].status, reports[0].final, reports[0].price_amount) == (
        "DELIVERED", True, None)
    assert REGISTRY.get_sample_value("dlr_dropped_values_total", labels) == before + 1


@pytest.mark.parametrize("public", [
    "https://hooks.example.com/webhooks/tw?src=a&region=eu",  # a query of its own
    "https://hooks.example.com:8443/dlr/tw",  # a port, and a path a proxy rewrites
    "http://hooks.example.com/webhooks/tw?src=a",  # plain HTTP
])
async def test_a_public_url_with_a_query_or_a_port_verifies(engine: AsyncEngine,
                                                            database_url: str,
                                                            public: str) -> None:
    """Behind a TLS-terminating proxy the service sees http://127.0.0.1/webhooks/tw?...:
    Twilio signed the public URL with its query, which the request brings along."""
    tw = msgspec.structs.replace(source(), webhook=WebhookConfig(
        twilio_signature=TwilioSignatureAuth([TOKEN], public)))
    app = create_app(make_settings(sources={"tw": tw}), database_url)
    params = callback(resource(8), "delivered")
    query = public.partition("?")[2]
    async with AsyncTestClient(app=app) as client:
        answer = await client.post("/webhooks/tw" + (f"?{query}" if query else ""),
                                   content=urlencode(params).encode(),
                                   headers=signed(params, public))
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(("public", "problem"), [
    ("https://hooks.example.com/webhooks/tw#frag", "fragment"),
    ("ftp://hooks.example.com/webhooks/tw", r"not an http\(s\) URL"),
    ("https://hooks.example.com:99999/tw", "no valid port"),
])
def test_a_public_url_that_cannot_verify_is_refused_at_load(tmp_path: Any, public: str,
                                                           problem: str) -> None:
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "tw"\nkind = "twilio"\n'
                      'base_url = "https://api.twilio.com"\n[sources.webhook]\n'
                      f'twilio_signature = {{ auth_tokens = ["{TOKEN}"], public_url = "{public}" }}\n')
    with pytest.raises(ConfigError, match=problem):
        load_settings({"DLR_CONFIG": str(config)})
