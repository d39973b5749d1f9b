"""Rate cards through the database: estimates in messages and billing, outranked by reported
prices, and made again by `reprice` after a card is corrected."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, pricing, store
from service.providers import dicesms
from service.providers.infobip import InfobipSource
from service.tables import messages
from tests.conftest import PAYLOADS, READ_TOKEN
from tests.databases import scratch_database
from tests.reports import body, pushed, report
from tests.test_rules import billing_agrees

Client = AsyncTestClient  # type: ignore[type-arg]
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
NCELL, NTC, SWISS = "9779801912821", "9779842271353", "41793026727"
SMART = "9779612345678"  # Smart Telecom's range +97796


def rates(*lines: dict[str, str]) -> list[pricing.Rate]:
    return [msgspec.convert({"currency": "NPR"} | line, pricing.Rate) for line in lines]


# Two effective dates, three levels (operator, prefix, country) and a catch-all that does
# not cover Switzerland: its messages stay unpriced.
CARD = rates(
    {"price": "0.80", "country": "NP"},
    {"price": "0.70", "country": "NP", "from": "2026-11-15"},
    {"price": "0.60", "prefix": "+97796"},
    {"price": "0.50", "operator": "Ncell"},
    {"price": "0.40", "operator": "Ncell", "from": "2026-11-15"},
)
CARDED = InfobipSource("ibc", "http://127.0.0.1:1", rates=CARD)
EARLY, LATE = "2026-11-02T10:00:00.000+0000", "2026-11-20T10:00:00.000+0000"


def unpriced(message_id: str, to: str, sent: str, parts: int, **extra: Any) -> dict[str, Any]:
    return report(message_id, to=to, sentAt=sent, smsCount=parts, price=None, **extra)


CARDED_REPORTS = [  # id, to, sent, parts -> the rate that applies
    unpriced("n1", NCELL, EARLY, 3),  # Ncell 0.50 -> 1.50
    unpriced("n2", NCELL, LATE, 1),  # Ncell from 11-15: 0.40
    unpriced("s1", SMART, EARLY, 2),  # prefix +97796: 0.60 -> 1.20
    unpriced("s2", SMART, LATE, 1),  # the prefix has one date: 0.60
    unpriced("t1", NTC, EARLY, 1),  # Nepal 0.80
    unpriced("t2", NTC, LATE, 2),  # Nepal from 11-15: 0.70 -> 1.40
    unpriced("x1", SWISS, LATE, 2),  # no rate: unpriced
]


async def summary(client: Client, group_by: str) -> list[dict[str, Any]]:
    response = await client.get("/v1/billing/summary", headers=READ, params={
        "from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z", "group_by": group_by})
    assert response.status_code == 200, response.text
    return list(response.json()["rows"])


async def price_of(client: Client, source: str, message_id: str) -> Any:
    response = await client.get(f"/v1/messages/{source}/{message_id}", headers=READ)
    assert response.status_code == 200, response.text
    return response.json()["price"]


async def seqs(engine: AsyncEngine) -> dict[str, int]:
    async with db.transaction(engine) as conn:
        rows = await conn.execute(sa.select(messages.c.message_id, messages.c.seq))
        return {row.message_id: row.seq for row in rows}


async def test_billing_adds_up_per_origin(client: Client, engine: AsyncEngine) -> None:
    """Reported, estimated and unknown prices side by side: each row is exact, and the
    unknown ones are counted as unpriced, never as a free message."""
    await ingest.write(engine, [
        pushed("ib", body(report("r1", smsCount=2), report("r2", price={
            "pricePerMessage": 0.02, "currency": "EUR"}), unpriced("r3", SWISS, EARLY, 1))),
        pushed(CARDED, body(*CARDED_REPORTS))])
    assert await summary(client, "origin,source") == [
        {"origin": "rate_card", "source": "ibc", "currency": "NPR", "messages": 6, "parts": 10,
         "amount": "5.9", "unpriced": 0},  # 1.5 + 0.4 + 1.2 + 0.6 + 0.8 + 1.4
        {"origin": "reported", "source": "ib", "currency": "EUR", "messages": 2, "parts": 3,
         "amount": "0.04", "unpriced": 0},  # 2 x 0.01 + 0.02
        {"origin": None, "source": "ib", "currency": None, "messages": 1, "parts": 1,
         "amount": "0", "unpriced": 1},
        {"origin": None, "source": "ibc", "currency": None, "messages": 1, "parts": 2,
         "amount": "0", "unpriced": 1},
    ]
    assert await summary(client, "source") == [
        {"source": "ib", "currency": "EUR", "messages": 2, "parts": 3, "amount": "0.04",
         "unpriced": 0},
        {"source": "ib", "currency": None, "messages": 1, "parts": 1, "amount": "0",
         "unpriced": 1},
        {"source": "ibc", "currency": "NPR", "messages": 6, "parts": 10, "amount": "5.9",
         "unpriced": 0},
        {"source": "ibc", "currency": None, "messages": 1, "parts": 2, "amount": "0",
         "unpriced": 1},
    ]
    await billing_agrees(engine)
    assert await price_of(client, "ibc", "n2") == {
        "amount": "0.4", "currency": "NPR", "origin": "rate_card",
        "rate": {"operator": "Ncell", "from": "2026-11-15"}}
    assert await price_of(client, "ibc", "s1") == {
        "amount": "0.6", "currency": "NPR", "origin": "rate_card", "rate": {"prefix": "+97796"}}
    assert await price_of(client, "ib", "r2") == {
        "amount": "0.02", "currency": "EUR", "origin": "reported", "rate": None}
    assert await price_of(client, "ibc", "x1") is None


async def test_a_reported_price_replaces_an_estimate(client: Client, engine: AsyncEngine) -> None:
    """Whichever arrives first: the provider's price stands, and reprice leaves it."""
    priced = report("n1", to=NCELL, sentAt=EARLY, smsCount=3, status={
        "groupId": 3, "groupName": "DELIVERED", "id": 5},
        price={"pricePerMessage": 0.3, "currency": "NPR"})
    await ingest.write(engine, [pushed(CARDED, body(CARDED_REPORTS[0]))])
    assert (await price_of(client, "ibc", "n1"))["origin"] == "rate_card"
    before = await seqs(engine)
    await ingest.write(engine, [pushed(CARDED, body(priced))])
    assert await price_of(client, "ibc", "n1") == {
        "amount": "0.3", "currency": "NPR", "origin": "reported", "rate": None}
    assert (await seqs(engine))["n1"] > before["n1"]
    await ingest.write(engine, [pushed(CARDED, body(CARDED_REPORTS[0]))])  # the estimate again
    assert (await price_of(client, "ibc", "n1"))["origin"] == "reported"
    assert (await ingest.reprice(engine, [CARDED])).changed == 0
    assert (await price_of(client, "ibc", "n1"))["amount"] == "0.3"
    assert await summary(client, "origin") == [
        {"origin": "reported", "currency": "NPR", "messages": 1, "parts": 3, "amount": "0.9",
         "unpriced": 0}]
    await billing_agrees(engine)


async def test_reprice_after_a_correction_changes_exactly_the_affected_rows(
        client: Client, engine: AsyncEngine) -> None:
    await ingest.write(engine, [pushed(CARDED, body(*CARDED_REPORTS))])
    assert (await ingest.reprice(engine, [CARDED])).changed == 0  # as merged: nothing to do
    before = await seqs(engine)
    # Ncell's November rate was 0.45, not 0.40, and Switzerland gets a rate from the 15th.
    corrected = msgspec.structs.replace(CARDED, rates=[
        *[r for r in CARD if not (r.operator and r.from_)],
        *rates({"price": "0.45", "operator": "Ncell", "from": "2026-11-15"},
               {"price": "0.05", "currency": "EUR", "country": "CH", "from": "2026-11-15"})])
    result = await ingest.reprice(engine, [corrected])
    assert (result.examined, result.changed, result.skipped) == (7, 2, 0)
    after = await seqs(engine)
    assert {m for m in after if after[m] != before[m]} == {"n2", "x1"}
    assert min(after["n2"], after["x1"]) > max(before.values())  # on the change feed
    assert await price_of(client, "ibc", "x1") == {
        "amount": "0.05", "currency": "EUR", "origin": "rate_card",
        "rate": {"country": "CH", "from": "2026-11-15"}}
    assert await summary(client, "origin") == [
        {"origin": "rate_card", "currency": "EUR", "messages": 1, "parts": 2, "amount": "0.1",
         "unpriced": 0},
        {"origin": "rate_card", "currency": "NPR", "messages": 6, "parts": 10,
         "amount": "5.95", "unpriced": 0}]  # 5.9 - 0.40 + 0.45
    await billing_agrees(engine)
    again = await ingest.reprice(engine, [corrected])
    assert (again.examined, again.changed) == (7, 0)
    assert await seqs(engine) == after
    # The card taken away: the estimates go, and the messages are unpriced again; --since
    # leaves the earlier ones.
    bare = msgspec.structs.replace(CARDED, rates=[])
    since = datetime(2026, 11, 15, tzinfo=UTC)
    assert (await ingest.reprice(engine, [bare], since=since)).changed == 4
    rows = await summary(client, "origin")
    assert [(r["origin"], r["messages"], r["unpriced"]) for r in rows] == [
        ("rate_card", 3, 0), (None, 4, 4)]
    await billing_agrees(engine)


async def test_dicesms_messages_are_priced_and_their_parts_counted(
        client: Client, engine: AsyncEngine) -> None:
    """DiceSMS reports neither price nor parts: both come from its card and its texts."""
    source = dicesms.DiceSmsSource("dice", "https://dicesms.asia", token="t",
                                   rates=rates({"price": "0.45", "country": "NP"},
                                               {"price": "0.5", "operator": "Ncell"}))
    raw = (PAYLOADS / "dicesms" / "batch_report.json").read_bytes()
    decoder = dicesms.decoder(source, "https://dicesms.asia/api/sms-report/b-1/", None)
    envelope = ingest.decode(source, "pull", raw, "application/json", decoder)
    assert envelope.reports and not envelope.rejections
    await ingest.write(engine, [envelope])
    async with db.transaction(engine) as conn:
        rows = (await conn.execute(sa.select(messages))).all()
    assert rows and all(r.price_amount is not None and r.price_estimate > 0 for r in rows)
    assert all(r.sms_count == pricing.parts(r.text) for r in rows)
    expected = sum(r.price_amount * r.sms_count for r in rows)
    response = await client.get("/v1/billing/summary", headers=READ, params={
        "from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "group_by": "origin"})
    assert response.json()["rows"] == [
        {"origin": "rate_card", "currency": "NPR", "messages": len(rows),
         "parts": sum(r.sms_count for r in rows), "amount": format(expected.normalize(), "f"),
         "unpriced": 0}]
    message = (await client.get(f"/v1/messages/dice/{rows[0].message_id}", headers=READ)).json()
    assert message["price"]["origin"] == "rate_card"
    assert Decimal(message["price"]["amount"]) in (Decimal("0.45"), Decimal("0.5"))


def test_the_reprice_command(server_url: str, tmp_path: Path) -> None:
    config = tmp_path / "dlr.toml"
    config.write_text("""
[[sources]]
name = "ibc"
kind = "infobip"
base_url = "http://127.0.0.1:1"
[[sources.rates]]
price = "0.25"
currency = "NPR"
country = "NP"
""")
    with scratch_database(server_url) as url:
        async def seed() -> None:
            engine = db.create_engine(db.asyncpg_url(url))
            try:
                await ingest.write(engine, [pushed("ibc", body(*CARDED_REPORTS))])  # no card
            finally:
                await engine.dispose()

        asyncio.run(seed())
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config)}

        def reprice(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "service", "reprice", *args], env=env,
                                  capture_output=True, text=True, timeout=120, check=False)

        done = reprice("--source", "ibc", "--since", "2026-11-01T00:00:00Z")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("repriced 7 messages: 6 changed, 0 ")
        assert reprice().stdout.startswith("repriced 7 messages: 0 changed")
        unknown = reprice("--source", "nope")
        assert (unknown.returncode, unknown.stderr) == (
            2, f"config error: --source: no source named 'nope' in DLR_CONFIG ({config}); its "
               "sources: ibc\n")


async def test_reprice_leaves_a_row_a_report_changed_since_it_was_read(
        engine: AsyncEngine) -> None:
    """Written only where the row's seq is still the one read: a merge in between wins."""
    await ingest.write(engine, [pushed("ibc", body(CARDED_REPORTS[0]))])  # no card: unpriced
    async with db.transaction(engine) as conn:
        [row] = await store.estimated_page(conn, "ibc", None, None, 10)
    new = pricing.reestimate(row, pricing.card_of(CARD))
    assert new is not None
    await ingest.write(engine, [pushed(CARDED, body(unpriced("n1", NCELL, EARLY, 3, status={
        "groupId": 3, "groupName": "DELIVERED", "id": 5})))])
    async with db.transaction(engine) as conn:
        assert await store.set_estimates(conn, "ibc", [(row.message_id, row.seq, new)]) == 0
