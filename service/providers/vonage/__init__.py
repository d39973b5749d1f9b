"""Vonage SMS API: delivery receipts (pushed, GET or POST) and Reports API records (pulled).

A long message is sent as parts, each with its own message id and price, and Vonage sends
one receipt per part (and one record per part in the Reports API). Nothing in a receipt
says which parts belong together: Vonage documents `client-ref` as a free reference of the
sender's, which two messages may share. So each part is a message of its own, identified
by its message id (the money and the parts billed add up the same, only the message count
differs), unless the source declares its client-refs unique per message
(`client_ref_unique = true`): then a message is identified by `client-ref@to` (its
recipient in E.164), each receipt adds its part's id to the message's part set
(`part_ids`, a union), and the message's parts are the distinct parts seen.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import parse_qsl

import httpx
import msgspec

from service import rules
from service.errors import BadRequest
from service.providers import (
    MAX_ID,
    AwareTime,
    Known,
    NumberText,
    OutOfBounds,
    Rejection,
    Report,
    WireStruct,
    currency,
    http,
    in_words,
    judge_all,
    moment,
    price,
    read_json,
)
from service.providers.base import (
    Decoder,
    Delay,
    Interval,
    SourceBase,
    StatusTable,
    VonageSignatureAuth,
    status_map_problem,
    sweep_problem,
)
from service.providers.vonage.status import STATUSES as STATUSES

MAX_CLIENT_REF = 100  # Vonage's limit on client-ref
# A delivery receipt is about fifteen short parameters (Vonage's "Delivery Receipt" webhook
# reference): a few hundred bytes. A signed receipt is checked only once it is flat (each
# parameter a scalar) and short, so no HMAC ever runs over a hostile structure.
MAX_RECEIPT_BYTES = 16 * 1024
MAX_RECEIPT_PARAMS = 100


class VonageSource(SourceBase, frozen=True, tag="vonage", tag_field="kind"):
    api_key: str | None = None  # pulls: HTTP Basic api_key:api_secret, account_id = api_key
    api_secret: str | None = None
    currency: str = "EUR"  # the account's currency: receipts give prices without one
    lookback_s: Interval = 86400.0  # the records of messages this recent are pulled
    # Each pass reads the records received since the last pass's end, up to settle_s ago
    # (Vonage: a final status is "usually available within minutes"); every
    # full_interval_s, the whole lookback again, for statuses that came later.
    settle_s: Delay = 600.0
    full_interval_s: Interval = 86400.0
    pull_interval_s: Interval = 300.0
    status_map: dict[str, str] = msgspec.field(default_factory=dict)
    # The sender sets a client-ref unique to each message: its parts are grouped by it
    client_ref_unique: bool = False

    @property
    def pullable(self) -> bool:
        return bool(self.api_key and self.api_secret)

    def problem(self) -> tuple[str, str] | None:
        if not (len(self.currency) == 3 and self.currency.isalpha()):
            return "currency", f"{self.currency!r} is not a three-letter currency code"
        return sweep_problem(self.lookback_s, self.settle_s) or \
            status_map_problem(self.status_map)


Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
ClientRef = Annotated[str, msgspec.Meta(max_length=MAX_CLIENT_REF)]


class Receipt(WireStruct):
    """A delivery receipt's parameters (query, form or JSON; all text)."""

    messageId: Id
    status: str
    msisdn: NumberText | None = None  # the recipient
    to: str | None = None  # the sender id the message was sent from
    network_code: str | None = msgspec.field(default=None, name="network-code")
    price: str | None = None  # this part's price, in the account's currency
    scts: str | None = None  # YYMMDDHHMM: when the carrier's receipt came, to the minute
    err_code: str | None = msgspec.field(default=None, name="err-code")
    client_ref: ClientRef | None = msgspec.field(default=None, name="client-ref")
    api_key: str | None = msgspec.field(default=None, name="api-key")
    message_timestamp: str | None = msgspec.field(default=None, name="message-timestamp")
    timestamp: str | None = None  # these three only when signatures are on
    nonce: str | None = None
    sig: str | None = None


class Record(WireStruct):
    """An outbound SMS record of the synchronous Reports API (one per part)."""

    message_id: Id
    status: str
    account_id: str | None = None
    client_ref: ClientRef | None = None
    direction: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: NumberText | None = None
    network: str | None = None
    network_name: str | None = None
    country: str | None = None
    country_name: str | None = None
    date_received: AwareTime | None = None
    date_finalized: AwareTime | None = None
    latency: int | None = None
    error_code: str | None = None
    error_code_description: str | None = None
    currency: str | None = None
    total_price: Decimal | None = None
    message_body: str | None = None


class _Link(msgspec.Struct):
    href: str | None = None


class _Links(msgspec.Struct):
    next: _Link | None = None


class RecordsPage(msgspec.Struct):
    records: list[msgspec.Raw] = []
    request_status: str | None = None
    links: _Links | None = msgspec.field(default=None, name="_links")


WIRE_NAMES = {
    "message_id": "messageId/client-ref", "to": "msisdn/to", "sender": "to/from",
    "mcc_mnc": "network-code/network", "price_amount": "price/total_price",
    "price_currency": "currency", "done_at": "scts/date_finalized", "sent_at": "date_received",
    "error_id": "err-code/error_code", "callback_data": "client-ref", "text": "message_body",
    "status_name": "status", "part_ids": "messageId",
}

_receipt = Known(Receipt)
_record = Known(Record)
_page = msgspec.json.Decoder(RecordsPage)
_object = msgspec.json.Decoder(dict[str, Any])


def decoder(source: VonageSource, url: str | None, content_type: str | None) -> Decoder:
    """A push is one receipt (a query string, a form or a JSON object); a pulled page is a
    Reports API records page."""
    if url is None:
        return lambda body: decode_receipt(source, body, content_type)
    return lambda body: decode_records(source, body)



def receipt_params(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A receipt's parameters from a JSON object or a query string / form."""
    if "json" in (content_type or "").lower() or body.lstrip()[:1] == b"{":
        return read_json(_object, body, "a Vonage delivery receipt", pushed=True)
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=100))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"not a Vonage delivery receipt: {in_words(exc)}") from None


_flat = msgspec.json.Decoder(dict[str, str | int | float | bool | None])


def signed_params(body: bytes, content_type: str | None) -> dict[str, str]:
    """A receipt's parameters as their signature covers them (each as text); BadRequest
    unless the body is a flat object (or query) of at most MAX_RECEIPT_PARAMS scalars."""
    if len(body) > MAX_RECEIPT_BYTES:
        raise BadRequest(f"a Vonage receipt is at most {MAX_RECEIPT_BYTES} bytes")
    try:
        if "json" in (content_type or "").lower() or body.lstrip()[:1] == b"{":
            params = _flat.decode(body)
        else:
            params = dict(parse_qsl(body.decode(), keep_blank_values=True,
                                    max_num_fields=MAX_RECEIPT_PARAMS))
    except (msgspec.MsgspecError, UnicodeDecodeError, ValueError):
        raise BadRequest("not a Vonage delivery receipt: a flat object or query of at most "
                         f"{MAX_RECEIPT_PARAMS} text, number or boolean parameters") from None
    if len(params) > MAX_RECEIPT_PARAMS:
        raise BadRequest(f"not a Vonage delivery receipt: more than {MAX_RECEIPT_PARAMS} "
                         "parameters")
    # each as text, as the signing code wrote it into the signed string
    return {name: str(value) for name, value in params.items()}


def decode_receipt(source: VonageSource, body: bytes, content_type: str | None,
                   ) -> tuple[list[Report], list[Rejection]]:
    item = receipt_params(body, content_type)
    if "messageId" not in item:
        raise BadRequest("not a Vonage delivery receipt: no messageId")
    statuses = StatusTable(source.name, STATUSES, source.status_map)
    return judge_all([item], lambda it: [receipt_report(
        source, statuses, _receipt.convert(it, source.name))], "$",
        lambda it: it.get("messageId"), WIRE_NAMES)


def decode_records(source: VonageSource, body: bytes) -> tuple[list[Report], list[Rejection]]:
    page = read_json(_page, body, "a Vonage Reports page", items="records")
    statuses = StatusTable(source.name, STATUSES, source.status_map)

    def build(raw: msgspec.Raw) -> list[Report]:
        record = _record.decode(raw, source.name)
        if record.direction == "inbound":
            return []
        return [record_report(source, statuses, record)]

    return judge_all(page.records, build, "$.records[{}]", wire_names=WIRE_NAMES)


def message_id(part_id: str, client_ref: str | None, to: str | None,
               grouped: bool = True) -> str:
    """The message a part belongs to: `client-ref@to` when it has a client-ref and the
    source's client-refs are unique per message (`grouped`), else the part itself."""
    if not client_ref or not grouped:
        return part_id
    return f"{client_ref}@{to}" if to else client_ref


def _error(code: str | None) -> int | None:
    if code is None or code.strip() in ("", "0"):
        return None
    if not code.strip().isdigit() or len(code.strip()) > 9:
        raise OutOfBounds("error_id", f"{code[:20]!r} is not an error code")
    return int(code)


def scts_time(text: str | None) -> datetime | None:
    """scts, YYMMDDHHMM, read as UTC (Vonage gives no time zone)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        raise OutOfBounds("done_at", f"{text[:20]!r} is not YYMMDDHHMM") from None


def _price(text: str | None) -> Decimal | None:
    if text is None or text == "":
        return None
    try:
        return Decimal(text)
    except ArithmeticError:
        raise OutOfBounds("price_amount", f"{text[:20]!r} is not a number") from None


def receipt_report(source: VonageSource, statuses: StatusTable, wire: Receipt) -> Report:
    number = rules.recipient(wire.msisdn) if wire.msisdn else None
    to = number.to if number else None
    amount = price("price", _price(wire.price))
    return rules.observation(
        source=source.name,
        message_id=message_id(wire.messageId, wire.client_ref, to, source.client_ref_unique),
        part_ids=wire.messageId,
        sms_count=1,
        **statuses.state(wire.status),
        status_name=wire.status,
        done_at=moment("scts", scts_time(wire.scts)),
        error_id=_error(wire.err_code),
        to=to,
        sender=wire.to or None,
        callback_data=wire.client_ref or None,
        mcc_mnc=wire.network_code or None,
        operator=rules.operator(wire.network_code, number.carrier if number else None),
        price_amount=amount,
        price_currency=source.currency if amount is not None else None,
    )


def record_report(source: VonageSource, statuses: StatusTable, record: Record) -> Report:
    number = rules.recipient(record.to) if record.to else None
    to = number.to if number else None
    return rules.observation(
        source=source.name,
        message_id=message_id(record.message_id, record.client_ref, to,
                              source.client_ref_unique),
        part_ids=record.message_id,
        sms_count=1,
        **statuses.state(record.status),
        status_name=record.status,
        done_at=moment("date_finalized", record.date_finalized),
        error_id=_error(record.error_code),
        error_description=(record.error_code_description or None)
        if _error(record.error_code) else None,
        to=to,
        sender=record.from_ or None,
        callback_data=record.client_ref or None,
        sent_at=moment("date_received", record.date_received),
        mcc_mnc=record.network or None,
        operator=rules.operator(record.network, number.carrier if number else None),
        price_amount=price("total_price", record.total_price),
        price_currency=currency("currency", record.currency or source.currency)
        if record.total_price is not None else None,
        text=record.message_body or None,
    )


# Signed webhooks: `sig` over the other parameters, sorted, as "&name=value" with '&' and
# '=' in values made '_', with the signature secret: appended then MD5 ("md5hash", the
# dashboard's default) or as the key of an HMAC (md5, sha1, sha256, sha512). Hex digest.
HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
          "sha512": hashlib.sha512}


def sign(secret: str, method: str, params: Mapping[str, Any]) -> str:
    """The `sig` Vonage puts on these parameters (they must hold `timestamp`)."""
    signed = "".join(f"&{name}=" + str(params[name]).replace("&", "_").replace("=", "_")
                     for name in sorted(params) if name != "sig")
    if method == "md5hash":
        return hashlib.md5((signed + secret).encode(), usedforsecurity=False).hexdigest()
    return hmac.new(secret.encode(), signed.encode(), HASHES[method]).hexdigest()


def signature_valid(auth: VonageSignatureAuth, params: Mapping[str, Any],
                    now: float | None = None) -> bool:
    """Whether `params` carry a `sig` by one of the secrets and a `timestamp` within the
    tolerance. Compared in constant time against each secret."""
    sig, stamp = params.get("sig"), params.get("timestamp")
    if not isinstance(sig, str) or not isinstance(stamp, str | int):
        return False
    try:
        age = abs((now if now is not None else time.time()) - int(stamp))
    except ValueError:
        return False
    presented = sig.lower().encode()
    ok = False
    for secret in auth.keys:  # no early exit: timing does not tell which
        ok |= hmac.compare_digest(presented, sign(secret, auth.method, params).encode())
    return ok and age <= auth.tolerance_s


def reports_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def fetch(client: httpx.AsyncClient, source: VonageSource, path_or_url: str,
                params: Mapping[str, str | int] | None = None,
                retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET from the Reports API with HTTP Basic (API key and secret)."""
    basic = base64.b64encode(f"{source.api_key}:{source.api_secret}".encode()).decode()
    return await http.get(client, source.base_url, path_or_url,
                          {"Authorization": f"Basic {basic}", "Accept": "application/json"},
                          params, retry)


def next_href(body: bytes) -> str | None:
    """A TRUNCATED page's `_links.next.href`, or None on the last page (or an unreadable
    one); read as the page is, so a record nested too deeply is no end."""
    try:
        page = read_json(_page, body, "a Vonage Reports page", items="records")
    except BadRequest:
        return None
    if page.request_status != "TRUNCATED" or not (page.links and page.links.next):
        return None
    return page.links.next.href or None
