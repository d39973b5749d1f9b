"""Lossy, duplicated, reordered pushes plus the reconciler's pulls converge on the truth."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, Literal

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import simulate, worker
from service.app import create_app
from service.config import BasicAuth, DiceSmsSource, InfobipSource, WebhookConfig
from service.providers import http
from service.providers.base import TwilioSignatureAuth, VonageSignatureAuth
from service.providers.dicesms.fake import FakeDiceSms
from service.providers.infobip.fake import FakeInfobip
from service.providers.sinch import SinchSource
from service.providers.sinch.fake import FakeSinch
from service.providers.twilio import TwilioSource
from service.providers.twilio.fake import FakeTwilio
from service.providers.vonage import VonageSource
from service.providers.vonage.fake import FakeVonage
from tests.conftest import READ_TOKEN, make_settings


@pytest.mark.parametrize("version", [3, 1])
async def test_pushes_and_pulls_converge_to_the_truth(engine: AsyncEngine, database_url: str,
                                                      version: Literal[1, 3]) -> None:
    scenario = simulate.Scenario(messages=300, seed=7, loss=0.2, duplicates=0.1,
                                 api_version=version)
    assert scenario.lost_finals  # some finals really were lost in transit
    with FakeInfobip() as fake_ib, FakeDiceSms(page_size=40) as fake_dice:
        scenario.load(fake_ib, fake_dice)
        ib = InfobipSource("ib", fake_ib.url, api_key=fake_ib.api_key, api_version=version,
                           webhook=WebhookConfig(basic=BasicAuth("hook", "pw")))
        dice = DiceSmsSource("dice", fake_dice.url, token=fake_dice.token)
        app = create_app(make_settings(sources={"ib": ib, "dice": dice}), database_url)
        async with AsyncTestClient(app=app) as client:
            await simulate.push(client, scenario, simulate.hook_headers(ib.webhook))
            before = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
            assert before, "pushes alone should not be complete"
            async with httpx.AsyncClient() as provider_client:
                for source in (ib, dice, ib, dice):  # a second pass must change nothing
                    result = await worker.pull(engine, provider_client, source, "t",
                                               http.Retry(attempts=2, base_s=0.01))
                    assert result is not None and result.error is None
            after = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
    assert after == []


async def test_twilio_callbacks_and_pulls_converge_to_the_truth(engine: AsyncEngine,
                                                                 database_url: str) -> None:
    scenario = simulate.TwilioScenario(messages=200, seed=3)
    with FakeTwilio(scenario.account_sid, "tw-token") as fake:
        scenario.load(fake)
        tw = TwilioSource("tw", fake.url, account_sid=scenario.account_sid,
                          auth_token="tw-token", webhook=WebhookConfig(
                              twilio_signature=TwilioSignatureAuth(
                                  ["tw-token"], "https://hooks.example.com/webhooks/tw")))
        app = create_app(make_settings(sources={"tw": tw}), database_url)
        async with AsyncTestClient(app=app) as client:
            await simulate.push(client, scenario, simulate.hook_headers(tw.webhook))
            before = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
            assert before, "pushes alone should not be complete"
            async with httpx.AsyncClient() as provider_client:
                for _ in range(2):  # a second pass must change nothing
                    result = await worker.pull(engine, provider_client, tw, "t",
                                               http.Retry(attempts=2, base_s=0.01))
                    assert result is not None and result.error is None
            after = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
    assert after == []


@pytest.mark.parametrize("grouped", [False, True])
async def test_vonage_part_receipts_and_pulls_converge_to_the_truth(engine: AsyncEngine,
                                                                    database_url: str,
                                                                    grouped: bool) -> None:
    """Each part a message, two messages sometimes sharing a client-ref; or, where the
    source declares its client-refs unique, each client-ref's parts one message."""
    hook = WebhookConfig(vonage_signature=VonageSignatureAuth("vg-signature-secret", "sha512"))
    scenario = simulate.VonageScenario(messages=200, seed=5, hook=hook, grouped=grouped)
    if grouped:
        assert any(t["sms_count"] > 1 for t in scenario.truth.values())
    else:
        refs = [t["callback_data"] for t in scenario.truth.values()]
        assert len(set(refs)) < len(refs)
    assert {t["status"] for t in scenario.truth.values()} >= {"DELIVERED", "EXPIRED"}
    with FakeVonage(scenario.api_key, "vg-secret") as fake:
        scenario.load(fake)
        vg = VonageSource("vg", fake.url, api_key=scenario.api_key, api_secret="vg-secret",
                          webhook=hook, client_ref_unique=grouped)
        app = create_app(make_settings(sources={"vg": vg}), database_url)
        async with AsyncTestClient(app=app) as client:
            await simulate.push(client, scenario, simulate.hook_headers(vg.webhook))
            before = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
            assert before, "pushes alone should not be complete"
            async with httpx.AsyncClient() as provider_client:
                for _ in range(2):  # a second pass must change nothing
                    result = await worker.pull(engine, provider_client, vg, "t",
                                               http.Retry(attempts=2, base_s=0.01))
                    assert result is not None and result.error is None
            after = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
    assert after == []


async def test_every_provider_at_once_bills_as_its_fake_says(engine: AsyncEngine,
                                                             database_url: str) -> None:
    """Infobip, DiceSMS, Twilio, Vonage and Sinch into one database: the billing summary by
    source and currency is exactly what the fakes' messages add up to."""
    ib_dice = simulate.Scenario(messages=120, seed=11)
    tw_scenario = simulate.TwilioScenario(messages=120, seed=12)
    vg_hook = WebhookConfig(vonage_signature=VonageSignatureAuth("vg-signature-secret"))
    vg_scenario = simulate.VonageScenario(messages=120, seed=13, hook=vg_hook)
    sn_scenario = simulate.SinchScenario(messages=120, seed=14)
    with FakeInfobip() as fake_ib, FakeDiceSms(page_size=40) as fake_dice, \
            FakeTwilio(tw_scenario.account_sid, "tw-token") as fake_tw, \
            FakeVonage(vg_scenario.api_key, "vg-secret") as fake_vg, \
            FakeSinch(sn_scenario.service_plan_id, "sn-token") as fake_sn:
        ib_dice.load(fake_ib, fake_dice)
        tw_scenario.load(fake_tw)
        vg_scenario.load(fake_vg)
        sn_scenario.load(fake_sn)
        sources = {
            "ib": InfobipSource("ib", fake_ib.url, api_key=fake_ib.api_key,
                                webhook=WebhookConfig(basic=BasicAuth("hook", "pw"))),
            "dice": DiceSmsSource("dice", fake_dice.url, token=fake_dice.token),
            "tw": TwilioSource("tw", fake_tw.url, account_sid=tw_scenario.account_sid,
                               auth_token="tw-token", webhook=WebhookConfig(
                                   twilio_signature=TwilioSignatureAuth(
                                       ["tw-token"], "https://hooks.example.com/webhooks/tw"))),
            "vg": VonageSource("vg", fake_vg.url, api_key=vg_scenario.api_key,
                               api_secret="vg-secret", webhook=vg_hook),
            "sn": SinchSource("sn", fake_sn.url, service_plan_id=sn_scenario.service_plan_id,
                              api_token="sn-token", webhook=WebhookConfig(
                                  basic=BasicAuth("sinch", "pw"))),
        }
        app = create_app(make_settings(sources=sources), database_url)
        async with AsyncTestClient(app=app) as client:
            pushing = [(ib_dice, "ib"), (tw_scenario, "tw"), (vg_scenario, "vg"),
                       (sn_scenario, "sn")]
            await asyncio.gather(*[simulate.push(client, scenario, simulate.hook_headers(
                sources[name].webhook)) for scenario, name in pushing])
            async with httpx.AsyncClient() as provider_client:
                results = await asyncio.gather(*[worker.pull(
                    engine, provider_client, source, "t", http.Retry(attempts=2, base_s=0.01))
                    for source in sources.values()])
            assert all(r is not None and r.error is None for r in results)
            merged = await simulate.fetch_all(client, READ_TOKEN)
            truth = ib_dice.truth | tw_scenario.truth | vg_scenario.truth | sn_scenario.truth
            assert simulate.differences(truth, merged) == []
            billed = (await client.get("/v1/billing/summary", headers={
                "Authorization": f"Bearer {READ_TOKEN}"}, params={
                "from": "2026-01-01T00:00:00Z", "to": "2099-01-01T00:00:00Z",
                "group_by": "source,currency"})).json()["rows"]
    expected: dict[tuple[str, str | None], list[Any]] = {}
    for key, want in truth.items():
        if merged[key]["sent_at"] is None:  # never sent (a canceled Twilio message): unbilled
            continue
        source, price = key[0], want["price"]
        row = expected.setdefault((source, price and price["currency"]), [0, 0, Decimal(0)])
        parts = want["sms_count"] or 1
        row[0] += 1
        row[1] += parts
        row[2] += Decimal(price["amount"]) * parts if price else 0
    got = {(r["source"], r["currency"]): [r["messages"], r["parts"], Decimal(r["amount"])]
           for r in billed}
    assert got == expected
    assert {source for source, _ in got} == {"ib", "dice", "tw", "vg", "sn"}


async def test_sinch_recipient_reports_and_pulls_converge_to_the_truth(
        engine: AsyncEngine, database_url: str) -> None:
    scenario = simulate.SinchScenario(messages=200, seed=9)
    with FakeSinch(scenario.service_plan_id, "sn-token") as fake:
        scenario.load(fake)
        sn = SinchSource("sn", fake.url, service_plan_id=scenario.service_plan_id,
                         api_token="sn-token", webhook=WebhookConfig(
                             basic=BasicAuth("sinch", "pw")))
        app = create_app(make_settings(sources={"sn": sn}), database_url)
        async with AsyncTestClient(app=app) as client:
            await simulate.push(client, scenario, simulate.hook_headers(sn.webhook))
            before = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
            assert before, "pushes alone should not be complete"
            async with httpx.AsyncClient() as provider_client:
                for _ in range(2):  # a second pass must change nothing
                    result = await worker.pull(engine, provider_client, sn, "t",
                                               http.Retry(attempts=2, base_s=0.01))
                    assert result is not None and result.error is None
            after = scenario.differences(await simulate.fetch_all(client, READ_TOKEN))
    assert after == []
