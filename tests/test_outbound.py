"""Registering sent messages, matching reports to them, listing gaps, and looking gaps up."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, rules, store, worker
from service.app import create_app
from service.config import DiceSmsSource, InfobipSource
from service.providers import dicesms, http
from service.providers import infobip as infobip_wire
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.providers.infobip.fake import FakeInfobip
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN, make_settings
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
AN_HOUR_AGO = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
FAST = http.Retry(attempts=2, base_s=0.01)


def sent(**fields: Any) -> dict[str, Any]:
    return {"source": "ib", "sent_at": AN_HOUR_AGO, "to": "+41793026727"} | fields


async def test_registration_is_idempotent_and_visible(client: Client) -> None:
    batch = [sent(message_id="m1", callback_data="order-1", bulk_id="b1"),
             sent(callback_data="order-2")]
    first = await client.post("/v1/outbound", json=batch, headers=WRITE)
    assert first.json() == {"registered": 2, "already_known": 0, "rejected": [],
                            "rejected_count": 0}
    again = await client.post("/v1/outbound", json=batch, headers=WRITE)
    assert again.json() == {"registered": 0, "already_known": 2, "rejected": [],
                            "rejected_count": 0}
    message = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert (message["status"], message["callback_data"], message["bulk_id"]) == \
        ("PENDING", "order-1", "b1")


async def test_report_matched_by_message_id_carries_what_was_registered(client: Client) -> None:
    await client.post("/v1/outbound", json=[sent(message_id="m1", callback_data="order-1")],
                      headers=WRITE)
    await client.post("/webhooks/ib", content=body(report("m1")), headers=BASIC)
    message = (await client.get("/v1/messages/ib/m1", headers=READ)).json()
    assert (message["status"], message["callback_data"]) == ("DELIVERED", "order-1")


@pytest.mark.parametrize("report_first", [False, True])
async def test_a_provider_report_outranks_the_registration_whatever_the_order(
        client: Client, report_first: bool) -> None:
    """Every field the provider reports is the provider's; the registration fills in the rest."""
    registration = sent(message_id="m4", callback_data="cb-4", to="+41793026834",
                        bulk_id="zz-registered", sent_at="2026-11-01T10:00:00.500Z")
    reported = report("m4", callbackData="cb-1", bulkId=None, doneAt=None,
                      status={"groupId": 1, "groupName": "PENDING"})
    steps = [client.post("/v1/outbound", json=[registration], headers=WRITE),
             client.post("/webhooks/ib", content=body(reported), headers=BASIC)]
    for step in (steps[::-1] if report_first else steps):
        assert (await step).status_code == 200
    message = (await client.get("/v1/messages/ib/m4", headers=READ)).json()
    assert (message["callback_data"], message["to"], message["sent_at"]) == \
        ("cb-1", "+41793026727", "2026-11-01T10:00:00Z")
    assert (message["status"], message["bulk_id"]) == ("PENDING", "zz-registered")
    assert {o["channel"] for o in message["history"]} == {"outbound", "push"}


async def test_a_message_says_how_it_matched_a_registration(client: Client) -> None:
    await client.post("/v1/outbound", headers=WRITE, json=[
        sent(message_id="m1", callback_data="order-1"), sent(callback_data="order-3"),
        sent(callback_data="ç" * 4000)])
    await client.post("/webhooks/ib", headers=BASIC, content=body(
        report("m1"), report("ib-9", callbackData="order-3"),
        report("ib-10", callbackData="ç" * 4000), report("ib-11", callbackData="order-1"),
        report("ib-12", callbackData="order-9"), report("ib-13")))
    expected = {"m1": "message_id", "ib-9": "callback_data", "ib-10": "callback_data",
                "ib-11": None, "ib-12": None, "ib-13": None}
    for message_id, how in expected.items():
        one = (await client.get(f"/v1/messages/ib/{message_id}", headers=READ)).json()
        assert one["matched_by"] == how, message_id
    listed, cursor = {}, None
    while True:
        page = (await client.get("/v1/messages", headers=READ, params={
            "source": "ib", "limit": 4} | ({"cursor": cursor} if cursor else {}))).json()
        listed |= {m["message_id"]: m["matched_by"] for m in page["items"]}
        if (cursor := page["next_cursor"]) is None:
            break
    assert listed == expected
    changed = (await client.get("/v1/changes", headers=READ)).json()["items"]
    assert {m["message_id"]: m["matched_by"] for m in changed} == expected
    # another source's message with the same id or callback data matches nothing
    await client.post("/webhooks/ib-open", content=body(report("m1", callbackData="order-3")))
    other = (await client.get("/v1/messages/ib-open/m1", headers=READ)).json()
    assert (other["callback_data"], other["matched_by"]) == ("order-3", None)


async def test_another_message_with_registered_callback_data_is_refused_not_lost(
        client: Client) -> None:
    first = sent(callback_data="order-7", sent_at="2026-11-01T10:00:00Z")
    other = sent(callback_data="order-7", sent_at="2026-11-01T10:05:00Z")
    assert (await client.post("/v1/outbound", json=[first], headers=WRITE)).json()[
        "registered"] == 1
    again = await client.post("/v1/outbound", json=[first, other, first], headers=WRITE)
    assert again.status_code == 200
    assert again.json() == {"registered": 0, "already_known": 2, "rejected_count": 1,
                            "rejected": [{"index": 1, "reason": (
        "$[1].callback_data: already registered for another message of this source "
        "(sent_at 2026-11-01T10:00:00Z); give message_id to tell them apart")}]}
    gaps = (await client.get("/v1/gaps", params={"older_than": "1s"}, headers=READ)).json()
    assert [(g["callback_data"], g["sent_at"]) for g in gaps["items"]] == [
        ("order-7", "2026-11-01T10:00:00Z")]
    # with message ids, both are registered
    both = await client.post("/v1/outbound", headers=WRITE, json=[
        first | {"message_id": "m-7a"}, other | {"message_id": "m-7b"}])
    assert both.json()["registered"] == 2


async def test_in_one_request_the_first_registers_and_the_second_is_refused(
        client: Client) -> None:
    answer = (await client.post("/v1/outbound", headers=WRITE, json=[
        sent(callback_data="order-8", to="+41793026727"), sent(message_id="m-9"),
        sent(callback_data="order-8", to="+41793026834")])).json()
    assert (answer["registered"], answer["already_known"], answer["rejected_count"]) == (2, 0, 1)
    assert answer["rejected"][0]["index"] == 2
    assert "give message_id to tell them apart" in answer["rejected"][0]["reason"]


async def test_concurrent_registrations_of_one_callback_data_register_one(
        client: Client) -> None:
    requests = [client.post("/v1/outbound", headers=WRITE, json=[
        sent(callback_data="order-10", sent_at=f"2026-11-01T10:00:0{i}Z")]) for i in range(8)]
    answers = [r.json() for r in await asyncio.gather(*requests)]
    assert sorted(a["registered"] for a in answers) == [0] * 7 + [1]
    assert sorted(a["rejected_count"] for a in answers) == [0] + [1] * 7
    gaps = (await client.get("/v1/gaps", params={"older_than": "1s"}, headers=READ)).json()
    assert len(gaps["items"]) == 1


async def test_gaps_by_message_id_and_by_callback_data(client: Client) -> None:
    await client.post("/v1/outbound", headers=WRITE, json=[
        sent(message_id="m1"), sent(message_id="m2"), sent(callback_data="order-3"),
        sent(callback_data="order-4")])
    await client.post("/webhooks/ib", headers=BASIC, content=body(
        report("m1"), report("ib-9", callbackData="order-3"),
        report("ib-10", callbackData="order-4", status={"groupId": 1, "groupName": "PENDING"})))
    gaps = (await client.get("/v1/gaps", params={"older_than": "30m"}, headers=READ)).json()
    found = {(g["message_id"], g["callback_data"], g["status"]) for g in gaps["items"]}
    assert found == {("m2", None, "PENDING"), ("ib-10", "order-4", "PENDING")}
    later = await client.get("/v1/gaps", params={"older_than": "2h"}, headers=READ)
    assert later.json()["items"] == []


@pytest.mark.parametrize(("payload", "message"), [
    ([sent(source="nope", message_id="x")], "unknown source"),
    ([sent()], "give message_id or callback_data"),
    ([sent(message_id="x", sent_at="2026-11-01T10:00:00")], "timezone"),
    ([sent(message_id="x", sent_at="0001-01-01T00:00:00+14:00")], "$[0].sent_at: out of range"),
    ([sent(message_id="x", sent_at="9999-12-31T23:59:59-23:59")], "$[0].sent_at: out of range"),
    ([sent(message_id="x", colour="red")], "unknown field"),
    ({"not": "a list"}, "array"),
])
async def test_bad_registrations_are_400(client: Client, payload: object, message: str) -> None:
    response = await client.post("/v1/outbound", json=payload, headers=WRITE)
    assert response.status_code == 400
    assert message in str(response.json())


async def test_registration_needs_write_scope(client: Client) -> None:
    response = await client.post("/v1/outbound", json=[sent(message_id="m")], headers=READ)
    assert response.status_code == 403


async def test_bad_grace_period_is_400(client: Client) -> None:
    response = await client.get("/v1/gaps", params={"older_than": "soon"}, headers=READ)
    assert response.status_code == 400


@pytest.mark.parametrize(("version", "look_up"), [
    (3, "/sms/3/logs?messageId=lost-push&limit=1000&useCursor=true"),
    (1, "/sms/1/logs?messageId=lost-push")])
async def test_pull_looks_up_registered_messages_still_open(
        client: Client, engine: AsyncEngine, version: Literal[1, 3], look_up: str) -> None:
    await client.post("/v1/outbound", headers=WRITE, json=[
        sent(message_id="lost-push"), sent(message_id="recent",
                                           sent_at=datetime.now(UTC).isoformat())])
    with FakeInfobip() as fake:
        fake.logs["lost-push"] = report("lost-push", group_id=2, status_id=9)
        async with httpx.AsyncClient() as http_client:
            result = await worker.pull(engine, http_client,
                                       InfobipSource("ib", fake.url, api_key=fake.api_key,
                                                     api_version=version),
                                       "t", http.Retry(attempts=2, base_s=0.01))
        assert look_up in fake.requests
        assert not any("recent" in r for r in fake.requests)  # too young to chase
    assert result is not None and result.error is None
    message = (await client.get("/v1/messages/ib/lost-push", headers=READ)).json()
    assert message["status"] == "UNDELIVERABLE"


async def test_a_dicesms_registration_matches_the_reports_by_its_derived_id(
        engine: AsyncEngine, database_url: str) -> None:
    """DiceSMS reports carry neither message id nor callback data: a registration's id is
    derived from its recipient (read in the source's region) and its sent_at."""
    with FakeDiceSms() as fake:
        fake.messages = [
            DiceMessage(9842000000, "2025-11-04T17:00:45.126760+05:45", "batch-1", "1",
                        "2025-11-04T17:01:00+05:45"),
            DiceMessage(9837107012, "2025-11-04T17:00:46.000001+05:45", "batch-1")]
        source = DiceSmsSource("dice", fake.url, token=fake.token)
        settings = make_settings(sources=make_settings().sources | {"dice": source})
        async with AsyncTestClient(app=create_app(settings, database_url)) as dice_client:
            answer = await dice_client.post("/v1/outbound", headers=WRITE, json=[
                sent(source="dice", to="9842000000", sent_at="2025-11-04T11:15:45.126760Z"),
                sent(source="dice", to="+977 983-7107012", callback_data="order-1",
                     sent_at="2025-11-04T11:15:46.000001+00:00",
                     message_id="+9779837107012@2025-11-04T11:15:46.000001Z"),
                sent(source="ib", message_id="i-1", to="9779837107012")])
            assert answer.json() == {"registered": 3, "already_known": 0, "rejected": [],
                                     "rejected_count": 0}
            async with httpx.AsyncClient() as http_client:
                await worker.pull(engine, http_client, source, "t", FAST)
            delivered = (await dice_client.get(
                "/v1/messages/dice/+9779842000000@2025-11-04T11:15:45.126760Z",
                headers=READ)).json()
            assert (delivered["status"], delivered["to"], delivered["matched_by"],
                    delivered["bulk_id"]) == ("DELIVERED", "+9779842000000", "message_id",
                                              "batch-1")
            gaps = (await dice_client.get("/v1/gaps", params={"older_than": "1s"},
                                          headers=READ)).json()["items"]
            assert [(g["source"], g["message_id"], g["to"], g["status"]) for g in gaps] == [
                ("dice", "+9779837107012@2025-11-04T11:15:46.000001Z", "+9779837107012",
                 "PENDING"),
                ("ib", "i-1", "+9779837107012", "PENDING")]


@pytest.mark.parametrize(("item", "reason"), [
    (sent(source="dice", to=None, callback_data="order-1"),
     "$[0].to: a DiceSMS registration needs `to`"),
    (sent(source="dice", to="9842000000", sent_at="2025-11-04T11:15:45Z", message_id="d-1"),
     "$[0].message_id: a DiceSMS message id is derived from `to` and `sent_at`: "
     "'+9779842000000@2025-11-04T11:15:45.000000Z'; give that one or none"),
])
async def test_a_dicesms_registration_that_cannot_match_is_refused(
        database_url: str, engine: AsyncEngine, item: dict[str, Any], reason: str) -> None:
    settings = make_settings(sources=make_settings().sources | {
        "dice": DiceSmsSource("dice", "http://127.0.0.1:9", token="t")})
    async with AsyncTestClient(app=create_app(settings, database_url)) as dice_client:
        answer = await dice_client.post("/v1/outbound", headers=WRITE,
                                        json=[item, sent(message_id="i-2")])
    assert answer.json()["registered"] == 1
    assert answer.json()["rejected"][0]["reason"].startswith(reason)


@st.composite
def sendings(draw: st.DrawFn) -> tuple[str, datetime, datetime]:
    """A DiceSMS recipient as sent, and one moment as DiceSMS and as the sender spell it."""
    number = draw(st.sampled_from(["98", "97", "96", "01", "1"])) + draw(
        st.text("0123456789", min_size=6, max_size=9))
    moment = draw(st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1),
                               timezones=st.just(UTC)))
    offsets = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
    return number, moment.astimezone(timezone(timedelta(hours=5, minutes=45))), \
        moment.astimezone(draw(offsets))


@settings(max_examples=200)
@given(sendings(), st.sampled_from(["", "+977", "977", "+977 "]))
def test_a_registration_names_what_the_reports_will(
        case: tuple[str, datetime, datetime], prefix: str) -> None:
    """A registration is normalised as the provider's reports are: a DiceSMS one gets the
    id and recipient its report derives, an Infobip one the recipient its report carries."""
    number, reported_at, registered_at = case
    spelled = prefix + number
    dice = DiceSmsSource("dice", "http://127.0.0.1:9", token="t")
    [reported] = dicesms.to_reports(dice, dicesms.StatusTable({}), msgspec.convert(
        {"recipients": [{"client_phone": spelled}], "sent_at": reported_at.isoformat()},
        dicesms.SmsReport), None)
    registered = dice.identify(spelled, registered_at, None)
    assert registered == (reported.to, reported.message_id)
    if not prefix:  # a national number, read in the source's region
        assert registered[0] == rules.recipient(number, "NP").to
    infobip = InfobipSource("ib", "http://127.0.0.1:9")
    wire = infobip_wire.to_report("ib", msgspec.convert(
        report("m", to=spelled), infobip_wire.SmsReport))
    assert infobip.identify(spelled, registered_at, "m") == (wire.to, "m")


# --- registration outcomes, through the store ---------------------------------------------

@pytest.fixture(scope="module")
def runner(database_url: str) -> Iterator[tuple[asyncio.Runner, AsyncEngine]]:
    with asyncio.Runner() as run:
        engine = db.create_engine(database_url)
        yield run, engine
        run.run(engine.dispose())


T0 = datetime(2026, 11, 1, tzinfo=UTC)
registrations = st.builds(
    store.Registration, source=st.just("ib"),
    sent_at=st.sampled_from([T0, T0 + timedelta(microseconds=1)]),
    message_id=st.sampled_from([None, None, "m-1", "m-2"]),
    callback_data=st.sampled_from(["cb-1", "cb-2", "ç" * 4000]),
    bulk_id=st.sampled_from([None, "b"]), to=st.sampled_from([None, "+41793026727"]))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(registrations, min_size=1, max_size=8), st.data())
def test_every_registration_is_registered_known_or_refused(
        runner: tuple[asyncio.Runner, AsyncEngine], rows: list[store.Registration],
        data: st.DataObject) -> None:
    """Whatever the batches: the first registration of a key holds it; a later one is known
    when it is the same (or has a message id), else refused naming the holder."""
    run, engine = runner
    source = uuid.uuid4().hex
    rows = [msgspec.structs.replace(r, source=source) for r in rows]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(rows) - 1), max_size=3))
                  if len(rows) > 1 else set())
    batches = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]

    async def apply() -> list[store.Outcome]:
        outcomes = []
        for batch in batches:
            async with db.transaction(engine) as conn:
                outcomes += await store.register_outbound(conn, batch)
        return outcomes

    holders: dict[tuple[str, str | None], store.Registration] = {}
    for row, outcome in zip(rows, run.run(apply()), strict=True):
        key = ("id", row.message_id) if row.message_id else ("callback", row.callback_data)
        holder = holders.setdefault(key, row)
        assert outcome.new == (holder is row)
        refused = row.message_id is None and holder != row
        assert outcome.held_by == (holder if refused else None)


# --- paging -------------------------------------------------------------------------------

async def pages(client: Client, path: str, headers: dict[str, str], limit: int,
                **params: Any) -> list[list[Any]]:
    """Every page of a keyset-paginated list, following next_cursor."""
    found, cursor = [], None
    while True:
        answer = await client.get(path, headers=headers, params=params | {"limit": limit} | (
            {"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        found.append(answer.json()["items"])
        if (cursor := answer.json()["next_cursor"]) is None:
            return found


async def test_gaps_page_without_skipping_or_repeating(client: Client) -> None:
    same_time = "2026-11-01T10:00:00Z"
    await client.post("/v1/outbound", headers=WRITE, json=[
        *[sent(message_id=f"m{i:02}", sent_at=same_time) for i in range(9)],
        *[sent(message_id=f"n{i:02}", sent_at=f"2026-11-01T09:00:0{i}.00000{i}Z")
          for i in range(6)],
        sent(callback_data="order-many", sent_at=same_time)])
    # the callback data registration matches three messages: one gap row each
    await client.post("/webhooks/ib", headers=BASIC, content=body(*[
        report(f"ib-{i}", callbackData="order-many", status={"groupId": 1, "groupName": "PENDING"})
        for i in range(3)]))
    [everything] = await pages(client, "/v1/gaps", READ, 1000, older_than="1s")
    assert len(everything) == 9 + 6 + 3
    for limit in (1, 2, 4, 7, 17, 18):
        paged = await pages(client, "/v1/gaps", READ, limit, older_than="1s")
        assert [g for page in paged for g in page] == everything
        assert len(paged) == -(-len(everything) // limit)  # no empty last page


async def test_runs_page_newest_first(client: Client, engine: AsyncEngine) -> None:
    async with db.transaction(engine) as conn:
        for i in range(11):
            await store.start_run(conn, "ib" if i % 3 else "dice")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    [everything] = await pages(client, "/v1/runs", admin, 1000)
    assert [r["id"] for r in everything] == list(range(11, 0, -1))
    for limit, source in ((1, None), (3, None), (4, "ib"), (2, "dice")):
        paged = await pages(client, "/v1/runs", admin, limit, **({"source": source} if source else {}))
        assert [r for page in paged for r in page] == [
            r for r in everything if source in (None, r["source"])]


@pytest.mark.parametrize("path", ["/v1/gaps", "/v1/runs"])
@pytest.mark.parametrize("cursor", [
    "garbage!", "bm90IGpzb24", base64.urlsafe_b64encode(b'["x"]').decode(),
    base64.urlsafe_b64encode(b"[-1]").decode(),
    base64.urlsafe_b64encode(b'["2026-11-01T10:00:00", 1, ""]').decode(),
    base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+14:00", 1, ""]').decode(),
    base64.urlsafe_b64encode(b'["2026-11-01T10:00:00Z", 9223372036854775808, ""]').decode()])
async def test_a_bad_cursor_is_400(client: Client, path: str, cursor: str) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answer = await client.get(path, params={"cursor": cursor}, headers=admin)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == "cursor is not one this API returned"
