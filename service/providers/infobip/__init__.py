"""Infobip-compatible delivery reports: wire structs and the decoder to neutral Reports.

The same `{"results": [...]}` shape arrives by webhook push and from GET /sms/1/reports.
Status and error groups are read as plain values (new ids and names appear over time).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import httpx
import msgspec

from service import reconcile
from service.errors import BadRequest, TooManyReports
from service.providers import (
    MAX_ID,
    AwareTime,
    Int32,
    NumberText,
    Parts,
    Rejection,
    Report,
    currency,
    http,
    judge_all,
    moment,
    price,
)
from service.providers.base import Decoder, Interval, SourceBase


class InfobipSource(SourceBase, frozen=True, tag="infobip", tag_field="kind"):
    api_key: str | None = None  # pulls send "Authorization: App <key>"
    pull_interval_s: Interval = 60.0

    @property
    def pullable(self) -> bool:
        return bool(self.api_key)


NO_ERROR_ID = 0
# Infobip sends up to 2000 reports a push (maxBucketSize); a body with more is not one of
# its pushes, and decoding millions of tiny entries would stall the process.
MAX_REPORTS = 2500


# Text lengths are checked on the report built from these (reconcile.observation), under
# the names below; only `to` is bounded here, before it reaches the number cache.
class Status(msgspec.Struct):
    groupId: Int32 | None = None
    groupName: str | None = None
    id: Int32 | None = None
    name: str | None = None
    description: str | None = None


class Error(msgspec.Struct):
    groupId: Int32 | None = None
    groupName: str | None = None
    id: Int32 | None = None
    name: str | None = None
    permanent: bool | None = None


class Price(msgspec.Struct):
    pricePerMessage: Decimal | None = None
    currency: str | None = None


class SentSmsReport(msgspec.Struct):
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
    status: Status
    bulkId: str | None = None
    to: NumberText | None = None
    sender: str | None = msgspec.field(default=None, name="from")
    sentAt: AwareTime | None = None
    doneAt: AwareTime | None = None
    smsCount: Parts | None = None
    mccMnc: str | None = None
    callbackData: str | None = None
    price: Price | None = None
    error: Error | None = None


class _Envelope(msgspec.Struct):
    results: list[msgspec.Raw]


class _MaybeId(msgspec.Struct):
    messageId: object = None


# Report fields by their names in an Infobip body, for rejection reasons.
WIRE_NAMES = {
    "message_id": "messageId", "bulk_id": "bulkId", "callback_data": "callbackData",
    "sender": "from", "status": "status.groupName", "status_name": "status.name",
    "status_description": "status.description", "error_group_name": "error.groupName",
    "error_name": "error.name", "mcc_mnc": "mccMnc", "operator": "mccMnc",
    "price_currency": "price.currency", "price_amount": "price.pricePerMessage",
    "sms_count": "smsCount", "sent_at": "sentAt", "done_at": "doneAt",
}

_envelope = msgspec.json.Decoder(_Envelope)
_report = msgspec.json.Decoder(SentSmsReport)
_maybe_id = msgspec.json.Decoder(_MaybeId)


def decode_reports(source: str, body: bytes) -> tuple[list[Report], list[Rejection]]:
    """Decode a results body; a bad report is rejected alone, a bad body raises BadRequest
    (TooManyReports past MAX_REPORTS)."""
    try:
        envelope = _envelope.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"not an Infobip report body: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise BadRequest(f"invalid JSON: {exc}") from None
    if len(envelope.results) > MAX_REPORTS:
        raise TooManyReports(f"{len(envelope.results)} reports in one body; at most "
                             f"{MAX_REPORTS} (Infobip sends up to 2000)")
    return judge_all(envelope.results, lambda raw: [to_report(source, _report.decode(raw))],
                     "$.results[{}]", lambda raw: _maybe_id.decode(raw).messageId, WIRE_NAMES)


def decoder(source: InfobipSource, url: str | None, content_type: str | None) -> Decoder:
    """Pushes and report or log pages all carry the same `results` shape."""
    return lambda body: decode_reports(source.name, body)


def to_report(source: str, wire: SentSmsReport) -> Report:
    status, error = wire.status, wire.error
    if error is not None and error.id == NO_ERROR_ID:
        error = None
    number = reconcile.recipient(wire.to) if wire.to else None
    return reconcile.observation(
        source=source,
        message_id=wire.messageId,
        status=reconcile.status_group(status.groupName, status.groupId),
        status_id=status.id,
        status_name=status.name,
        status_description=status.description,
        done_at=moment("doneAt", wire.doneAt),
        error_group_id=error.groupId if error else None,
        error_group_name=error.groupName if error else None,
        error_id=error.id if error else None,
        error_name=error.name if error else None,
        error_permanent=error.permanent if error else None,
        to=number.to if number else None,
        bulk_id=wire.bulkId or None,
        sender=wire.sender or None,
        callback_data=wire.callbackData or None,
        sent_at=moment("sentAt", wire.sentAt),
        sms_count=wire.smsCount,
        price_amount=price("price.pricePerMessage",
                           wire.price.pricePerMessage if wire.price else None),
        price_currency=currency("price.currency", wire.price.currency if wire.price else None),
        mcc_mnc=wire.mccMnc or None,
        operator=reconcile.operator(wire.mccMnc, number.carrier if number else None),
    )


async def fetch_reports_page(client: httpx.AsyncClient, source: InfobipSource, limit: int = 1000,
                             retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET /sms/1/reports: the next page of one-time reports (each is handed out only once)."""
    headers = {"Authorization": f"App {source.api_key}", "Accept": "application/json"}
    return await http.get(client, source.base_url, "/sms/1/reports", headers, {"limit": limit},
                          retry)


async def fetch_logs(client: httpx.AsyncClient, source: InfobipSource, message_id: str,
                     retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET /sms/1/logs for one message: not consuming, kept by Infobip for 48 hours."""
    headers = {"Authorization": f"App {source.api_key}", "Accept": "application/json"}
    return await http.get(client, source.base_url, "/sms/1/logs", headers,
                          {"messageId": message_id}, retry)
