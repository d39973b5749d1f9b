"""A demo and end-to-end check: fake providers, lossy pushes, and a diff against the truth.

A Scenario invents messages for an Infobip-compatible source (pushed in v3's shape, or
v1's, with loss, duplicates and reordering; what was lost is offered once by the one-time
reports) and a
DiceSMS source (pulled only). A TwilioScenario does the same for a Twilio source: signed
status callbacks, lossy and reordered, and the fake's Messages list to pull. `push()` sends
to a running service, then `wait_until_matching()` polls its API until every message
matches the truth or time runs out.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from service import pricing, rules
from service.api.webhooks import sign
from service.config import Settings, WebhookConfig, no_source
from service.errors import ConfigError
from service.providers import dicesms, twilio, vonage
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms
from service.providers.infobip import status as infobip_status
from service.providers.infobip.fake import FakeInfobip, as_v1, as_v3
from service.providers.sinch.fake import Batch as SinchBatch
from service.providers.sinch.fake import FakeSinch
from service.providers.sinch.fake import Recipient as SinchRecipient
from service.providers.sinch.fake import recipient_report as sinch_recipient_report
from service.providers.twilio.fake import FakeTwilio
from service.providers.twilio.fake import callback as twilio_callback
from service.providers.twilio.fake import message as twilio_message
from service.providers.vonage.fake import FakeVonage
from service.providers.vonage.fake import receipt as vonage_receipt
from service.providers.vonage.fake import record as vonage_record

NPT = timezone(timedelta(hours=5, minutes=45))


def _ib_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


# What follows PENDING_ENROUTE (Infobip's status names, service/providers/infobip/status.py)
INFOBIP_PATHS = [
    ("DELIVERED_TO_HANDSET",), ("DELIVERED_TO_HANDSET",),
    ("DELIVERED_TO_OPERATOR", "DELIVERED_TO_HANDSET"),
    ("DELIVERED_TO_OPERATOR",),  # a network that sends no handset report
    ("DELIVERED_TO_OPERATOR", "UNDELIVERABLE_NOT_DELIVERED"),
    ("UNDELIVERABLE_REJECTED_OPERATOR",), ("EXPIRED_EXPIRED",), ("EXPIRED_DLR_UNKNOWN",),
    ("REJECTED_NETWORK",),
]


def _ib_status(name: str) -> dict[str, Any]:
    status_id, row = infobip_status.STATUSES[name]
    return {"groupId": infobip_status.GROUP_IDS[row.group], "groupName": row.group,
            "id": status_id, "name": name, "description": name.replace("_", " ").lower()}


class Scenario:
    """`messages` in all: two thirds sent through the Infobip source, a third through the
    DiceSMS one."""

    def __init__(self, messages: int = 300, seed: int = 1, loss: float = 0.2,
                 duplicates: float = 0.1, ib_source: str = "ib", dice_source: str = "dice",
                 api_version: int = 3) -> None:
        rnd = random.Random(seed)  # noqa: S311 (a reproducible scenario, not a secret)
        self.ib_source, self.dice_source = ib_source, dice_source
        dice_messages = messages // 3
        shape = as_v3 if api_version == 3 else as_v1
        start = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        self.pushes: list[dict[str, Any]] = []
        self.lost_finals: list[dict[str, Any]] = []
        self.truth: dict[tuple[str, str], dict[str, Any]] = {}
        for i in range(messages - dice_messages):
            sent = start + timedelta(seconds=i)
            done = sent + timedelta(seconds=rnd.randint(1, 600), milliseconds=rnd.randint(0, 999))
            # the statuses after PENDING_ENROUTE, as Infobip's reference lists them: some
            # messages reach the operator first, and some never get further
            path = rnd.choice(INFOBIP_PATHS)
            parts = rnd.randint(1, 3)
            price = Decimal(rnd.choice(["0.01", "0.0125", "0.2"]))
            message_id = f"sim-{seed}-{i}"
            common: dict[str, Any] = {"bulkId": f"bulk-{i % 7}", "messageId": message_id,
                      "to": f"4179{3000000 + i}", "sentAt": _ib_time(sent), "smsCount": parts,
                      "callbackData": f"order-{i}", "from": f"Shop{i % 3}",
                      "price": {"pricePerMessage": float(price), "currency": "EUR"}}
            pending = common | {"doneAt": _ib_time(sent), "status": _ib_status(
                "PENDING_ENROUTE")}
            later = [common | {"doneAt": _ib_time(done + timedelta(seconds=step)),
                               "status": _ib_status(name)} for step, name in enumerate(path)]
            last = done + timedelta(seconds=len(path) - 1)
            self.truth[(ib_source, message_id)] = {
                "status": infobip_status.STATUSES[path[-1]][1].group, "done_at": rules.utc(last.replace(
                    microsecond=last.microsecond // 1000 * 1000)),
                "price": {"amount": format(rules.money(price), "f"), "currency": "EUR",
                          "origin": "reported", "rate": None},
                "sms_count": parts, "callback_data": f"order-{i}", "bulk_id": f"bulk-{i % 7}",
                "sender": f"Shop{i % 3}"}
            for observation in (shape(pending), *map(shape, later)):
                if rnd.random() < loss:
                    if observation["status"]["groupId"] != 1:  # the pull's one-time reports
                        self.lost_finals.append(observation)
                    continue
                self.pushes.append(observation)
                if rnd.random() < duplicates:
                    self.pushes.append(observation)
        rnd.shuffle(self.pushes)
        self.dice: list[DiceMessage] = []
        for i in range(dice_messages):
            sent_at = start + timedelta(seconds=i, microseconds=rnd.randint(1, 999_999))
            # delivered ("1"), failed ("4", UNDELIVERABLE), not yet (SENT), and a failure that
            # carries a delivery time all the same (the failure stands)
            word, delivered = rnd.choice([("1", True), ("1", True), ("1", True), ("4", False),
                                          ("SENT", False), ("UNDELIVERABLE", False),
                                          ("UNDELIVERABLE", True), ("4", True)])
            delivered_at = sent_at + timedelta(seconds=3) if delivered else None
            phone = 9842000000 + i
            self.dice.append(DiceMessage(
                phone, sent_at.astimezone(NPT).isoformat(), f"batch-{seed}-{i % 5}", word,
                delivered_at.astimezone(NPT).isoformat() if delivered_at else None,
                text=f"hello {i}"))
            self.truth[(dice_source, dicesms.message_id(f"+977{phone}", sent_at))] = {
                "status": dicesms.StatusTable({}).group(word, delivered),
                "done_at": delivered_at, "price": None, "sms_count": 1,  # counted from the text
                "callback_data": None, "bulk_id": f"batch-{seed}-{i % 5}", "sender": None}
        self.lost = f"{len(self.lost_finals)} final reports lost in transit, left for the pull"

    def push_bodies(self, per_body: int = 20) -> list[bytes]:
        return [json.dumps({"results": self.pushes[i:i + per_body]}).encode()
                for i in range(0, len(self.pushes), per_body)]

    def load(self, infobip: FakeInfobip, dice: FakeDiceSms) -> None:
        infobip.queue(*self.lost_finals)
        dice.messages = list(self.dice)

    def taken_elsewhere(self, infobip: FakeInfobip, differences: list[str]) -> int:
        """How many of the messages still differing had their lost final report handed out
        by `infobip`'s one-time reports: that report went to some other puller."""
        differing = {line.split(": ", 1)[0] for line in differences}
        return len({r["messageId"] for r in self.lost_finals} & infobip.handed_out
                   & {key.removeprefix(f"{self.ib_source}/") for key in differing})

    def differences(self, merged: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
        return differences(self.truth, merged)

    def requests(self, headers_for: HeadersFor) -> list[Push]:
        """Each push, in the order it is sent."""
        return [("POST", f"/webhooks/{self.ib_source}", payload, headers_for(payload))
                for payload in self.push_bodies()]


Truth = dict[tuple[str, str], dict[str, Any]]
Push = tuple[str, str, bytes, dict[str, str]]  # method, path and query, body, headers
HeadersFor = Callable[[bytes], dict[str, str]]


def differences(truth: Truth, merged: Truth) -> list[str]:
    """One line per message (or field) that does not match the truth:
    `source/id: field is X, expected Y`, the values as JSON."""
    out = []
    for key, want in truth.items():
        got = merged.get(key)
        if got is None:
            out.append(f"{key[0]}/{key[1]}: not in the service")
            continue
        for field, value in want.items():
            have = got.get(field)
            if field == "done_at" and have is not None:
                have = datetime.fromisoformat(have.replace("Z", "+00:00"))
            if have != value:
                out.append(f"{key[0]}/{key[1]}: {field} is {_json(have)}, expected "
                           f"{_json(value)}")
    return out


def _json(value: Any) -> str:
    """A value as the message JSON would hold it: times RFC 3339 in UTC, decimals as text."""
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return str(value)  # Decimal

    return json.dumps(value, default=plain, ensure_ascii=False)


SHOWN = 20  # differences printed; the rest are counted


def shown(differences: list[str], limit: int = SHOWN) -> list[str]:
    """The first `limit` differences, and a line counting those left out."""
    more = len(differences) - limit
    return differences[:limit] + ([f"... and {more} more differences not shown"]
                                  if more > 0 else [])


TWILIO_FINALS = {"delivered": "DELIVERED", "undelivered": "UNDELIVERABLE", "failed": "REJECTED",
                 "partially_delivered": "DELIVERED", "read": "DELIVERED", "canceled": "REJECTED"}
TWILIO_ACCOUNT = "AC" + "5" * 32


class TwilioScenario:
    """Messages sent through a Twilio account in the last hour: a `sent` and a final status
    callback each (20% lost, 10% repeated, all reordered), and the account's Messages list
    holding every message's final state for the pull."""

    def __init__(self, messages: int = 200, seed: int = 1, loss: float = 0.2,
                 duplicates: float = 0.1, source: str = "tw",
                 account_sid: str = TWILIO_ACCOUNT) -> None:
        rnd = random.Random(seed)  # noqa: S311 (a reproducible scenario, not a secret)
        self.source, self.account_sid = source, account_sid
        self.lost = _lost(loss, duplicates)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
        self.resources: list[dict[str, Any]] = []
        self.pushes: list[bytes] = []
        self.truth: Truth = {}
        i = -1
        while len(self.truth) < messages:  # a canceled message whose callback was lost is none
            i += 1
            sent = start + timedelta(seconds=i)
            done = (sent + timedelta(seconds=rnd.randint(1, 600))).replace(second=0)
            final = rnd.choice(["delivered", "delivered", "delivered", "undelivered", "failed",
                                "partially_delivered", "read", "canceled"])
            segments = rnd.randint(1, 3)
            price = None if final in ("failed", "canceled") else Decimal(rnd.choice(
                ["0.0079", "0.0083", "0.04"]))
            error = {"undelivered": 30003, "failed": 30007}.get(final)
            sid = f"SM{seed:08x}{i:024x}"
            resource = twilio_message(account_sid, sid, f"+1415555{i:04d}", final, sent,
                                      sender=f"+1501712{i % 3:04d}", segments=segments,
                                      price=price, error_code=error)
            if final == "canceled":  # a scheduled message canceled: never sent
                resource["date_sent"] = None
            if price is not None and i % 17 == 16:  # a price Twilio does not document
                resource["price"], price = str(price), None
            self.resources.append(resource)
            dlr = done.strftime("%y%m%d%H%M") if final not in ("failed", "canceled") else None
            final_kept = False
            for status in (("sent",) if final != "canceled" else ()) + (final,):
                params = twilio_callback(resource, status, error_code=error if status == final
                                         else None, raw_dlr_done=dlr if status == final else None)
                if rnd.random() < loss:
                    continue
                final_kept |= status == final
                self.pushes.append(urlencode(params).encode())
                if rnd.random() < duplicates:
                    self.pushes.append(urlencode(params).encode())
            if final == "canceled" and not final_kept:
                continue  # never sent, so no DateSent to list it by: only its callback tells
            self.truth[(source, sid)] = {
                "status": TWILIO_FINALS[final], "done_at": done if final_kept and dlr else None,
                "price": None if price is None else {
                    "amount": format(rules.money(price), "f"), "currency": "USD",
                    "origin": "reported", "rate": None},
                "sms_count": segments if final != "canceled" else None,
                "sender": f"+1501712{i % 3:04d}",
                "to": f"+1415555{i:04d}"}
        rnd.shuffle(self.pushes)

    def load(self, fake: FakeTwilio) -> None:
        fake.add(*self.resources)

    def differences(self, merged: Truth) -> list[str]:
        return differences(self.truth, merged)

    def requests(self, headers_for: HeadersFor) -> list[Push]:
        return [("POST", f"/webhooks/{self.source}", payload, headers_for(payload))
                for payload in self.pushes]



VONAGE_FINALS = {"delivered": "DELIVERED", "expired": "EXPIRED", "failed": "UNDELIVERABLE",
                 "rejected": "REJECTED", "unknown": "EXPIRED"}


class VonageScenario:
    """Messages of 1 to 3 parts sent through Vonage in the last hour, each with a client-ref
    (every tenth sharing the one before's, to the same number, unless the source declares
    its client-refs unique: `grouped`): an `accepted` and a final receipt per part (20%
    lost, 10% repeated, all reordered), by GET, signed as the source's webhook says; and the
    Reports API holding every part's final record for the pull. Each part is a message of
    its own, or, `grouped`, each client-ref's parts one message."""

    def __init__(self, messages: int = 200, seed: int = 1, loss: float = 0.2,
                 duplicates: float = 0.1, source: str = "vg", account_sid: str = "abcd1234",
                 hook: WebhookConfig | None = None, grouped: bool = False) -> None:
        rnd = random.Random(seed)  # noqa: S311 (a reproducible scenario, not a secret)
        self.source, self.api_key, self.hook = source, account_sid, hook
        self.lost = _lost(loss, duplicates)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        self.records: list[dict[str, Any]] = []
        self.pushes: list[dict[str, str]] = []
        self.truth: Truth = {}
        i = -1
        while len(self.truth) < messages:
            i += 1
            received = start + timedelta(seconds=i)
            final = rnd.choice(["delivered", "delivered", "delivered", "expired", "failed",
                                "rejected", "unknown"])
            price = None if final == "rejected" else Decimal(rnd.choice(["0.0333", "0.045"]))
            ref, to, parts = f"vg-{seed}-{i}", f"4477009{i:05d}", rnd.randint(1, 3)
            if not grouped:  # each part a message: the last text has only the parts left
                parts = min(parts, messages - len(self.truth))
            if not grouped and i % 10 == 9:  # a client-ref reused for another message
                ref, to = f"vg-{seed}-{i - 1}", f"4477009{i - 1:05d}"
            done = received + timedelta(seconds=rnd.randint(5, 300))
            for p in range(parts):
                part = vonage_record(self.api_key, f"{seed:04X}{i:07X}{p:05X}", to, final,
                                     received, done + timedelta(seconds=p), client_ref=ref,
                                     price=price, error_code="0" if final == "delivered" else "1")
                self.records.append(part)
                for status in (rnd.choice(["accepted", "buffered"]), final):
                    if rnd.random() < loss:
                        continue
                    params = vonage_receipt(part, status, self.api_key)
                    self.pushes.append(params)
                    if rnd.random() < duplicates:
                        self.pushes.append(params)
                if not grouped:  # each part a message of its own
                    self.truth[(source, part["message_id"])] = {
                        "status": VONAGE_FINALS[final], "done_at": done + timedelta(seconds=p),
                        "price": _reported(price), "sms_count": 1, "sender": "AcmeInc",
                        "to": f"+{to}", "callback_data": ref}
            if grouped:
                self.truth[(source, f"{ref}@+{to}")] = {
                    "status": VONAGE_FINALS[final],
                    "done_at": done + timedelta(seconds=parts - 1), "price": _reported(price),
                    "sms_count": parts, "sender": "AcmeInc", "to": f"+{to}",
                    "callback_data": ref}
        rnd.shuffle(self.pushes)

    def load(self, fake: FakeVonage) -> None:
        fake.add(*self.records)

    def differences(self, merged: Truth) -> list[str]:
        return differences(self.truth, merged)

    def requests(self, headers_for: HeadersFor) -> list[Push]:
        """Each receipt as a GET query, signed when the webhook wants Vonage's `sig`."""
        out = []
        for params in self.pushes:
            if self.hook is not None and self.hook.vonage_signature:
                auth = self.hook.vonage_signature
                params = params | {"timestamp": str(int(time.time())),
                                   "nonce": secrets.token_hex(8)}
                params["sig"] = vonage.sign(auth.keys[0], auth.method, params)
            out.append(("GET", f"/webhooks/{self.source}?{urlencode(params)}", b"",
                        headers_for(b"")))
        return out


def _lost(loss: float, duplicates: float) -> str:
    return (f"{loss:.0%} lost in transit and left for the pull, {duplicates:.0%} repeated, "
            "all reordered")


def _reported(price: Decimal | None) -> dict[str, Any] | None:
    """A price as the message JSON gives a reported one, in EUR."""
    if price is None:
        return None
    return {"amount": format(rules.money(price), "f"), "currency": "EUR", "origin": "reported",
            "rate": None}


SINCH_FINALS = {"Delivered": ("DELIVERED", 0), "Failed": ("UNDELIVERABLE", 402),
                "Expired": ("EXPIRED", 406), "Rejected": ("REJECTED", 403),
                "Aborted": ("REJECTED", 408), "Cancelled": ("REJECTED", 407),
                "Deleted": ("REJECTED", 404), "Unknown": ("EXPIRED", 0)}


class SinchScenario:
    """Batches of five recipients sent through Sinch in the last hour: a `Dispatched` and a
    final recipient delivery report per recipient (20% lost, 10% repeated, all reordered),
    and the fake's batches and full reports for the pull."""

    def __init__(self, messages: int = 200, seed: int = 1, loss: float = 0.2,
                 duplicates: float = 0.1, source: str = "sn", account_sid: str = "plan0001",
                 ) -> None:
        rnd = random.Random(seed)  # noqa: S311 (a reproducible scenario, not a secret)
        self.source, self.service_plan_id = source, account_sid
        self.lost = _lost(loss, duplicates)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        self.batches: list[SinchBatch] = []
        self.pushes: list[bytes] = []
        self.truth: Truth = {}
        for b in range(0, messages, 5):
            # a short text, a long one (two GSM parts) and one in UCS-2 (two parts)
            text = rnd.choice(["hello", "x" * 200, "\u00fc" * 100])
            counted = pricing.parts(text)
            batch = SinchBatch(f"01SIM{seed:04d}{b:06d}", start + timedelta(seconds=b), [],
                               client_reference=f"sn-{seed}-{b}", body=text)
            for i in range(b, min(b + 5, messages)):
                final = rnd.choice(["Delivered", "Delivered", "Delivered", "Failed", "Expired",
                                    "Rejected", "Aborted", "Cancelled", "Deleted", "Unknown"])
                group, code = SINCH_FINALS[final]
                sent = batch.created_at + timedelta(seconds=1)
                done = sent + timedelta(seconds=rnd.randint(2, 300))
                parts = rnd.choice([counted, None])  # number_of_message_parts, when asked for
                pending = SinchRecipient(f"4477009{i:05d}", "Dispatched", 401, sent, None, parts)
                last = SinchRecipient(pending.msisdn, final, code, done + timedelta(seconds=1),
                                      done, parts)
                batch.recipients.append(last)
                kept: set[str] = set()
                for state in (pending, last):
                    if rnd.random() < loss:
                        continue
                    kept.add(state.status)
                    body = json.dumps(sinch_recipient_report(batch, state)).encode()
                    self.pushes.append(body)
                    if rnd.random() < duplicates:
                        self.pushes.append(body)
                self.truth[(source, f"{batch.id}:+{pending.msisdn}")] = {
                    "status": group, "done_at": done if final in kept else None,
                    "price": None, "sms_count": counted, "bulk_id": batch.id,
                    "callback_data": batch.client_reference, "to": f"+{pending.msisdn}"}
            self.batches.append(batch)
        rnd.shuffle(self.pushes)

    def load(self, fake: FakeSinch) -> None:
        fake.add(*self.batches)

    def differences(self, merged: Truth) -> list[str]:
        return differences(self.truth, merged)

    def requests(self, headers_for: HeadersFor) -> list[Push]:
        return [("POST", f"/webhooks/{self.source}", payload,
                 headers_for(payload) | {"Content-Type": "application/json"})
                for payload in self.pushes]


AnyScenario = Scenario | TwilioScenario | VonageScenario | SinchScenario


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
    if hook.vonage_signature:  # the signature is a parameter (VonageScenario.requests)
        return lambda body: {}
    if hook.twilio_signature:
        auth = hook.twilio_signature
        return lambda body: {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio.sign(auth.auth_tokens[0], auth.public_url,
                                              dict(parse_qsl(body.decode())))}
    assert hook.standard_webhooks is not None
    secret = hook.standard_webhooks.secrets[0]

    def signed(body: bytes) -> dict[str, str]:
        msg_id, stamp = f"msg_{secrets.token_hex(8)}", int(time.time())
        return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                "webhook-signature": sign(secret, msg_id, stamp, body)}

    return signed


async def push(client: httpx.AsyncClient, scenario: AnyScenario, headers_for: HeadersFor,
               progress: Callable[[int], None] | None = None) -> None:
    """Deliver the scenario's surviving pushes to the service's webhook; `progress` is told
    how many requests went so far."""
    for sent, (method, url, payload, headers) in enumerate(scenario.requests(headers_for), 1):
        response = await client.request(method, url, content=payload or None, headers=headers)
        response.raise_for_status()
        if progress is not None:
            progress(sent)


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


async def wait_until_matching(client: httpx.AsyncClient, scenario: AnyScenario, token: str,
                              timeout_s: float,
                              progress: Callable[[int], None] | None = None) -> list[str]:
    """Poll the service until it matches the truth; return what still differs at the end.
    `progress` is told after each poll how many messages match."""
    deadline = time.monotonic() + timeout_s
    while True:
        differences = scenario.differences(await fetch_all(client, token))
        if progress is not None:
            differing = {line.split(": ", 1)[0] for line in differences}
            progress(len(scenario.truth) - len(differing))
        if not differences or time.monotonic() > deadline:
            return differences
        await asyncio.sleep(1)


# --provider: its scenario, its fake, and the fake's credentials from the source
FAKES: dict[str, tuple[Any, Any, Callable[[Any], tuple[str, str]]]] = {
    "twilio": (TwilioScenario, FakeTwilio, lambda s: (s.account_sid, s.auth_token or "")),
    "vonage": (VonageScenario, FakeVonage, lambda s: (s.api_key, s.api_secret or "")),
    "sinch": (SinchScenario, FakeSinch, lambda s: (s.service_plan_id, s.api_token or "")),
}


class Simulation(NamedTuple):
    """What `simulate` runs: a scenario, the fakes it needs (a name, and a maker taking the
    port of its source's base_url), the pushes' credentials and a token to read with."""

    scenario: AnyScenario
    fakes: list[tuple[str, Callable[..., Any], int]]
    headers_for: HeadersFor
    token: str


def plan(settings: Settings, provider: str, *, messages: int, seed: int,
         source: str | None = None, infobip: str = "ib", dicesms: str = "dice",
         api_version: int = 3) -> Simulation:
    """The simulation of `provider` (infobip: with dicesms) against the sources of the
    configuration; ConfigError when it lacks them or a token that reads them whole."""
    from service.providers import registry

    def named(flag: str, name: str, kind: str) -> Any:
        found = settings.sources.get(name)
        if found is None:
            raise ConfigError(f"simulate {flag} {name}: {no_source(settings, name)}")
        if registry.provider(found).kind != kind:
            raise ConfigError(f"simulate {flag} {name}: a {registry.provider(found).kind} "
                              f"source, not {kind}")
        return found

    token = reading_token(settings)
    candidates = [s for s in settings.sources.values() if registry.provider(s).kind == provider]
    if provider == "infobip":
        ib = named("--infobip", infobip, "infobip")
        dice = named("--dicesms", dicesms, "dicesms")
    elif source is not None:
        candidates = [named("--source", source, provider)]
    elif not candidates:
        said = ("DLR_CONFIG is not set" if settings.config is None else
                f"none in DLR_CONFIG ({settings.config}); its sources: "
                f"{', '.join(settings.sources) or 'none'}")
        raise ConfigError(f"simulate --provider {provider} needs a {provider} source: {said}")
    if token is None:
        raise ConfigError("simulate needs an API token with the read and pii scopes (or admin) "
                          "in DLR_CONFIG")
    if provider == "infobip":
        return Simulation(
            Scenario(messages, seed, ib_source=ib.name, dice_source=dice.name,
                     api_version=api_version),
            [("Infobip", functools.partial(FakeInfobip, ib.api_key or ""), _port(ib.base_url)),
             ("DiceSMS", functools.partial(FakeDiceSms, dice.token or "", page_size=50),
              _port(dice.base_url))],
            hook_headers(ib.webhook), token)
    faked: Any = candidates[0]  # a source of `provider`'s kind
    scenario_kind, fake_kind, credentials = FAKES[provider]
    user, secret = credentials(faked)
    extra = ({"hook": faked.webhook, "grouped": faked.client_ref_unique}
             if provider == "vonage" else {})
    return Simulation(scenario_kind(messages, seed, source=faked.name, account_sid=user, **extra),
                      [(provider, functools.partial(fake_kind, user, secret),
                        _port(faked.base_url))],
                      hook_headers(faked.webhook), token)


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def new_seed() -> int:
    """A scenario's seed when none is given: each run invents other messages."""
    return secrets.randbelow(SEEDS)


SEEDS = 1_000_000  # seeds are 0 to 999999: short enough to type again


async def ready(client: httpx.AsyncClient) -> None:
    """The service answers and is ready (its /health/ready); httpx's errors otherwise."""
    (await client.get("/health/ready")).raise_for_status()


def reading_token(settings: Settings) -> str | None:
    """An API token that reads messages whole (`read` and `pii`, or `admin`): the truth
    holds recipients, which a token without `pii` sees masked."""
    return next((t.token for t in settings.api_tokens if "read" in t.scopes
                 and {"pii", "admin"} & set(t.scopes)), None)
