"""The query API's own JSON shapes (separate from providers' wire structs)."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from service.errors import BadRequest
from service.logs import mask, mask_number_in

# The times a request may name. Anything else is a mistake, and may not survive the trip to
# the database (year 1 or 9999 moved to UTC leaves Python's calendar).
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)
TIME = "ISO 8601 with an offset, from 1970 to 2200 (e.g. 2026-11-01T00:00:00Z)"
Key = TypeVar("Key")
# A keyset cursor's parts: a moment of the kind stored, and a bigint id.
CursorTime = Annotated[datetime, msgspec.Meta(tz=True)]
CursorId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


def doc(description: str, *examples: object) -> msgspec.Meta:
    """Field documentation for /schema."""
    return msgspec.Meta(description=description, examples=list(examples) or None)



class RateApplied(msgspec.Struct, omit_defaults=True):
    """A rate of the source's rate card, as written there: what it applies to (one of
    these, or none: everything) and the UTC date it is in force from."""

    mcc_mnc: str | None = None
    operator: str | None = None
    prefix: str | None = None
    country: str | None = None
    from_: Annotated[date | None, doc("In force from this UTC date", "2026-01-01")] = \
        msgspec.field(default=None, name="from")


class Price(msgspec.Struct):
    amount: Annotated[str, doc("Price per SMS part, exact decimal", "0.01")]
    currency: Annotated[str | None, doc("ISO 4217", "EUR")]
    origin: Annotated[Literal["reported", "rate_card"], doc(
        "`reported` by the provider, or `rate_card`: estimated by the source's rate card "
        "(a price the provider reports later replaces it)", "reported")]
    rate: Annotated[RateApplied | None, doc(
        "For an estimate, the rate that applied: the most specific in force at `sent_at`")] = None


class ProviderStatus(msgspec.Struct):
    id: int | None
    name: str | None
    description: str | None
    action: Annotated[str | None, doc("What the provider advises doing (Infobip v3)")] = None


class ErrorInfo(msgspec.Struct):
    group: str | None
    group_id: int | None
    id: int | None
    name: str | None
    permanent: bool | None
    description: str | None = None


class Message(msgspec.Struct):
    source: Annotated[str, doc("Configured provider account", "ib")]
    message_id: Annotated[str, doc("Provider message id (DiceSMS: recipient@sent_at)",
                                   "MESSAGE-ID-123-xyz")]
    bulk_id: Annotated[str | None, doc("Infobip bulkId or DiceSMS batch_id", "BULK-ID-123-xyz")]
    to: Annotated[str | None, doc("Recipient, E.164 whenever its country is known (else as given)",
                                  "+41793026727")]
    country: Annotated[str | None, doc(
        "The recipient's country, ISO 3166 alpha-2, from `to` (phonenumbers' region of the "
        "number); null when it cannot be told", "CH")]
    sender: str | None
    callback_data: Annotated[str | None, doc("Echoed from the send request", "order-42")]
    matched_by: Annotated[Literal["message_id", "callback_data"] | None, doc(
        "How the message matched a registration (POST /v1/outbound): by its message_id, by "
        "its callback_data (a registration without message_id), or null when none",
        "message_id")]
    status: Annotated[str, doc("Status group", "DELIVERED")]
    final: Annotated[bool, doc("True once the status can no longer change", True)]
    provider_status: ProviderStatus
    error: ErrorInfo | None
    sent_at: Annotated[datetime | None, doc("UTC", "2019-11-09T16:00:00Z")]
    done_at: Annotated[datetime | None, doc("UTC", "2019-11-09T16:00:00Z")]
    sms_count: Annotated[int | None, doc("SMS parts: as the provider reports them, else "
                                         "counted from the text (GSM 03.38 or UCS-2)", 1)]
    price: Annotated[Price | None, doc("Per part; null when neither the provider nor the "
                                       "source's rate card gives one (unpriced)")]
    mcc_mnc: Annotated[str | None, doc("Mobile country and network code", "22801")]
    operator: Annotated[str | None, doc(
        "Network: one name per network, from the provider's MCC+MNC where known, else the "
        "carrier the number was issued to", "Swisscom")]
    text: str | None
    entity_id: Annotated[str | None, doc("Infobip platform entity", "promotional-traffic")]
    application_id: Annotated[str | None, doc("Infobip platform application", "marketing")]
    campaign_reference_id: Annotated[str | None, doc("Infobip campaign reference", "summersale")]
    seq: Annotated[int, doc("Position in the change feed; grows with every change", 2)]
    updated_at: datetime


class Observation(msgspec.Struct):
    status: str
    status_id: int | None
    status_name: str | None
    done_at: datetime | None
    channel: str  # push | pull | outbound
    observed_at: datetime


class MessageDetail(Message):
    history: list[Observation]


class MessagePage(msgspec.Struct):
    items: list[Message]
    next_cursor: str | None


# A time whose '+' offset arrived as a space: an unescaped '+' in a query string means one.
_SPACED_OFFSET = re.compile(r"[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)? \d\d(?::?\d\d)?$")


def query_time(name: str, text: str) -> datetime:
    """`text` as an aware ISO 8601 time in UTC, from 1970 to 2200; else BadRequest naming `name`."""
    if _SPACED_OFFSET.search(text):
        raise BadRequest(f"{name}: a space where the offset's '+' would be: percent-encode '+' "
                         "in a query string as %2B (2026-11-01T00:00:00%2B05:45)")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: not an ISO 8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name}: give a time zone offset (e.g. 2026-11-01T00:00:00Z)")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 moved past either end of the calendar
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise BadRequest(f"{name}: give a time from {EARLIEST:%Y} to {LATEST:%Y}")
    return utc


def encode_cursor(key: tuple[Any, ...]) -> str:
    """A keyset position (the last item's sort key) as an opaque cursor."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode()


def in_range(moment: datetime) -> datetime:
    """A cursor's moment in UTC, refused (BadRequest) when no stored time could be it."""
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise BadRequest("cursor is not one this API returned")
    return utc


def decode_cursor(cursor: str, key: type[Key]) -> Key:
    """The keyset position of a cursor this API returned; else BadRequest."""
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()), type=key)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadRequest("cursor is not one this API returned") from None


_rate = msgspec.json.Decoder(RateApplied)
Shown = TypeVar("Shown", bound=msgspec.Struct)


def without_pii(item: Shown) -> Shown:
    """`item` (a message, a gap) as a token without the pii scope sees it: its recipient
    masked as the logs mask numbers, also where its id holds it (Sinch, Vonage and DiceSMS
    ids are made of it), its text (if it has one) withheld."""
    changes: dict[str, Any] = {}
    if (to := getattr(item, "to", None)) is not None:
        changes["to"] = mask(to)
        message_id = getattr(item, "message_id", None)
        if message_id and (hidden := mask_number_in(message_id, to)) != message_id:
            changes["message_id"] = hidden
    if getattr(item, "text", None) is not None:
        changes["text"] = None
    return msgspec.structs.replace(item, **changes) if changes else item


def message_from_row(row: Any) -> Message:
    """Message JSON from a `messages` row with its `matched_by` (see store.matched_by)."""
    error = None
    if row.error_id is not None or row.error_name is not None:
        error = ErrorInfo(row.error_group_name, row.error_group_id, row.error_id, row.error_name,
                          row.error_permanent, row.error_description)
    price = None
    if row.price_amount is not None:
        price = Price(format(row.price_amount, "f"), row.price_currency, "reported")
        if row.price_estimate > 0:
            price = Price(price.amount, price.currency, "rate_card",
                          _rate.decode(row.price_rate) if row.price_rate else RateApplied())
    return Message(
        source=row.source, message_id=row.message_id, bulk_id=row.bulk_id, to=row.to,
        country=row.country, sender=row.sender, callback_data=row.callback_data, matched_by=row.matched_by,
        status=row.status, final=row.final,
        provider_status=ProviderStatus(row.status_id, row.status_name, row.status_description,
                                       row.status_action),
        error=error, sent_at=row.sent_at, done_at=row.done_at, sms_count=row.sms_count,
        price=price, mcc_mnc=row.mcc_mnc, operator=row.operator, text=row.text,
        entity_id=row.entity_id, application_id=row.application_id,
        campaign_reference_id=row.campaign_reference_id, seq=row.seq,
        updated_at=row.updated_at,
    )
