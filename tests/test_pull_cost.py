"""Pulls held to their cost: each pass records the records its pages held (`records_fetched`
in /v1/runs), which is what each kind's fake counts it returned."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service import worker
from service.config import DiceSmsSource, InfobipSource
from service.providers import http
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.providers.fakes import FakeServer
from service.providers.infobip.fake import FakeInfobip
from service.providers.registry import Source
from service.providers.sinch import SinchSource
from service.providers.sinch.fake import Batch, FakeSinch, Recipient
from service.providers.twilio import TwilioSource
from service.providers.twilio.fake import FakeTwilio, message
from service.providers.vonage import VonageSource
from service.providers.vonage.fake import FakeVonage, record
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
