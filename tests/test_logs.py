"""Logs: JSON lines, one per request, with phone numbers masked and no secret ever written."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest
from litestar.testing import AsyncTestClient

from service.logs import JsonFormatter, mask
from tests.conftest import READ_TOKEN
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.mark.parametrize(("text", "expected"), [
    ("+9779842271353", "+97798******53"),
    ("to 9842271353 and +41793026727", "to 984227**53 and +41793****27"),
    ("order-42 at 10:00", "order-42 at 10:00"),
])
def test_mask(text: str, expected: str) -> None:
    assert mask(text) == expected


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


async def test_requests_are_logged_without_secrets_or_numbers(client: Client,
                                                              captured: io.StringIO) -> None:
    basic = base64.b64encode(b"hook:hook-password").decode()
    await client.post("/webhooks/ib", content=body(report("m1", to="41793026727")),
                      headers={"Authorization": f"Basic {basic}"})
    await client.post("/webhooks/ib", content=b"{broken", headers={"Authorization": f"Basic {basic}"})
    await client.get("/v1/messages/dice/+9779842271353@2025-11-04T11:15:45.126760Z",
                     headers={"Authorization": f"Bearer {READ_TOKEN}"})
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    requests = [line for line in lines if line["logger"] == "service.http"]
    assert [r["status"] for r in requests] == [200, 400, 404]
    assert all({"time", "level", "message", "ms"} <= set(r) for r in requests)
    text = captured.getvalue()
    for secret in ("hook-password", basic, READ_TOKEN, "41793026727", "9779842271353"):
        assert secret not in text
    assert "+97798******53" in text
    scraped = (await client.get("/metrics")).text
    assert 'dlr_webhook_requests_total{source="ib",status="200"}' in scraped
    assert 'dlr_webhook_requests_total{source="ib",status="400"}' in scraped
