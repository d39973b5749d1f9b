"""Lossy, duplicated, reordered pushes plus the reconciler's pulls converge on the truth."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
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


@pytest.mark.parametrize("make", [
    lambda n, seed: simulate.Scenario(n, seed),
    lambda n, seed: simulate.TwilioScenario(n, seed),
    lambda n, seed: simulate.VonageScenario(n, seed),
    lambda n, seed: simulate.VonageScenario(n, seed, grouped=True),
    lambda n, seed: simulate.SinchScenario(n, seed)])
@pytest.mark.parametrize("messages", [1, 2, 31, 300])
def test_messages_means_that_many_in_all_and_each_seed_invents_others(
        make: Any, messages: int) -> None:
    first, again, other = make(messages, 1), make(messages, 1), make(messages, 2)
    assert len(first.truth) == len(other.truth) == messages
    assert first.truth.keys() == again.truth.keys()  # a seed repeats its run
    assert not first.truth.keys() & other.truth.keys()  # another invents other messages


def test_differences_are_one_line_per_field_with_json_values() -> None:
    truth = {("ib", "m1"): {"status": "DELIVERED", "done_at": datetime(2026, 11, 1, 8, 0, 1,
                                                                       tzinfo=UTC),
                            "price": {"amount": "0.01", "currency": "EUR"}, "sms_count": 2},
             ("ib", "m2"): {"status": "DELIVERED"}}
    merged = {("ib", "m1"): {"status": "PENDING", "done_at": None,
                             "price": {"amount": "0.02", "currency": "EUR"}, "sms_count": 2}}
    assert simulate.differences(truth, merged) == [
        'ib/m1: status is "PENDING", expected "DELIVERED"',
        'ib/m1: done_at is null, expected "2026-11-01T08:00:01Z"',
        'ib/m1: price is {"amount": "0.02", "currency": "EUR"}, expected {"amount": "0.01", '
        '"currency": "EUR"}',
        "ib/m2: not in the service"]
    lines = [f"ib/m{i}: not in the service" for i in range(23)]
    assert simulate.shown(lines) == [*lines[:20], "... and 3 more differences not shown"]
    assert simulate.shown(lines[:20]) == lines[:20]


def test_one_time_reports_another_puller_took_are_counted() -> None:
    scenario = simulate.Scenario(60, seed=4)
    assert scenario.lost_finals
    with FakeInfobip() as fake_ib, FakeDiceSms() as fake_dice:
        scenario.load(fake_ib, fake_dice)
        assert scenario.taken_elsewhere(fake_ib, scenario.differences({})) == 0
        # another setup's reconciler, pulling the same address with the same key
        taken = httpx.get(f"{fake_ib.url}/sms/3/reports", params={"limit": "1000"},
                          headers={"Authorization": f"App {fake_ib.api_key}"}).json()["results"]
    assert len(taken) == len(scenario.lost_finals)
    differing = scenario.differences({})  # none of them reached this service
    lost = {r["messageId"] for r in scenario.lost_finals}
    assert scenario.taken_elsewhere(fake_ib, differing) == len(lost)
    assert scenario.taken_elsewhere(fake_ib, []) == 0  # nothing differs: nothing went astray


def test_simulate_without_the_sources_it_fakes_says_what_is_missing(tmp_path: Path) -> None:
    from service.config import load_settings
    from service.errors import ConfigError

    with pytest.raises(ConfigError, match="simulate --infobip ib: no source named 'ib': "
                                          "DLR_CONFIG is not set"):
        simulate.plan(load_settings({}), "infobip", messages=10, seed=1)
    with pytest.raises(ConfigError, match="simulate --provider twilio needs a twilio source: "
                                          "DLR_CONFIG is not set"):
        simulate.plan(load_settings({}), "twilio", messages=10, seed=1)
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "ib"\nkind = "dicesms"\nbase_url = "http://127.0.0.1:9"\n')
    with pytest.raises(ConfigError, match="simulate --infobip ib: a dicesms source, not infobip"):
        simulate.plan(load_settings({"DLR_CONFIG": str(config)}), "infobip", messages=10, seed=1)
