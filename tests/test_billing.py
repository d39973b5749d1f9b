"""GET /v1/billing/summary: exact totals, unchanged by duplicates, replays and reordering."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, store
from service.config import DiceSmsSource
from service.providers import dicesms
from service.tables import billing_rollup, messages
from tests.conftest import READ_TOKEN, make_settings
from tests.databases import scratch_database
from tests.reports import body, pushed, report

Client = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
NOVEMBER = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}


def fixture_reports() -> list[dict[str, Any]]:
    """Six messages; prices written as the provider would, including float-hostile ones."""
    rows = [  # id, sentAt, parts, price, currency, final group
        ("a", "2026-11-01T10:00:00.000+0000", 1, "0.1", "EUR", 3),
        ("b", "2026-11-01T20:00:00.000+0000", 3, "0.1", "EUR", 2),  # 01:45 on the 2nd in Nepal
        ("c", "2026-11-02T09:00:00.000+0000", 2, "0.2", "EUR", 3),
        ("d", "2026-11-02T09:30:00.000+0000", 1, "0.0125", "USD", 3),
        ("e", "2026-11-30T23:59:59.999+0000", 2, "0.0125", "USD", 5),
        ("f", "2026-12-01T00:00:00.000+0000", 1, "9.99", "EUR", 3),  # outside November
    ]
    reports = []
    for message_id, sent, parts, price, currency, group in rows:
        for status in ({"groupId": 1, "groupName": "PENDING", "id": 7},
                       {"groupId": group, "groupName": {2: "UNDELIVERABLE", 3: "DELIVERED",
                                                        5: "REJECTED"}[group], "id": 5}):
            reports.append(report(message_id, sentAt=sent, smsCount=parts, status=status,
                                  price={"pricePerMessage": f"<{price}>", "currency": currency}))
    return reports


def encode(reports: list[dict[str, Any]]) -> bytes:
    raw = body(*reports)
    for price in ("0.1", "0.2", "0.0125", "9.99"):  # as JSON numbers, not strings
        raw = raw.replace(f'"<{price}>"'.encode(), price.encode())
    return raw


async def summary(client: Client, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/billing/summary", params=NOVEMBER | params, headers=READ)
    assert response.status_code == 200, response.text
    return list(response.json()["rows"])


EXPECTED_BY_CURRENCY = [
    {"currency": "EUR", "messages": 3, "parts": 6, "amount": "0.8", "unpriced": 0},  # .1+.3+.4
    {"currency": "USD", "messages": 2, "parts": 3, "amount": "0.0375", "unpriced": 0}, # .0125+.025
]


async def test_totals_equal_a_hand_computed_sum(client: Client) -> None:
    assert (await client.post("/webhooks/ib", content=encode(fixture_reports()),
                              headers=BASIC)).status_code == 200
    assert await summary(client) == EXPECTED_BY_CURRENCY
    by_day = await summary(client, group_by="day,status")
    assert [(r["day"], r["status"], r["currency"], r["amount"]) for r in by_day] == [
        ("2026-11-01", "DELIVERED", "EUR", "0.1"),
        ("2026-11-01", "UNDELIVERABLE", "EUR", "0.3"),
        ("2026-11-02", "DELIVERED", "EUR", "0.4"),
        ("2026-11-02", "DELIVERED", "USD", "0.0125"),
        ("2026-11-30", "REJECTED", "USD", "0.025"),
    ]
    nepal = await summary(client, group_by="day", tz="Asia/Kathmandu")
    assert [(r["day"], r["currency"], r["messages"]) for r in nepal] == [
        ("2026-11-01", "EUR", 1), ("2026-11-02", "EUR", 2), ("2026-11-02", "USD", 1),
        ("2026-12-01", "USD", 1)]


async def test_duplicates_replays_and_reordering_change_nothing(
        client: Client, engine: AsyncEngine) -> None:
    reports = fixture_reports()
    await client.post("/webhooks/ib", content=encode(reports), headers=BASIC)
    first = await summary(client, group_by="day,source,status")
    shuffled = reports * 3
    random.Random(4).shuffle(shuffled)
    for i in range(0, len(shuffled), 5):
        await client.post("/webhooks/ib", content=encode(shuffled[i:i + 5]), headers=BASIC)
    await ingest.replay(engine, make_settings().sources, only_unaccepted=False)
    assert await summary(client, group_by="day,source,status") == first
    assert await summary(client) == EXPECTED_BY_CURRENCY
    total = sum(Decimal(r["amount"]) for r in first if r["currency"] == "EUR")
    assert total == Decimal("0.8")


async def test_csv(client: Client) -> None:
    await client.post("/webhooks/ib", content=encode(fixture_reports()), headers=BASIC)
    response = await client.get("/v1/billing/summary", params=NOVEMBER | {"group_by": "source"},
                                headers=READ | {"Accept": "text/csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines() == ["source,currency,messages,parts,amount,unpriced",
                                          "ib,EUR,3,6,0.8,0", "ib,USD,2,3,0.0375,0"]


@pytest.mark.parametrize(("params", "message"), [
    ({"group_by": "colour"}, "group_by"),
    ({"tz": "Mars/Olympus"}, "tz"),
    ({"from": "2026-11-01T00:00:00"}, "time zone"),
    ({"to": "soon"}, "ISO 8601"),
    ({"from": "2026-12-01T00:00:00Z"}, "after"),
])
async def test_bad_parameters(client: Client, params: dict[str, str], message: str) -> None:
    response = await client.get("/v1/billing/summary", params=NOVEMBER | params, headers=READ)
    assert response.status_code == 400
    assert message in response.json()["detail"]


async def test_missing_range_is_400(client: Client) -> None:
    response = await client.get("/v1/billing/summary", headers=READ)
    assert response.status_code == 400


async def test_bulk_summary(client: Client) -> None:
    reports = [r | {"bulkId": "bulk-x"} for r in fixture_reports()]
    await client.post("/webhooks/ib", content=encode(reports), headers=BASIC)
    bulk = (await client.get("/v1/bulks/ib/bulk-x", headers=READ)).json()
    assert (bulk["messages"], bulk["final"], bulk["parts"]) == (6, 6, 10)
    assert bulk["statuses"] == {"DELIVERED": 4, "REJECTED": 1, "UNDELIVERABLE": 1}
    assert bulk["money"] == [{"currency": "EUR", "parts": 7, "amount": "10.79"},
                             {"currency": "USD", "parts": 3, "amount": "0.0375"}]
    assert (bulk["first_sent_at"], bulk["last_sent_at"]) == ("2026-11-01T10:00:00Z",
                                                             "2026-12-01T00:00:00Z")
    assert bulk["delivery_rate"] == round(4 / 6, 4)
    assert (await client.get("/v1/bulks/ib/nope", headers=READ)).status_code == 404


async def test_grouped_by_operator(client: Client) -> None:
    await client.post("/webhooks/ib", content=encode(fixture_reports()), headers=BASIC)
    rows = await summary(client, group_by="operator")
    assert [(r["operator"], r["currency"], r["messages"]) for r in rows] == [
        ("Swisscom", "EUR", 3), ("Swisscom", "USD", 2)]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
KEYS = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
CELLS = st.one_of(KEYS, st.tuples(st.sampled_from(FORMULA_STARTS), KEYS).map("".join))


def read_cell(cell: str) -> str:
    """What a CSV cell said before it was escaped: one quote off a formula-like cell."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.lists(st.tuples(CELLS, CELLS, CELLS, CELLS), min_size=1, max_size=4),
       amounts=st.lists(st.decimals(-1000, 1000, places=4), min_size=4, max_size=4))
async def test_csv_cells_cannot_become_formulas(client: Client, engine: AsyncEngine,
                                                groups: list[tuple[str, ...]],
                                                amounts: list[Decimal]) -> None:
    """Group keys come from providers: any that a spreadsheet would run is quoted; numbers stay."""
    async with engine.begin() as conn:
        await conn.execute(sa.delete(messages))
        await conn.execute(sa.insert(messages), [
            {"source": source, "message_id": f"m{i}", "status": status, "final": True,
             "obs_hash": b"", "operator": operator, "price_currency": currency,
             "price_amount": amounts[i], "sms_count": i + 1, "seq": i,
             "sent_at": datetime(2026, 11, 2, tzinfo=UTC)}
            for i, (source, operator, status, currency) in enumerate(groups)])
    params = NOVEMBER | {"group_by": "source,operator,status,currency"}
    expected = await summary(client, **params)
    response = await client.get("/v1/billing/summary", params=params,
                                headers=READ | {"Accept": "text/csv"})
    header, *lines = csv.reader(io.StringIO(response.text, newline=""))
    assert header == ["source", "operator", "status", "currency", "messages", "parts", "amount",
                      "unpriced"]
    assert len(lines) == len(expected)
    for line, row in zip(lines, expected, strict=True):
        keys, numbers = line[:4], line[4:]
        assert not any(cell.startswith(FORMULA_STARTS) for cell in keys), line
        assert [read_cell(cell) for cell in keys] == [row[k] or "" for k in header[:4]]
        assert numbers == [str(row["messages"]), str(row["parts"]), row["amount"],
                           str(row["unpriced"])]


async def test_every_key_asked_for_is_in_every_row_null_included(client: Client) -> None:
    """A message without a price has no currency, one without a known network no operator:
    the row says null, it does not drop the key."""
    free = report("free", to="999", price=None, mccMnc=None)
    assert (await client.post("/webhooks/ib", content=encode([free]),
                              headers=BASIC)).status_code == 200
    rows = await summary(client, group_by="operator,source")
    assert rows == [{"operator": None, "source": "ib", "currency": None, "messages": 1,
                     "parts": 1, "amount": "0", "unpriced": 1}]
    assert "day" not in rows[0]  # not asked for


def test_rebuild_billing_makes_the_rollup_again(server_url: str) -> None:
    """A rollup in doubt (here: emptied by hand) is made again from the merged messages."""
    with scratch_database(server_url) as url:
        async def seed_then_break() -> None:
            engine = db.create_engine(db.asyncpg_url(url))
            try:
                await ingest.write(engine, [pushed("ib", body(
                    report("a", smsCount=2), report("b", price={"pricePerMessage": 0.25,
                                                                  "currency": "NPR"})))])
                async with db.transaction(engine) as conn:
                    await conn.execute(sa.delete(billing_rollup))
            finally:
                await engine.dispose()

        asyncio.run(seed_then_break())
        result = subprocess.run([sys.executable, "-m", "service", "rebuild-billing"],
                                env=os.environ | {"DLR_DATABASE_URL": url}, capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "2 rows" in result.stdout

        async def compare() -> None:
            engine = db.create_engine(db.asyncpg_url(url))
            try:
                async with db.transaction(engine) as conn:
                    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
                    keys = list(store.BILLING_KEYS)
                    assert [tuple(r) for r in await store.billing(conn, since, until, keys, "UTC")] \
                        == [tuple(r) for r in await store.billing_from_messages(
                            conn, since, until, keys, "UTC")]
            finally:
                await engine.dispose()

        asyncio.run(compare())


async def test_time_zone_names_are_read_once(client: Client,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the zones walks the tz database (milliseconds of CPU): not once per request."""
    import zoneinfo
    calls = 0
    listed = zoneinfo.available_timezones()

    def counted() -> set[str]:
        nonlocal calls
        calls += 1
        return set(listed)

    monkeypatch.setattr(zoneinfo, "available_timezones", counted)
    for tz in ("UTC", "Asia/Kathmandu", "Europe/Zurich", "Mars/Olympus"):
        response = await client.get("/v1/billing/summary", params=NOVEMBER | {"tz": tz},
                                    headers=READ)
        assert response.status_code == (400 if tz == "Mars/Olympus" else 200)
    assert calls <= 1


async def test_one_row_per_network_and_per_country(client: Client, engine: AsyncEngine) -> None:
    """DiceSMS's numbers are named by phonenumbers ("NCell"), Infobip's by their MCC+MNC
    ("Ncell"): one network, so one operator; grouped by country too, in JSON and CSV."""
    ncell = report("ib-ncell", to="9779801912821", mccMnc="42902")
    assert (await client.post("/webhooks/ib", content=encode([ncell, report("ib-ch")]),
                              headers=BASIC)).status_code == 200
    dice = DiceSmsSource("dice", "https://dicesms.asia", token="t")
    item = {"message": "hi", "sent_at": "2026-11-01T15:45:00+05:45", "status": "SENT",
            "delivered_at": None, "recipients": [{"client_phone": 9801912822}]}
    await ingest.write(engine, [ingest.decode(
        dice, "pull", json.dumps([item]).encode(), "application/json",
        lambda raw: dicesms.decode_batch_report(dice, dicesms.StatusTable({}), "b-1", raw))])
    rows = await summary(client, group_by="country,operator")
    assert [(r["country"], r["operator"], r["currency"], r["messages"]) for r in rows] == [
        ("CH", "Swisscom", "EUR", 1), ("NP", "Ncell", "EUR", 1), ("NP", "Ncell", None, 1)]
    by_country = await client.get("/v1/billing/summary", params=NOVEMBER | {
        "group_by": "country"}, headers=READ | {"Accept": "text/csv"})
    assert by_country.text.splitlines() == ["country,currency,messages,parts,amount,unpriced",
                                            "CH,EUR,1,1,0.01,0", "NP,EUR,1,1,0.01,0",
                                            "NP,,1,1,0,1"]
