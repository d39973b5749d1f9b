"""POST /webhooks/{source}: authentication, limits, bad input kept, merge through HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import store
from service.api.webhooks import Gate, sign
from service.config import WebhookConfig
from service.tables import inbox, message_history, messages
from tests.conftest import OLD_SW_SECRET, PAYLOADS, READ_TOKEN, SW_SECRET
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


async def push(client: Client, payload: bytes, source: str = "ib",
               headers: dict[str, str] | None = None) -> Any:
    return await client.post(f"/webhooks/{source}", content=payload,
                             headers=BASIC if headers is None else headers)


async def inbox_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(inbox).order_by(inbox.c.id))).all())


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def test_seed_example_accepted_verbatim_and_read_back(client: Client) -> None:
    seed = (PAYLOADS / "infobip" / "seed_002.json").read_bytes()
    response = await push(client, seed)
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "rejected": [], "rejected_count": 0}

    got = await client.get("/v1/messages/ib/MESSAGE-ID-123-xyz", headers=READ)
    assert got.status_code == 200
    message = got.json()
    assert message["status"] == "DELIVERED"
    assert message["final"] is True
    assert message["price"] == {"amount": "0.01", "currency": "EUR", "origin": "reported",
                                "rate": None}
    assert message["done_at"] == "2019-11-09T16:00:00Z"
    assert message["sent_at"] == "2019-11-09T16:00:00Z"
    assert message["to"] == "+41793026727"
    assert message["country"] == "CH"
    assert message["bulk_id"] == "BULK-ID-123-xyz"
    assert message["sms_count"] == 1
    assert message["provider_status"] == {"id": 5, "name": "DELIVERED_TO_HANDSET",
                                          "description": "Message delivered to handset",
                                          "action": None}
    assert message["error"] is None
    assert set(message) == {
        "source", "message_id", "bulk_id", "to", "country", "sender", "callback_data", "matched_by",
        "status", "final", "provider_status", "error", "sent_at", "done_at", "sms_count", "price",
        "mcc_mnc", "operator", "text", "entity_id", "application_id", "campaign_reference_id",
        "seq", "updated_at", "history"}
    assert message["matched_by"] is None  # nothing registered
    [seen] = message["history"]
    assert (seen["status"], seen["channel"], seen["done_at"]) == ("DELIVERED", "push",
                                                                  "2019-11-09T16:00:00Z")


async def test_offsets_are_normalised_to_utc(client: Client) -> None:
    payload = body(report("m1", done_at="2026-11-01T16:00:00.000+05:45"),
                   report("m2", done_at="2026-11-01T10:00:00.123+00:00"))
    assert (await push(client, payload)).status_code == 200
    m1 = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    m2 = (await client.get("/v1/messages/ib/m2", headers=READ)).json()
    assert m1["done_at"] == "2026-11-01T10:15:00Z"
    assert m2["done_at"] == "2026-11-01T10:00:00.123000Z"


async def test_money_is_exact(client: Client) -> None:
    payload = body(report("m1", price={"pricePerMessage": "PRICE1", "currency": "EUR"}),
                   report("m2", price={"pricePerMessage": "PRICE2", "currency": "USD"}))
    # JSON numbers that a float would round: written into the body as the provider sends them
    payload = payload.replace(b'"PRICE1"', b"999999.9999999999")
    payload = payload.replace(b'"PRICE2"', b"0.0070")
    assert (await push(client, payload)).status_code == 200
    m1 = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    m2 = (await client.get("/v1/messages/ib/m2", headers=READ)).json()
    assert m1["price"]["amount"] == "999999.9999999999"
    assert m2["price"] == {"amount": "0.007", "currency": "USD", "origin": "reported", "rate": None}


async def test_duplicates_change_neither_seq_nor_message(client: Client) -> None:
    payload = body(report("m1"))
    await push(client, payload)
    first = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    for _ in range(3):
        assert (await push(client, payload)).status_code == 200
    again = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert again == first


async def test_final_status_never_replaced_by_pending(client: Client) -> None:
    await push(client, body(report("m1", group_id=3, status_id=5,
                                   done_at="2026-11-01T10:00:05.000+0000")))
    delivered = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    late_pending = report("m1", group_id=1, status_id=7, done_at="2026-11-01T11:00:00.000+0000")
    assert (await push(client, body(late_pending))).status_code == 200
    after = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert after["status"] == "DELIVERED"
    assert after["seq"] == delivered["seq"]


async def test_pending_then_final_advances_seq_and_keeps_history(
        client: Client, engine: AsyncEngine) -> None:
    await push(client, body(report("m1", group_id=1, status_id=7,
                                   done_at="2026-11-01T10:00:01.000+0000")))
    pending = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert (pending["status"], pending["final"]) == ("PENDING", False)
    await push(client, body(report("m1")))
    final = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert final["status"] == "DELIVERED"
    assert final["seq"] > pending["seq"]
    assert await count(engine, message_history) == 2
    assert [o["status"] for o in final["history"]] == ["PENDING", "DELIVERED"]


async def test_unknown_status_group_is_kept_not_rejected(client: Client) -> None:
    payload = body(report("m1", status={"groupId": 9, "groupName": "QUEUED_ON_MARS", "id": 99,
                                        "name": "NEW", "description": "new"}))
    response = await push(client, payload)
    assert response.json() == {"accepted": 1, "rejected": [], "rejected_count": 0}
    message = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert (message["status"], message["final"]) == ("QUEUED_ON_MARS", False)


async def test_concurrent_identical_requests_leave_one_correct_row(
        client: Client, engine: AsyncEngine) -> None:
    payloads = [body(*[report(f"m{i}") for i in range(50)]),
                body(*[report(f"m{i}", group_id=1, status_id=7,
                              done_at="2026-11-01T10:00:01.000+0000") for i in range(50)])]
    responses = await asyncio.gather(*[push(client, payloads[i % 2]) for i in range(20)])
    assert {r.status_code for r in responses} == {200}
    assert await count(engine, messages) == 50
    async with engine.connect() as conn:
        statuses = (await conn.execute(sa.select(messages.c.status).distinct())).scalars().all()
    assert statuses == ["DELIVERED"]
    assert await count(engine, inbox) == 20


# --- bad input: a clear 4xx, the body kept, no partial merge ------------------------------

@pytest.mark.parametrize(("payload", "message"), [
    (b'{"results": [', "invalid JSON"),
    (b"not json at all", "invalid JSON"),
    (b'{"result": []}', "missing required field `results`"),
    (b'{"results": {}}', "Expected `array`, got `object`"),
    (b"[1, 2]", "Expected `object`, got `array`"),
])
async def test_unusable_body_is_400_and_kept(client: Client, engine: AsyncEngine,
                                             payload: bytes, message: str) -> None:
    response = await push(client, payload)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    [row] = await inbox_rows(engine)
    assert (row.state, row.body) == ("rejected", payload)
    assert message in row.reason
    assert await count(engine, messages) == 0


async def test_one_bad_report_does_not_lose_the_good_ones(client: Client,
                                                          engine: AsyncEngine) -> None:
    payload = body(report("good-1"), report("bad", smsCount="two"), report("good-2"),
                   report("late", doneAt="2026-11-01T10:00:05"))
    response = await push(client, payload)
    assert response.status_code == 200
    result = response.json()
    assert result["accepted"] == 2
    assert [(r["index"], r["message_id"]) for r in result["rejected"]] == [(1, "bad"), (3, "late")]
    assert "`$.results[1].smsCount`" in result["rejected"][0]["reason"]
    assert "timezone" in result["rejected"][1]["reason"]
    [row] = await inbox_rows(engine)
    assert (row.state, row.accepted, row.rejected) == ("partial", 2, 2)
    assert await count(engine, messages) == 2


async def test_body_with_only_bad_reports_is_400_and_kept(client: Client,
                                                          engine: AsyncEngine) -> None:
    payload = body({"messageId": "x"}, report("", status=None))
    response = await push(client, payload)
    assert response.status_code == 400
    assert len(response.json()["rejected"]) == 2
    [row] = await inbox_rows(engine)
    assert row.state == "rejected"
    assert await count(engine, messages) == 0


async def test_non_finite_price_is_rejected(client: Client) -> None:
    payload = body(report("m1", price={"pricePerMessage": "NaN", "currency": "EUR"}))
    response = await push(client, payload)
    assert response.status_code == 400
    assert "pricePerMessage: not a price" in response.json()["rejected"][0]["reason"]


async def test_body_over_the_limit_is_413(client: Client, engine: AsyncEngine) -> None:
    big = body(*[report(f"m{i}", callbackData="x" * 4000) for i in range(2200)])
    assert len(big) > 8 * 1024 * 1024
    response = await push(client, big)
    assert response.status_code == 413
    assert await count(engine, inbox) == 0


async def test_a_full_2000_report_push_is_accepted(client: Client, engine: AsyncEngine) -> None:
    payload = body(*[report(f"m{i}", callbackData="c" * 1000) for i in range(2000)])
    response = await push(client, payload)
    assert response.json()["accepted"] == 2000
    assert await count(engine, messages) == 2000


async def test_merge_bug_keeps_the_body_for_replay(client: Client, engine: AsyncEngine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = store.write

    async def broken(conn: object, bodies: object, observed: list[object]) -> store.Written:
        if observed:
            raise RuntimeError("bug in the merge")
        return await real_write(conn, bodies, observed)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write", broken)
    payload = body(report("m1"))
    response = await push(client, payload)
    assert response.status_code == 200  # kept: the provider need not send it again
    assert response.json()["rejected"] == [{"index": -1, "message_id": "m1", "reason":
                                            "could not be merged (kept for replay after a fix)"}]
    [row] = await inbox_rows(engine)
    assert (row.state, row.body) == ("rejected", payload)


# --- authentication ------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic " + base64.b64encode(b"hook:wrong").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"other:hook-password").decode()},
    {"Authorization": "Basic !!!"},
    {"Authorization": "Bearer hook-password"},
])
async def test_basic_auth_refuses_wrong_credentials(client: Client, engine: AsyncEngine,
                                                     headers: dict[str, str]) -> None:
    response = await push(client, body(report("m1")), headers=headers)
    assert response.status_code == 401
    assert await count(engine, inbox) == 0


async def test_token_auth(client: Client, engine: AsyncEngine) -> None:
    payload = body(report("m1"))
    ok = await push(client, payload, "ib-token", {"X-Webhook-Token": "token-value"})
    assert ok.status_code == 200
    for headers in ({}, {"X-Webhook-Token": "token-valu"}, {"X-Other": "token-value"}):
        assert (await push(client, payload, "ib-token", headers)).status_code == 401
    assert await count(engine, inbox) == 1


def signed_headers(payload: bytes, secret: str = SW_SECRET, *, age_s: int = 0,
                   msg_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers for one delivery (its own webhook-id unless given)."""
    stamp = int(time.time()) - age_s
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, msg_id, stamp, payload)}


async def test_standard_webhooks_signature(client: Client, engine: AsyncEngine) -> None:
    payload = body(report("m1"))
    assert (await push(client, payload, "ib-signed", signed_headers(payload))).status_code == 200
    # any of the configured secrets (rotation), among several signatures
    rotated = signed_headers(payload, OLD_SW_SECRET)
    rotated["webhook-signature"] = "v1,AAAA " + rotated["webhook-signature"]
    assert (await push(client, payload, "ib-signed", rotated)).status_code == 200
    assert await count(engine, inbox) == 2


@pytest.mark.parametrize("case", ["wrong secret", "tampered body", "old", "future", "no id",
                                  "no timestamp", "no signature", "bad timestamp", "v2 only",
                                  "400 digits", "negative", "spaces"])
async def test_standard_webhooks_refusals(client: Client, engine: AsyncEngine, case: str) -> None:
    payload = body(report("m1"))
    headers = signed_headers(payload)
    if case == "wrong secret":
        headers = signed_headers(payload, "whsec_" + base64.b64encode(b"nope").decode())
    elif case == "tampered body":
        payload = body(report("m2"))
    elif case == "old":
        headers = signed_headers(payload, age_s=301)
    elif case == "future":
        headers = signed_headers(payload, age_s=-301)
    elif case == "bad timestamp":
        headers["webhook-timestamp"] = "soon"
    elif case == "400 digits":  # once a float overflow, answered 500
        headers["webhook-timestamp"] = "9" * 400
    elif case == "negative":
        headers["webhook-timestamp"] = "-" + headers["webhook-timestamp"]
    elif case == "spaces":
        headers["webhook-timestamp"] = f" {headers['webhook-timestamp']} "
    elif case == "v2 only":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    else:
        del headers[{"no id": "webhook-id", "no timestamp": "webhook-timestamp",
                     "no signature": "webhook-signature"}[case]]
    response = await push(client, payload, "ib-signed", headers)
    assert response.status_code == 401
    assert response.json()["detail"]
    assert await count(engine, inbox) == 0


@pytest.mark.parametrize("source", ["nope", "ib-nohook", "ib-empty"])
async def test_unknown_unconfigured_or_disabled_source_is_404(client: Client, engine: AsyncEngine,
                                                             source: str) -> None:
    headers = {"Authorization": "Basic " + base64.b64encode(b"hook:").decode()}
    response = await push(client, body(report("m1")), source, headers)
    assert response.status_code == 404
    assert await count(engine, inbox) == 0


async def test_explicitly_unauthenticated_source_accepts(client: Client) -> None:
    assert (await push(client, body(report("m1")), "ib-open", {})).status_code == 200


async def test_ip_allow_list(client: Client, engine: AsyncEngine) -> None:
    response = await push(client, body(report("m1")), "ib-fenced", {})
    assert response.status_code == 403
    assert await count(engine, inbox) == 0
    gate = Gate("x", WebhookConfig(unauthenticated=True, allow_ips=["10.0.0.0/8", "::1/128"]))
    gate.check_headers({}, "10.1.2.3")
    gate.check_headers({}, "::1")
    with pytest.raises(Exception, match="not allowed"):
        gate.check_headers({}, "11.0.0.1")


async def test_an_error_is_a_problem_document(client: Client) -> None:
    response = await push(client, b"{", "ib")
    assert response.headers["content-type"] == "application/problem+json"
    assert set(json.loads(response.content)) == {"type", "title", "status", "detail"}


async def test_nul_characters_are_rejected_per_report(client: Client, engine: AsyncEngine) -> None:
    payload = body(report("good"), report("nul", callbackData="a\u0000b"))
    response = await push(client, payload)
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    assert "NUL" in response.json()["rejected"][0]["reason"]
    read = await client.get("/v1/messages", params={"callback_data": "a\u0000b"}, headers=READ)
    assert read.status_code == 400


async def test_a_merge_bug_rejects_that_report_not_its_namesake(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two reports of one message in one body (pending, then final): only the one the merge
    fails on is rejected; the other is merged and counted."""
    real_write = store.write

    async def broken(conn: object, bodies: object, observed: list[Any]) -> store.Written:
        if any(report.status == "DELIVERED" for report, _ in observed):
            raise RuntimeError("bug in the merge")
        return await real_write(conn, bodies, observed)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write", broken)
    response = await push(client, body(report("m1", group_id=1, status_id=7), report("m1")))
    answer = response.json()
    assert (response.status_code, answer["accepted"], answer["rejected_count"]) == (200, 1, 1)
    assert answer["rejected"][0]["index"] == -1
