"""Label values come from configuration and closed sets: no request or provider grows /metrics."""

from __future__ import annotations

import itertools
import os
import random
import string
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import metrics, worker
from service.config import DiceSmsSource
from service.providers import http
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from tests.conftest import free_port
from tests.databases import scratch_database
from tests.services import hooked_config, serving

Client = AsyncTestClient  # type: ignore[type-arg]
FAST = http.Retry(attempts=3, base_s=0.01, max_s=0.05)
# Each shape once with random parts; the second round may only move the counts.
SHAPES = [("OPTIONS", "/webhooks/{}"), ("POST", "/webhooks/{}"), ("GET", "/schema/{}"),
          ("GET", "/v1/messages/{}/{}"), ("GET", "/v1/bulks/{}/{}"), ("GET", "/{}/{}"),
          ("DELETE", "/v1/messages/{}"), ("PROPFIND", "/{}"), ("GET", "/health/{}"),
          ("OPTIONS", "/{}")]
EXAMPLES = itertools.count()
ALPHABET = string.ascii_letters + string.digits + "-_.~%+@:é\u2028"


def random_request(rng: random.Random) -> tuple[str, str]:
    method, shape = rng.choice(SHAPES)
    parts = ["".join(rng.choices(ALPHABET, k=rng.randint(1, 24))) for _ in range(2)]
    return method, shape.format(*parts).replace("%", "%0A")


async def test_random_requests_do_not_grow_metrics(client: Client) -> None:
    rng = random.Random(20261130)
    for method, path in [random_request(rng) for _ in range(200)]:
        await client.request(method, path)
    before = len((await client.get("/metrics")).content)
    for _ in range(5000):
        method, path = random_request(rng)
        await client.request(method, path)
    after = len((await client.get("/metrics")).content)
    assert after - before < 4096


def test_random_requests_to_serve_do_not_grow_metrics(server_url: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    config = hooked_config(tmp_path, "labels-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port())}
        with serving(env, "--no-reconciler") as served, served.client() as client:
            def send(count: int) -> int:
                for _ in range(count):
                    method, path = random_request(rng)
                    client.request(method, path)
                return len(client.get("/metrics").content)

            before = send(200)
            after = send(2000)
    assert after - before < 4096


def days(first: date, count: int) -> dict[str, int]:
    return {f"sms:metrics:enqueue:d:{first + timedelta(days=i):%Y%m%d}": 10 + i
            for i in range(count)}


def shown_days(source: str) -> set[str]:
    return {sample.labels["day"] for metric in REGISTRY.collect()
            if metric.name == "dlr_provider_count_missing" for sample in metric.samples
            if sample.labels["source"] == source}


async def pull_dice(engine: AsyncEngine, fake: FakeDiceSms, name: str) -> worker.RunResult:
    source = DiceSmsSource(name, fake.url, token=fake.token)
    async with httpx.AsyncClient() as client:
        result = await worker.pull(engine, client, source, "test", FAST)
    assert result is not None and result.error is None, result
    return result


async def test_provider_day_counts_keep_a_window_of_days(engine: AsyncEngine) -> None:
    with FakeDiceSms() as fake:
        fake.snapshot = days(date(2025, 1, 1), 60)
        await pull_dice(engine, fake, "dice-window")
        assert shown_days("dice-window") == {f"{date(2025, 3, 1) - timedelta(days=i):%Y%m%d}"
                                             for i in range(7)}
        fake.snapshot = days(date(2025, 6, 1), 3)
        await pull_dice(engine, fake, "dice-window")
        assert shown_days("dice-window") == {"20250601", "20250602", "20250603"}


def unmapped_labels(source: str) -> dict[str, float]:
    return {sample.labels["status"]: sample.value for metric in REGISTRY.collect()
            if metric.name == "dlr_unmapped_statuses" for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["source"] == source}


async def test_unmapped_statuses_are_bounded(engine: AsyncEngine) -> None:
    statuses = [f"QUEUED_AT_SMSC_{i:03}_" + "x" * 20 for i in range(100)]
    with FakeDiceSms(page_size=50) as fake:
        fake.messages = [DiceMessage(9842271300 + i, f"2025-11-04T17:00:{i % 60:02}.{i:06}+05:45",
                                     "b", status) for i, status in enumerate(statuses)]
        await pull_dice(engine, fake, "dice-unmapped")
    labels = unmapped_labels("dice-unmapped")
    assert len(labels) <= metrics.UNMAPPED_PER_SOURCE + 1
    assert all(len(label) <= metrics.STATUS_LABEL_CHARS for label in labels)
    assert sum(labels.values()) >= len(statuses)  # each message counted once per pass it was in


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=200), st.integers(1, 5)), max_size=200))
def test_unmapped_status_labels_stay_few_and_short(seen: list[tuple[str, int]]) -> None:
    source = f"s{next(EXAMPLES)}"  # a source of its own for each example
    before = sum(unmapped_labels(source).values())
    for raw, count in seen:
        metrics.count_unmapped(source, raw, count)
    labels = unmapped_labels(source)
    assert len(labels) <= metrics.UNMAPPED_PER_SOURCE + 1
    assert all(len(label) <= metrics.STATUS_LABEL_CHARS for label in labels)
    assert sum(labels.values()) - before == sum(count for _, count in seen)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def labelled(metric: str, label: str, source: str) -> set[str]:
    return {sample.labels[label] for family in REGISTRY.collect() if family.name == metric
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["source"] == source}


COUNTED = [  # what counts, its metric and label, its slots
    (lambda source, name: metrics.count_unknown_field(source, name), "dlr_unknown_fields",
     "field", "UNKNOWN_FIELD_SLOTS"),
    (lambda source, name: metrics.count_unmapped(source, name, 1), "dlr_unmapped_statuses",
     "status", "UNMAPPED_SLOTS"),
]


@pytest.mark.parametrize(("count", "metric", "label", "slots"), COUNTED)
def test_label_slots_age_out_once_their_names_stop(monkeypatch: pytest.MonkeyPatch, count: Any,
                                                   metric: str, label: str, slots: str) -> None:
    """Names a provider sent once do not hold the slots for ever: once the slots are full,
    a new name takes the slot of the one seen least recently, if that was over a day ago."""
    clock = Clock()
    monkeypatch.setattr(getattr(metrics, slots), "clock", clock)
    source = f"aging-{next(EXAMPLES)}"
    size = getattr(metrics, slots).per_source
    noise = [f"noise-{i}" for i in range(size)]
    for name in noise:
        count(source, name)
    count(source, "real")  # every slot taken, each seen just now
    assert labelled(metric, label, source) == {*noise, "other"}

    clock.now += metrics.LABEL_IDLE_S / 2
    for name in noise[1:]:  # all but the first still come
        count(source, name)
    clock.now += metrics.LABEL_IDLE_S / 2 + 1
    count(source, "real")  # noise-0 was last seen a day and a second ago: its slot is free
    assert labelled(metric, label, source) == {*noise[1:], "real", "other"}
    count(source, "new-2")  # the others were seen half a day ago: no slot
    assert labelled(metric, label, source) == {*noise[1:], "real", "other"}
    count(source, "real")
    clock.now += metrics.LABEL_IDLE_S + 1
    count(source, "real")
    count(source, "new-2")  # the least recently seen of the idle ones goes
    assert labelled(metric, label, source) == {*noise[2:], "real", "new-2", "other"}
