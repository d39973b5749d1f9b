"""GET /v1/messages…: bearer scopes, filters, keyset pagination, clear 4xx."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import rules, store
from service.logs import mask
from tests.conftest import ADMIN_TOKEN, MASKED_TOKEN, READ_TOKEN, WRITE_TOKEN
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}


@pytest.fixture
async def loaded(client: Client) -> Client:
    reports = [report(f"m{i:02}", bulkId=f"bulk-{i % 2}", callbackData=f"cb-{i}",
                      to="41793026727" if i < 3 else "41793026834",
                      **({"status": {"groupId": 1, "groupName": "PENDING", "id": 7}}
                         if i % 3 == 0 else {}))
               for i in range(25)]
    response = await client.post("/webhooks/ib", content=body(*reports), headers=BASIC)
    assert response.status_code == 200
    return client


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer nope"}, 401),
    ({"Authorization": f"Basic {READ_TOKEN}"}, 401),
    ({"Authorization": f"Bearer {WRITE_TOKEN}"}, 403),
    ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),
    (READ, 200),
])
async def test_scopes(loaded: Client, headers: dict[str, str], status: int) -> None:
    for path in ("/v1/messages", "/v1/messages/ib/m01"):
        response = await loaded.get(path, headers=headers)
        assert response.status_code == status
        if status != 200:
            assert response.json()["detail"]


async def test_unknown_message_is_404(loaded: Client) -> None:
    response = await loaded.get("/v1/messages/ib/nope", headers=READ)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


async def test_pages_return_every_row_once(loaded: Client) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "7"} | ({"cursor": cursor} if cursor else {})
        page = (await loaded.get("/v1/messages", params=params, headers=READ)).json()
        seen += [m["message_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"m{i:02}" for i in range(25)]


@pytest.mark.parametrize(("params", "expected"), [
    ({"status": "pending"}, {f"m{i:02}" for i in range(0, 25, 3)}),
    ({"bulk_id": "bulk-1", "source": "ib"}, {f"m{i:02}" for i in range(1, 25, 2)}),
    ({"callback_data": "cb-4"}, {"m04"}),
    ({"to": "41793026727"}, {"m00", "m01", "m02"}),
    ({"to": "+41 79 302 67 27"}, {"m00", "m01", "m02"}),
    ({"source": "other"}, set()),
    ({"final": "false"}, {f"m{i:02}" for i in range(0, 25, 3)}),
    ({"final": "true", "bulk_id": "bulk-0"}, {f"m{i:02}" for i in range(2, 25, 2) if i % 3}),
    ({"sent_from": "2026-11-01T10:00:00Z", "sent_to": "2026-11-01T10:00:00.001Z"},
     {f"m{i:02}" for i in range(25)}),
    ({"sent_from": "2026-11-01T10:00:01Z"}, set()),
    ({"updated_since": "2000-01-01T00:00:00+00:00"}, {f"m{i:02}" for i in range(25)}),
    ({"updated_since": "2199-01-01T00:00:00+00:00"}, set()),
])
async def test_filters(loaded: Client, params: dict[str, str], expected: set[str]) -> None:
    page = (await loaded.get("/v1/messages", params=params | {"limit": "100"},
                             headers=READ)).json()
    assert {m["message_id"] for m in page["items"]} == expected


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "1001"}, {"limit": "x"},
                                    {"cursor": "%%%"}, {"cursor": "bm90IGpzb24="},
                                    {"final": "maybe"}, {"sent_from": "yesterday"},
                                    {"updated_since": "2026-11-01T00:00:00"}])
async def test_bad_parameters_are_400(loaded: Client, params: dict[str, str]) -> None:
    response = await loaded.get("/v1/messages", params=params, headers=READ)
    assert response.status_code == 400
    assert response.json()["detail"]


async def test_an_unknown_status_is_400_naming_the_five(loaded: Client) -> None:
    response = await loaded.get("/v1/messages", params={"status": "delivred"}, headers=READ)
    assert response.status_code == 400
    assert response.json()["detail"] == ("status: 'delivred' is not one of PENDING, DELIVERED, "
                                         "UNDELIVERABLE, EXPIRED, REJECTED (in any case)")
    for spelled in ("Delivered", "delivered", "DELIVERED"):
        answer = await loaded.get("/v1/messages", params={"status": spelled}, headers=READ)
        assert answer.status_code == 200 and answer.json()["items"]


async def test_health_and_schema(client: Client) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).json() == {"status": "ready"}
    scraped = await client.get("/metrics")
    assert scraped.status_code == 200 and "dlr_reconciler_runs_total" in scraped.text
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/webhooks/{source}" in schema["paths"]
    assert "/v1/messages" in schema["paths"]


async def test_pages_see_every_row_once_while_rows_change(client: Client) -> None:
    original = [f"p{i:03}" for i in range(300)]
    await client.post("/webhooks/ib", headers=BASIC, content=body(
        *[report(m, status={"groupId": 1, "groupName": "PENDING", "id": 7}) for m in original]))
    seen: list[str] = []
    cursor = None
    page_number = 0
    while True:
        params = {"limit": "17", "source": "ib"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/messages", params=params, headers=READ)).json()
        seen += [m["message_id"] for m in page["items"]]
        page_number += 1
        # between pages: new rows on both sides of the cursor, and updates to old ones
        await client.post("/webhooks/ib", headers=BASIC, content=body(
            report(f"p{page_number * 7:03}x"), report(f"a{page_number:03}"),
            *[report(m) for m in original[page_number * 5:page_number * 5 + 5]]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [m for m in seen if m in set(original)] == original  # each once, in order
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(("token", "full"), [(MASKED_TOKEN, False), (READ_TOKEN, True),
                                             (ADMIN_TOKEN, True)])
async def test_numbers_and_texts_need_the_pii_scope(client: Client, engine: AsyncEngine,
                                                    token: str, full: bool) -> None:
    """Without `pii` (or `admin`, which reads raw bodies anyway) a token sees every
    recipient masked as the logs mask it, and no message text, wherever the API shows them."""
    texted = rules.observation(source="ib", message_id="t1", status="DELIVERED",
                               to="+41793026727", text="your code is 4711, +41793026727",
                               sent_at=datetime(2026, 11, 1, tzinfo=UTC))
    async with engine.begin() as conn:
        await store.write(conn, [], [(texted, "push")])
    registered = [{"source": "ib", "sent_at": "2026-11-01T10:00:00Z", "to": "+41793026834",
                   "message_id": "gap-1"}]
    assert (await client.post("/v1/outbound", json=registered, headers={
        "Authorization": f"Bearer {WRITE_TOKEN}"})).status_code == 200
    headers = {"Authorization": f"Bearer {token}"}

    async def got(path: str, **params: Any) -> Any:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    shown = [await got("/v1/messages/ib/t1"), await got("/v1/messages/ib/gap-1"),
             *(await got("/v1/messages", source="ib"))["items"],
             *(await got("/v1/changes"))["items"],
             *(await got("/v1/messages", to="+41793026727"))["items"]]
    gaps = (await got("/v1/gaps", older_than="0s"))["items"]
    assert len(shown) == 7 and [g["message_id"] for g in gaps] == ["gap-1"]
    numbers = {"t1": "+41793026727", "gap-1": "+41793026834"}
    texts = {"t1": texted.text, "gap-1": None}
    for item in [*shown, *gaps]:
        number = numbers[item["message_id"]]
        assert item["to"] == (number if full else mask(number))
        if "text" in item:
            assert item["text"] == (texts[item["message_id"]] if full else None)


@pytest.mark.parametrize(("token", "full"), [(MASKED_TOKEN, False), (READ_TOKEN, True)])
async def test_an_id_made_of_the_number_needs_the_pii_scope_too(
        client: Client, engine: AsyncEngine, token: str, full: bool) -> None:
    """Sinch, Vonage and DiceSMS ids are made of the recipient's number: without `pii` it is
    masked there as in `to` (an Infobip id of digits is not the number, and stays), and
    pages still go through every message once. (The ids showed every number in full.)"""
    ids = {"01FC66621XXXXX119Z8PMV1QPQ:447700900123": "+447700900123",
           "order-7@+447700900000": "+447700900000",
           "9841000000@2026-11-01T10:00:00.000000+05:45": "+9779841000000",
           "2033247207850523791": "+41793026727"}
    observed = [(rules.observation(source="ib", message_id=message_id, status="DELIVERED",
                                   to=to, sent_at=datetime(2026, 11, 1, tzinfo=UTC)), "push")
                for message_id, to in ids.items()]
    async with engine.begin() as conn:
        await store.write(conn, [], observed)
    headers = {"Authorization": f"Bearer {token}"}
    shown, cursor = [], None
    for _ in range(2 * len(ids)):  # a cursor made of a masked id would go round for ever
        page = (await client.get("/v1/messages", headers=headers, params={
            "limit": 1, **({"cursor": cursor} if cursor else {})})).json()
        shown += page["items"]
        if not (cursor := page["next_cursor"]):
            break
    shown += (await client.get("/v1/changes", headers=headers)).json()["items"]
    assert len(shown) == 2 * len(ids) and len({item["message_id"] for item in shown}) == len(ids)
    for item in shown:
        if full:
            assert ids[item["message_id"]] == item["to"]
        else:
            assert not [number for number in ids.values() if number[-7:] in item["message_id"]]
    if not full:
        assert {item["message_id"] for item in shown} == {
            "01FC66621XXXXX119Z8PMV1QPQ:4477******23", "order-7@+4477******00",
            "98******00@2026-11-01T10:00:00.000000+05:45", "2033247207850523791"}


async def test_every_message_says_its_country_and_can_be_found_by_it(client: Client) -> None:
    """`country` is the recipient's (ISO 3166 alpha-2, from `to`), null when it cannot be
    told; in every answer carrying messages, and a filter in any case."""
    reports = [report("np", to="9779801912821"), report("ch", to="41793026727"),
               report("unknown", to="not a number")]
    response = await client.post("/webhooks/ib", content=body(*reports), headers=BASIC)
    assert response.status_code == 200, response.text
    listed = (await client.get("/v1/messages", headers=READ)).json()["items"]
    assert {m["message_id"]: m["country"] for m in listed} == {
        "np": "NP", "ch": "CH", "unknown": None}
    one = (await client.get("/v1/messages/ib/np", headers=READ)).json()
    assert (one["to"], one["country"], one["operator"]) == ("+9779801912821", "NP", "Ncell")
    changes = (await client.get("/v1/changes", headers=READ)).json()["items"]
    assert {m["message_id"]: m["country"] for m in changes} == {
        "np": "NP", "ch": "CH", "unknown": None}
    for value, expected in (("NP", ["np"]), ("np", ["np"]), ("Ch", ["ch"]), ("US", [])):
        page = (await client.get("/v1/messages", params={"country": value}, headers=READ)).json()
        assert [m["message_id"] for m in page["items"]] == expected, value


@pytest.mark.parametrize("country", ["NPL", "N", "N1", "", "ñp", "+977"])
async def test_a_country_is_two_letters(client: Client, country: str) -> None:
    response = await client.get("/v1/messages", params={"country": country}, headers=READ)
    assert response.status_code == 400, response.text
    assert response.json()["detail"]
