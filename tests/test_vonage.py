"""Vonage: delivery receipts signed with Vonage's own SDK (GET query, POST form and JSON),
concatenated messages merged from one receipt per part, and Reports API pulls from the fake.

Vonage's Python SDK has no Reports API client, so the fake's records are built from the
Reports API specification's schema; the receipts are built from the SMS API's documented
DeliveryReceipt and signed by the SDK's `Auth.sign_params`."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from vonage_http_client.auth import Auth

from service import rules, worker
from service.app import create_app
from service.config import BasicAuth, WebhookConfig
from service.providers import http, vonage
from service.providers.base import StatusTable, VonageSignatureAuth
from service.providers.fakes import Fault
from service.providers.vonage import VonageSource
from service.providers.vonage.fake import FakeVonage, receipt, record
from tests.conftest import READ_TOKEN, make_settings

TestClient = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
KEY, SECRET = "abcd1234", "signature-secret-0123456789"
FAST = http.Retry(attempts=2, base_s=0.01)
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def source(base_url: str = "http://127.0.0.1:1", **extra: Any) -> VonageSource:
    """A Vonage source whose sender gives each message a client-ref of its own."""
    hook = extra.pop("webhook", WebhookConfig(vonage_signature=VonageSignatureAuth(SECRET)))
    extra.setdefault("client_ref_unique", True)
    return VonageSource("vg", base_url, api_key=KEY, api_secret="api-secret", webhook=hook,
                        **extra)


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[TestClient]:
    basic = source(webhook=WebhookConfig(basic=BasicAuth("vonage", "hook-pw")))
    settings = make_settings(sources={"vg": source(), "vg-basic": VonageSource(
        "vg-basic", basic.base_url, webhook=basic.webhook)})
    async with AsyncTestClient(app=create_app(settings, database_url)) as test_client:
        yield test_client


def signed(params: dict[str, str], method: str = "sha256", secret: str = SECRET) -> dict[str, str]:
    """The receipt as Vonage sends it with signatures on: timestamp, nonce and sig, the sig
    computed by Vonage's own SDK."""
    out = params | {"timestamp": str(int(time.time())), "nonce": str(uuid.uuid4())}
    auth = Auth(api_key=KEY, signature_secret=secret, signature_method=method)
    out["sig"] = auth.sign_params(dict(out))
    return out


def part(i: int, client_ref: str | None = "order-7", status: str = "delivered",
         price: Decimal | None = Decimal("0.0333"), to: str = "447700900000") -> dict[str, Any]:
    return record(KEY, f"0B0000012{i:07X}", to, status, T0, T0 + timedelta(seconds=30 + i),
                  client_ref=client_ref, price=price)


def test_our_signatures_are_vonages() -> None:
    params = signed(receipt(part(1)))
    for method in ("md5", "sha1", "sha256", "sha512"):
        auth = Auth(api_key=KEY, signature_secret=SECRET, signature_method=method)
        assert vonage.sign(SECRET, method, params) == auth.sign_params(
            {k: v for k, v in params.items() if k != "sig"})
        assert Auth(api_key=KEY, signature_secret=SECRET, signature_method=method
                    ).check_signature(params | {"sig": vonage.sign(SECRET, method, params)})
    # "MD5 hash", the dashboard's default: the secret appended, then MD5 (Signing Messages)
    plain = "".join(f"&{k}={str(params[k]).replace('&', '_').replace('=', '_')}"
                    for k in sorted(params) if k != "sig") + SECRET
    assert vonage.sign(SECRET, "md5hash", params) == hashlib.md5(plain.encode()).hexdigest()


async def test_a_signed_receipt_by_get_post_form_and_json_reads_back(client: TestClient) -> None:
    by_get = signed(receipt(part(1), status="accepted"))
    answer = await client.get(f"/webhooks/vg?{urlencode(by_get)}")
    assert answer.status_code == 200, answer.text
    by_form = signed(receipt(part(2)))
    answer = await client.post("/webhooks/vg", content=urlencode(by_form).encode(),
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200, answer.text
    by_json = signed(receipt(part(1)))
    answer = await client.post("/webhooks/vg", content=json.dumps(by_json).encode(),
                               headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text

    got = (await client.get("/v1/messages/vg/order-7@+447700900000", headers=READ)).json()
    assert got["status"] == "DELIVERED" and got["final"] is True
    assert got["provider_status"]["name"] == "delivered"
    assert got["to"] == "+447700900000" and got["sender"] == "AcmeInc"
    assert got["callback_data"] == "order-7"
    assert got["mcc_mnc"] == "23410"
    assert got["sms_count"] == 2  # two parts seen
    assert got["price"] == {"amount": "0.0333", "currency": "EUR", "origin": "reported",
                            "rate": None}
    assert got["done_at"] == "2026-11-01T10:00:00Z"  # scts, to the minute
    assert got["error"] is None


async def test_parts_of_a_concatenated_message_bill_as_one(client: TestClient) -> None:
    parts = [part(i, client_ref="long-1") for i in range(3)]
    for p in [parts[2], parts[0], parts[2], parts[1]]:  # out of order, one repeated
        answer = await client.get(f"/webhooks/vg?{urlencode(signed(receipt(p)))}")
        assert answer.status_code == 200, answer.text
    got = (await client.get("/v1/messages/vg/long-1@+447700900000", headers=READ)).json()
    assert got["sms_count"] == 3
    billed = (await client.get("/v1/billing/summary", headers=READ, params={
        "from": "2026-10-01T00:00:00Z", "to": "2026-12-01T00:00:00Z", "group_by": "source"})
    ).json()["rows"]
    assert billed == []  # receipts carry no sent time: billing counts it once a pull has
    # without a client-ref the parts share nothing: a message each
    for i in (7, 8):
        p = part(i, client_ref=None)
        assert (await client.get(f"/webhooks/vg?{urlencode(signed(receipt(p)))}")
                ).status_code == 200
        got = (await client.get(f"/v1/messages/vg/{p['message_id']}", headers=READ)).json()
        assert got["sms_count"] == 1


async def test_wrong_stale_or_missing_signatures_get_401(client: TestClient) -> None:
    params = signed(receipt(part(3)))
    forged = params | {"sig": signed(receipt(part(3)), secret="other-secret-000")["sig"]}
    assert (await client.get(f"/webhooks/vg?{urlencode(forged)}")).status_code == 401
    tampered = params | {"status": "failed"}
    assert (await client.get(f"/webhooks/vg?{urlencode(tampered)}")).status_code == 401
    unsigned = receipt(part(3))
    assert (await client.get(f"/webhooks/vg?{urlencode(unsigned)}")).status_code == 401
    stale = receipt(part(3)) | {"timestamp": str(int(time.time()) - 3600)}
    stale["sig"] = vonage.sign(SECRET, "sha256", stale)
    assert (await client.get(f"/webhooks/vg?{urlencode(stale)}")).status_code == 401
    assert (await client.get("/v1/messages/vg/order-7@+447700900000", headers=READ)
            ).status_code == 404
    # Basic, the other way Vonage authenticates webhooks
    plain = urlencode(receipt(part(4, client_ref="b-1")))
    assert (await client.get(f"/webhooks/vg-basic?{plain}")).status_code == 401
    ok = {"Authorization": "Basic " + base64.b64encode(b"vonage:hook-pw").decode()}
    assert (await client.get(f"/webhooks/vg-basic?{plain}", headers=ok)).status_code == 200
    # an Infobip source takes no GET
    assert (await client.get("/webhooks/ib?messageId=x")).status_code == 404


async def test_a_receipt_signed_by_either_secret_is_taken_while_rotating(
        engine: AsyncEngine, database_url: str) -> None:
    new, old = "new-" + SECRET, SECRET
    rotating = WebhookConfig(vonage_signature=VonageSignatureAuth(secrets=[new, old]))
    settings = make_settings(sources={"vg": source(webhook=rotating)})
    async with AsyncTestClient(app=create_app(settings, database_url)) as client:
        for i, secret in enumerate((new, old)):
            params = signed(receipt(part(10 + i, client_ref=f"r-{i}")), secret=secret)
            assert (await client.get(f"/webhooks/vg?{urlencode(params)}")).status_code == 200
        forged = signed(receipt(part(12, client_ref="r-2")), secret="third-" + SECRET)
        assert (await client.get(f"/webhooks/vg?{urlencode(forged)}")).status_code == 401


async def test_unknown_statuses_and_fields_are_kept_raw_and_counted(client: TestClient) -> None:
    def count(metric: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(metric, labels) or 0.0

    before = count("dlr_unmapped_statuses_total", {"source": "vg", "status": "teleported"})
    field = count("dlr_unknown_fields_total", {"source": "vg", "field": "brand-new"})
    params = signed(receipt(part(5, client_ref="u-1"), status="teleported") | {"brand-new": "1"})
    assert (await client.get(f"/webhooks/vg?{urlencode(params)}")).status_code == 200
    got = (await client.get("/v1/messages/vg/u-1@+447700900000", headers=READ)).json()
    assert got["status"] == "PENDING" and got["provider_status"]["name"] == "teleported"
    assert count("dlr_unmapped_statuses_total", {"source": "vg", "status": "teleported"}) == \
        before + 1
    assert count("dlr_unknown_fields_total", {"source": "vg", "field": "brand-new"}) == field + 1


async def pulled(engine: AsyncEngine, vg: VonageSource) -> worker.RunResult:
    async with httpx.AsyncClient() as provider_client:
        result = await worker.pull(engine, provider_client, vg, "t", FAST)
    assert result is not None
    return result


async def test_pull_reads_truncated_pages_and_merges_parts(engine: AsyncEngine,
                                                           client: TestClient) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    records = [record(KEY, f"0C{i:014X}", "447700900001", "delivered",
                      now - timedelta(minutes=30, seconds=i), now - timedelta(minutes=29),
                      client_ref=f"m-{i // 2}", price=Decimal("0.0333")) for i in range(2400)]
    records.append(record(KEY, "0DOLD", "447700900001", "delivered", now - timedelta(days=3),
                          now - timedelta(days=3)))  # outside the lookback
    with FakeVonage(KEY, "api-secret") as fake:
        fake.add(*records)
        result = await pulled(engine, source(fake.url))
        assert result.error is None, result.error
        assert result.pages == 3 and result.reports == 2400
        assert any("cursor=" in r and "iv=" in r for r in fake.requests)
    got = (await client.get("/v1/messages/vg/m-5@+447700900001", headers=READ)).json()
    assert got["sms_count"] == 2 and got["status"] == "DELIVERED"
    assert got["price"] == {"amount": "0.0333", "currency": "EUR", "origin": "reported",
                            "rate": None}
    assert got["text"] == "hello"
    billed = (await client.get("/v1/billing/summary", headers=READ, params={
        "from": (now - timedelta(days=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat(),
        "group_by": "source"})).json()["rows"]
    assert billed == [{"source": "vg", "currency": "EUR", "messages": 1200, "parts": 2400,
                       "amount": "79.92", "unpriced": 0}]


async def test_a_next_link_off_origin_is_refused_and_wrong_credentials_end_the_run(
        engine: AsyncEngine) -> None:
    page = {"request_status": "TRUNCATED", "records": [],
            "_links": {"next": {"href": "https://evil.example.com/v2/reports/records?x=1"}}}
    with FakeVonage(KEY, "api-secret") as fake:
        fake.faults.append(Fault(200, body=json.dumps(page).encode()))
        result = await pulled(engine, source(fake.url))
        assert result.error is not None and "evil.example.com" in result.error
        wrong = VonageSource("vg", fake.url, api_key=KEY, api_secret="wrong")
        result = await pulled(engine, wrong)
    assert result.error is not None and "401" in result.error


@given(st.permutations(list(range(6))), st.lists(st.integers(0, 5), max_size=4))
def test_part_receipts_and_records_merge_the_same_in_any_order(order: list[int],
                                                               again: list[int]) -> None:
    vg = source()
    table = StatusTable("vg", vonage.STATUSES, {})
    parts = [part(i, client_ref="p-1") for i in range(3)]
    reports = [vonage.receipt_report(vg, table, vonage.Receipt(**{
        k.replace("-", "_"): v for k, v in receipt(p).items() if k != "api-key"}))
        for p in parts]
    reports += [vonage.record_report(vg, table, vonage._record.decode(
        json.dumps(p).encode(), lambda name: None)) for p in parts]

    def fold(items: list[Any]) -> Any:
        merged = None
        for r in items:
            merged = rules.merge(merged, r)
        return merged

    arrived = [reports[i] for i in order] + [reports[i] for i in again]
    merged = fold(arrived)
    assert merged == fold(reports)
    assert merged.sms_count == 3 and len(merged.part_ids.split()) == 3


def test_two_messages_sharing_a_client_ref_stay_two() -> None:
    """Vonage documents client-ref as the sender's free reference: unless the source says
    its client-refs are unique, parts are never grouped by it."""
    shared = source(client_ref_unique=False)
    first, second = (part(i, client_ref="campaign-7") for i in (1, 2))
    got = [vonage.decode_receipt(shared, urlencode(receipt(p)).encode(),
                                 "application/x-www-form-urlencoded")[0][0]
           for p in (first, second)]
    assert [r.message_id for r in got] == [first["message_id"], second["message_id"]]
    assert [(r.sms_count, r.callback_data) for r in got] == [(1, "campaign-7")] * 2
    grouped = [vonage.decode_receipt(source(), urlencode(receipt(p)).encode(),
                                     "application/x-www-form-urlencoded")[0][0]
               for p in (first, second)]
    assert {r.message_id for r in grouped} == {"campaign-7@+447700900000"}
