"""Pulls held to their cost: each pass records the records its pages held (`records_fetched`
in /v1/runs), which is what each kind's fake counts it returned; a simulated day of passes,
the clock moved from pass to pass, reads each record about twice at most and ends with what
the provider has."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import service.app  # noqa: F401 (the provider kinds, before the configuration)
from service import simulate, store, worker
from service.config import DiceSmsSource, InfobipSource, load_settings
from service.providers import http, registry
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.providers.fakes import FakeServer
from service.providers.infobip import infobip_time as ib_time
from service.providers.infobip import pull as infobip_pull
from service.providers.infobip.fake import FakeInfobip, as_v3
from service.providers.registry import Source
from service.providers.sinch import SinchSource
from service.providers.sinch import message_id as sinch_message_id
from service.providers.sinch.fake import Batch, FakeSinch, Recipient
from service.providers.twilio import TwilioSource
from service.providers.twilio.fake import FakeTwilio, message
from service.providers.vonage import VonageSource
from service.providers.vonage.fake import FakeVonage, record
from service.tables import messages
from tests.conftest import ADMIN_TOKEN
from tests.reports import report

FAST = http.Retry(attempts=2, base_s=0.01)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ACCOUNT, KEY = "AC" + "0" * 32, "abcd1234"


async def pulled(engine: AsyncEngine, source: Source) -> worker.RunResult:
    async with httpx.AsyncClient() as provider_client:
        result = await worker.pull(engine, provider_client, source, "t", FAST)
    assert result is not None and result.error is None, result
    return result


def infobip() -> tuple[FakeServer, Callable[[str], Source]]:
    fake = FakeInfobip()
    fake.queue(*[report(f"m{i}") for i in range(3)])
    return fake, lambda url: InfobipSource("ib", url, api_key=fake.api_key)


def dicesms() -> tuple[FakeServer, Callable[[str], Source]]:
    fake = FakeDiceSms(page_size=2)
    fake.messages = [DiceMessage(9779842271300 + i, f"2026-11-01T10:00:0{i}.000000Z", "B1")
                     for i in range(5)]
    return fake, lambda url: DiceSmsSource("dice", url, token=fake.token)


def twilio() -> tuple[FakeServer, Callable[[str], Source]]:
    fake = FakeTwilio(ACCOUNT)
    now = datetime.now(UTC)
    fake.add(*[message(ACCOUNT, f"SM{i:032d}", "+14155552671", "delivered",
                       now - timedelta(hours=1, minutes=i)) for i in range(4)])
    return fake, lambda url: TwilioSource("tw", url, account_sid=ACCOUNT,
                                          auth_token=fake.auth_token)


def vonage() -> tuple[FakeServer, Callable[[str], Source]]:
    fake = FakeVonage(KEY, "api-secret")
    now = datetime.now(UTC)
    fake.add(*[record(KEY, f"0C{i:014X}", "447700900001", "delivered",
                      now - timedelta(hours=1, seconds=i), now - timedelta(minutes=59),
                      price=Decimal("0.0333")) for i in range(4)])
    return fake, lambda url: VonageSource("vg", url, api_key=KEY, api_secret="api-secret")


def sinch() -> tuple[FakeServer, Callable[[str], Source]]:
    fake = FakeSinch("plan0001", "sinch-token")
    now = datetime.now(UTC)
    fake.add(*[Batch(f"B{i}", now - timedelta(hours=1, minutes=i),
                     [Recipient(f"44770090{i}{j:03d}", "Dispatched", 401) for j in range(3)])
               for i in range(2)])
    return fake, lambda url: SinchSource("sn", url, service_plan_id="plan0001",
                                         api_token="sinch-token")


@pytest.mark.parametrize("kind", [infobip, dicesms, twilio, vonage, sinch])
async def test_each_run_records_the_records_its_pages_held(
        engine: AsyncEngine, client: Any,
        kind: Callable[[], tuple[FakeServer, Callable[[str], Source]]]) -> None:
    fake, source_for = kind()
    with fake:
        result = await pulled(engine, source_for(fake.url))
    assert result.records_fetched == fake.records_returned > 0
    [run] = (await client.get("/v1/runs", headers=ADMIN)).json()["items"]
    assert run["records_fetched"] == fake.records_returned
    schema = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]["Run"]
    assert schema["properties"]["records_fetched"] == {"type": "integer"}
    assert "records_fetched" in schema["required"]


class Clock:
    """The time passes go by, moved by the test."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


DAY_START = datetime(2026, 11, 2, tzinfo=UTC)
EVERY = timedelta(seconds=300)  # pull_interval_s: 289 passes from midnight to midnight


async def a_day_of_passes(engine: AsyncEngine, source: Source, fake: FakeServer,
                          move: Callable[[datetime], None]) -> int:
    """Pass after pass over a day, the provider's data moved to each pass's time first; the
    records fetched (checked against what the fake returned)."""
    clock = Clock(DAY_START)
    fetched = 0
    async with httpx.AsyncClient() as provider_client:
        while clock.at <= DAY_START + timedelta(days=1):
            move(clock.at)
            result = await worker.pull(engine, provider_client, source, "t", FAST, clock=clock)
            assert result is not None and result.error is None, result
            fetched += result.records_fetched
            clock.at += EVERY
    assert fetched == fake.records_returned
    return fetched


class Life:
    """One message over the day: when the provider has it, lists it, and knows its end."""

    def __init__(self, i: int, count: int, rnd: random.Random) -> None:
        self.i = i
        self.sent = DAY_START + timedelta(seconds=i * 86000 / count + rnd.uniform(0, 60))
        late = rnd.random()  # listed within two minutes, a few only after half an hour
        self.listed = self.sent + timedelta(seconds=rnd.uniform(0, 120) if late < 0.98
                                            else rnd.uniform(1800, 3600))
        settles = rnd.random()  # final within minutes mostly, some hours later, some never
        self.done: datetime | None = self.sent + timedelta(seconds=(
            rnd.uniform(10, 300) if settles < 0.7 else rnd.uniform(300, 3600)
            if settles < 0.9 else rnd.uniform(3600, 8 * 3600)))
        if settles > 0.98:
            self.done = None
        self.delivered = rnd.random() < 0.9

    def final_at(self, now: datetime) -> bool:
        return self.done is not None and self.done <= now


def lives(count: int) -> list[Life]:
    rnd = random.Random(20261102)
    return [Life(i, count, rnd) for i in range(count)]


async def statuses(engine: AsyncEngine, source: str) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(messages.c.message_id, messages.c.status)
                                  .where(messages.c.source == source))
        return {row.message_id: row.status for row in rows}


async def test_a_day_of_vonage_passes_reads_each_record_about_twice(engine: AsyncEngine) -> None:
    """Vonage bills each record returned: a day of passes every 5 minutes over N messages
    reads at most 2N records (once settled, once in the day's whole re-read), and ends with
    every status Vonage has; each pass re-reading the day would read ~144N."""
    count = 400
    day = lives(count)

    def move(now: datetime) -> None:
        fake.records = {}
        for life in day:
            if life.listed <= now:
                final = life.final_at(now)
                part = record(KEY, f"0D{life.i:014X}", "447700900001",
                              ("delivered" if life.delivered else "failed") if final
                              else "accepted", life.sent, life.done if final else None,
                              error_code="0" if life.delivered or not final else "1")
                fake.records[part["message_id"]] = part

    with FakeVonage(KEY, "api-secret") as fake:
        source = VonageSource("vg", fake.url, api_key=KEY, api_secret="api-secret")
        fetched = await a_day_of_passes(engine, source, fake, move)
        expected = {key: {"delivered": "DELIVERED", "failed": "UNDELIVERABLE",
                          "accepted": "PENDING"}[part["status"]]
                    for key, part in fake.records.items()}
    assert len(expected) == count
    assert fetched <= 2 * count, fetched
    assert await statuses(engine, "vg") == expected


async def test_a_day_of_twilio_passes_reads_each_message_about_twice(
        engine: AsyncEngine) -> None:
    """A day of passes every 5 minutes over N messages lists at most 2N of them (once
    settled, once in the day's whole re-read) and ends with every status and price Twilio
    has; each pass listing the last two days would list ~288N."""
    count = 400
    day = lives(count)

    def move(now: datetime) -> None:
        fake.messages = {}
        for life in day:
            if life.listed <= now:
                final = life.final_at(now)
                fake.add(message(ACCOUNT, f"SM{life.i:032d}", "+14155552671",
                                 ("delivered" if life.delivered else "undelivered") if final
                                 else "sent", life.sent, price=Decimal("0.0079") if final
                                 else None, updated=life.done if final else None))

    with FakeTwilio(ACCOUNT) as fake:
        source = TwilioSource("tw", fake.url, account_sid=ACCOUNT, auth_token=fake.auth_token)
        fetched = await a_day_of_passes(engine, source, fake, move)
        expected = {sid: {"delivered": "DELIVERED", "undelivered": "UNDELIVERABLE",
                          "sent": "PENDING"}[m["status"]] for sid, m in fake.messages.items()}
    assert len(expected) == count
    assert fetched <= 2 * count, fetched
    assert await statuses(engine, "tw") == expected


async def test_a_day_of_sinch_passes_reads_each_batch_and_report_about_twice(
        engine: AsyncEngine) -> None:
    """A day of passes every 5 minutes over N batches of two (half of their messages
    registered) lists each batch and reads each report about twice at most (once settled,
    once in the day's whole re-read, if not final by then), and ends with every status Sinch
    has; each pass listing the day and looking up every open registration read far more."""
    count = 200
    day = lives(count)

    def batch(life: Life) -> Batch:
        return Batch(f"B{life.i:04d}", life.sent, [Recipient(
            f"4477009{life.i:04d}{j}", "Dispatched", 401) for j in range(2)])

    async with engine.begin() as conn:
        await store.register_outbound(conn, [store.Registration(
            "sn", life.sent, message_id=sinch_message_id(f"B{life.i:04d}", f"+4477009{life.i:04d}0"),
            to=f"+4477009{life.i:04d}0") for life in day if life.i % 2])

    def move(now: datetime) -> None:
        fake.batches = {}
        for life in day:
            if life.listed <= now:
                listed = batch(life)
                if life.final_at(now):
                    for r in listed.recipients:
                        r.status, r.code = ("Delivered", 0) if life.delivered else ("Failed", 402)
                        r.at = life.done
                fake.add(listed)

    with FakeSinch("plan0001", "sinch-token") as fake:
        source = SinchSource("sn", fake.url, service_plan_id="plan0001", api_token="sinch-token")
        fetched = await a_day_of_passes(engine, source, fake, move)
        expected = {sinch_message_id(b.id, f"+{r.msisdn}"): {
            "Delivered": "DELIVERED", "Failed": "UNDELIVERABLE", "Dispatched": "PENDING"}[r.status]
            for b in fake.batches.values() for r in b.recipients}
    assert len(expected) == 2 * count
    assert fetched <= 2 * (count + 2 * count), fetched  # the batches and their recipients
    assert await statuses(engine, "sn") == expected


async def test_a_day_of_infobip_passes_looks_each_open_message_up_about_once(
        engine: AsyncEngine) -> None:
    """Every report lost, N messages registered over the day: a day of passes every 5
    minutes reads at most 2N logs (each registration once when due, the ones still open
    again every few hours), and ends with every status Infobip's logs have; looking up every
    open registration at every pass re-read the slow ones up to 288 times a day."""
    count = 400
    day = lives(count)
    async with engine.begin() as conn:
        await store.register_outbound(conn, [store.Registration(
            "ib", life.sent, message_id=f"MSG-{life.i:05d}", to="+41793026727") for life in day])

    def move(now: datetime) -> None:
        fake.logs = {}
        for life in day:
            if life.listed <= now:
                final = life.final_at(now)
                group = (3 if life.delivered else 2) if final else 1
                fake.logs[f"MSG-{life.i:05d}"] = as_v3(report(
                    f"MSG-{life.i:05d}", group_id=group, sentAt=ib_time(life.sent),
                    doneAt=ib_time(life.done) if final and life.done else None))

    with FakeInfobip() as fake:
        source = InfobipSource("ib", fake.url, api_key=fake.api_key)
        fetched = await a_day_of_passes(engine, source, fake, move)
        expected = {key: {3: "DELIVERED", 2: "UNDELIVERABLE", 1: "PENDING"}[
            log["status"]["groupId"]] for key, log in fake.logs.items()}
    assert len(expected) == count
    assert fetched <= 2 * count, fetched
    assert await statuses(engine, "ib") == expected


@pytest.mark.parametrize("name", ["tw", "vg", "sn"])
async def test_local_sources_find_simulated_messages_sent_an_hour_back(
        engine: AsyncEngine, name: str) -> None:
    """`simulate` sends its messages an hour back, which a running `serve` has read past
    long before: deploy/local.toml's sources read their whole lookback again every minute."""
    settings = load_settings({"DLR_CONFIG": str(Path(__file__).parent.parent / "deploy" /
                                                 "local.toml")})
    source = settings.sources[name]
    kind = registry.provider(source).kind
    scenario_kind, fake_kind, credentials = simulate.FAKES[kind]
    user, secret = credentials(source)
    clock = Clock(datetime.now(UTC))
    with fake_kind(user, secret) as fake:
        local = msgspec.structs.replace(source, base_url=fake.url, webhook=None)
        async with httpx.AsyncClient() as provider_client:
            async def passes(seconds: float) -> None:
                until = clock.at + timedelta(seconds=seconds)
                while clock.at < until:
                    clock.at += timedelta(seconds=local.pull_interval_s)
                    result = await worker.pull(engine, provider_client, local, "t", FAST,
                                               clock=clock)
                    assert result is not None and result.error is None, result

            await passes(120)  # serve has been pulling for a while
            extra = {"hook": source.webhook} if kind == "vonage" else {}
            scenario = scenario_kind(20, source=name, account_sid=user, **extra)
            scenario.load(fake)
            await passes(70)
    expected = {key for _, key in scenario.truth}
    if kind == "twilio":  # never sent (canceled): no DateSent to list it by, only a callback
        expected -= {r["sid"] for r in scenario.resources if r["date_sent"] is None}
    assert expected <= set(await statuses(engine, name))


async def test_a_whole_look_up_too_long_for_one_pass_goes_on_in_the_next(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """More open registrations than a pass looks up: the next pass goes on after the last
    one looked up (that one again, as others may share its send time), not from the start."""
    monkeypatch.setattr(infobip_pull, "OPEN_PER_RUN", 3)
    clock = Clock(datetime(2026, 11, 2, 12, tzinfo=UTC))
    async with engine.begin() as conn:
        await store.register_outbound(conn, [store.Registration(
            "ib", clock.at - timedelta(hours=1, seconds=-i), message_id=f"OPEN-{i}")
            for i in range(7)])

    def asked(requests: list[str]) -> list[set[str]]:
        return [set(parse_qs(urlsplit(r).query)["messageId"][0].split(","))
                for r in requests if r.startswith("/sms/3/logs")]

    with FakeInfobip() as fake:
        source = InfobipSource("ib", fake.url, api_key=fake.api_key)
        async with httpx.AsyncClient() as provider_client:
            for _ in range(4):
                await worker.pull(engine, provider_client, source, "t", FAST, clock=clock)
                clock.at += EVERY
    assert asked(fake.requests) == [{"OPEN-0", "OPEN-1", "OPEN-2"},
                                    {"OPEN-2", "OPEN-3", "OPEN-4"},
                                    {"OPEN-4", "OPEN-5", "OPEN-6"}, {"OPEN-6"}]
