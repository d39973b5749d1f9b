"""A demo and end-to-end check: fake providers, lossy pushes, and a diff against the truth.

A Scenario invents messages for an Infobip-compatible source (pushed in v3's shape, or
v1's, with loss, duplicates and reordering; what was lost is offered once by the one-time
reports) and a
DiceSMS source (pulled only). `converge()` pushes to a running service, then polls its
API until every message matches the truth or time runs out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx

from service import rules
from service.api.webhooks import sign
from service.config import WebhookConfig
from service.providers import dicesms
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.providers.infobip.fake import FakeInfobip, as_v1, as_v3

NPT = timezone(timedelta(hours=5, minutes=45))
GROUPS = {2: "UNDELIVERABLE", 3: "DELIVERED", 4: "EXPIRED"}


def _ib_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


class Scenario:
    def __init__(self, messages: int = 200, seed: int = 1, loss: float = 0.2,
                 duplicates: float = 0.1, ib_source: str = "ib", dice_source: str = "dice",
                 api_version: int = 3) -> None:
        rnd = random.Random(seed)  # noqa: S311 (a reproducible scenario, not a secret)
        self.ib_source, self.dice_source = ib_source, dice_source
        shape = as_v3 if api_version == 3 else as_v1
        start = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        self.pushes: list[dict[str, Any]] = []
        self.lost_finals: list[dict[str, Any]] = []
        self.truth: dict[tuple[str, str], dict[str, Any]] = {}
        for i in range(messages):
            sent = start + timedelta(seconds=i)
            done = sent + timedelta(seconds=rnd.randint(1, 600), milliseconds=rnd.randint(0, 999))
            group = rnd.choice([3, 3, 3, 2, 4])
            parts = rnd.randint(1, 3)
            price = Decimal(rnd.choice(["0.01", "0.0125", "0.2"]))
            message_id = f"sim-{seed}-{i}"
            common = {"bulkId": f"bulk-{i % 7}", "messageId": message_id,
                      "to": f"4179{3000000 + i}", "sentAt": _ib_time(sent), "smsCount": parts,
                      "callbackData": f"order-{i}", "from": f"Shop{i % 3}",
                      "price": {"pricePerMessage": float(price), "currency": "EUR"}}
            pending = common | {"doneAt": _ib_time(sent), "status": {
                "groupId": 1, "groupName": "PENDING", "id": 7, "name": "PENDING_ENROUTE"}}
            final = common | {"doneAt": _ib_time(done), "status": {
                "groupId": group, "groupName": GROUPS[group], "id": 5, "name": "FINAL"}}
            self.truth[(ib_source, message_id)] = {
                "status": GROUPS[group], "done_at": rules.utc(done.replace(
                    microsecond=done.microsecond // 1000 * 1000)),
                "price": {"amount": format(rules.money(price), "f"), "currency": "EUR",
                          "origin": "reported", "rate": None},
                "sms_count": parts, "callback_data": f"order-{i}", "bulk_id": f"bulk-{i % 7}",
                "sender": f"Shop{i % 3}"}
            pending, final = shape(pending), shape(final)
            for observation in (pending, final):
                if rnd.random() < loss:
                    if observation is final:
                        self.lost_finals.append(final)
                    continue
                self.pushes.append(observation)
                if rnd.random() < duplicates:
                    self.pushes.append(observation)
        rnd.shuffle(self.pushes)
        self.dice: list[DiceMessage] = []
        for i in range(messages // 2):
            sent_at = start + timedelta(seconds=i, microseconds=rnd.randint(1, 999_999))
            delivered = rnd.random() < 0.6
            word = "1" if delivered else rnd.choice(["4", "SENT", "UNDELIVERABLE"])
            delivered_at = sent_at + timedelta(seconds=3) if delivered else None
            phone = 9842000000 + i
            self.dice.append(DiceMessage(
                phone, sent_at.astimezone(NPT).isoformat(), f"batch-{i % 5}", word,
                delivered_at.astimezone(NPT).isoformat() if delivered_at else None,
                text=f"hello {i}"))
            self.truth[(dice_source, dicesms.message_id(f"+977{phone}", sent_at))] = {
                "status": dicesms.StatusTable({}).group(word, delivered),
                "done_at": delivered_at, "price": None, "sms_count": 1,  # counted from the text
                "callback_data": None, "bulk_id": f"batch-{i % 5}", "sender": None}

    def push_bodies(self, per_body: int = 20) -> list[bytes]:
        return [json.dumps({"results": self.pushes[i:i + per_body]}).encode()
                for i in range(0, len(self.pushes), per_body)]

    def load(self, infobip: FakeInfobip, dice: FakeDiceSms) -> None:
        infobip.queue(*self.lost_finals)
        dice.messages = list(self.dice)

    def differences(self, merged: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
        """One line per message (or field) that does not match the truth."""
        out = []
        for key, want in self.truth.items():
            got = merged.get(key)
            if got is None:
                out.append(f"{key[0]}/{key[1]}: missing")
                continue
            for field, value in want.items():
                have = got.get(field)
                if field == "done_at" and have is not None:
                    have = datetime.fromisoformat(have.replace("Z", "+00:00"))
                if have != value:
                    out.append(f"{key[0]}/{key[1]}: {field} is {have!r}, expected {value!r}")
        return out


HeadersFor = Callable[[bytes], dict[str, str]]


def hook_headers(hook: WebhookConfig | None) -> HeadersFor:
    """The credentials a provider would send with each push to a webhook so configured."""
    if hook is None or hook.unauthenticated:
        return lambda body: {}
    if hook.basic:
        basic = base64.b64encode(f"{hook.basic.username}:{hook.basic.password}".encode()).decode()
        return lambda body: {"Authorization": f"Basic {basic}"}
    if hook.token:
        token = hook.token
        return lambda body: {token.header: token.value}
    assert hook.standard_webhooks is not None
    secret = hook.standard_webhooks.secrets[0]

    def signed(body: bytes) -> dict[str, str]:
        msg_id, stamp = f"msg_{secrets.token_hex(8)}", int(time.time())
        return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                "webhook-signature": sign(secret, msg_id, stamp, body)}

    return signed


async def push(client: httpx.AsyncClient, scenario: Scenario, headers_for: HeadersFor) -> None:
    """Deliver the scenario's surviving pushes to the service's webhook."""
    for payload in scenario.push_bodies():
        response = await client.post(f"/webhooks/{scenario.ib_source}", content=payload,
                                     headers=headers_for(payload))
        response.raise_for_status()


async def fetch_all(client: httpx.AsyncClient, token: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every merged message the service has, by (source, message_id)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/messages", params=params,
                                    headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        page = response.json()
        merged |= {(m["source"], m["message_id"]): m for m in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return merged


async def wait_until_matching(client: httpx.AsyncClient, scenario: Scenario, token: str,
                              timeout_s: float) -> list[str]:
    """Poll the service until it matches the truth; return what still differs at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        differences = scenario.differences(await fetch_all(client, token))
        if not differences or time.monotonic() > deadline:
            return differences
        await asyncio.sleep(1)
