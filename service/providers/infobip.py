"""Infobip-compatible delivery reports: wire structs and the decoder to neutral Reports.

The same `{"results": [...]}` shape arrives by webhook push and from GET /sms/1/reports.
Status and error groups are read as plain values (new ids and names appear over time).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import httpx
import msgspec

from service import reconcile
from service.config import InfobipSource
from service.errors import BadRequest
from service.providers import Rejection, Report, http

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
Count = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Id = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
NO_ERROR_ID = 0


class Status(msgspec.Struct):
    groupId: Id | None = None
    groupName: str | None = None
    id: Id | None = None
    name: str | None = None
    description: str | None = None


class Error(msgspec.Struct):
    groupId: Id | None = None
    groupName: str | None = None
    id: Id | None = None
    name: str | None = None
    permanent: bool | None = None


class Price(msgspec.Struct):
    pricePerMessage: Decimal | None = None
    currency: str | None = None


class SentSmsReport(msgspec.Struct):
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    status: Status
    bulkId: str | None = None
    to: str | None = None
    sender: str | None = msgspec.field(default=None, name="from")
    sentAt: AwareTime | None = None
    doneAt: AwareTime | None = None
    smsCount: Count | None = None
    mccMnc: str | None = None
    callbackData: str | None = None
    price: Price | None = None
    error: Error | None = None


class _Envelope(msgspec.Struct):
    results: list[msgspec.Raw]


class _MaybeId(msgspec.Struct):
    messageId: object = None


_envelope = msgspec.json.Decoder(_Envelope)
_report = msgspec.json.Decoder(SentSmsReport)
_maybe_id = msgspec.json.Decoder(_MaybeId)


def decode_reports(source: str, body: bytes) -> tuple[list[Report], list[Rejection]]:
    """Decode a results body; a bad report is rejected alone, a bad body raises BadRequest."""
    try:
        envelope = _envelope.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"not an Infobip report body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    reports: list[Report] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(envelope.results):
        try:
            reports.append(to_report(source, _report.decode(raw)))
        except msgspec.ValidationError as exc:
            reason = str(exc).replace("`$", f"`$.results[{index}]")
            rejections.append(Rejection(index, reason, _message_id(raw)))
    return reports, rejections


def _message_id(raw: msgspec.Raw) -> str | None:
    try:
        value = _maybe_id.decode(raw).messageId
    except msgspec.MsgspecError:
        return None
    return value if isinstance(value, str) else None


def to_report(source: str, wire: SentSmsReport) -> Report:
    status, error = wire.status, wire.error
    if error is not None and error.id == NO_ERROR_ID:
        error = None
    amount = wire.price.pricePerMessage if wire.price else None
    number = reconcile.recipient(wire.to) if wire.to else None
    if amount is not None and not amount.is_finite():
        raise msgspec.ValidationError("Expected a finite number - at `$.price.pricePerMessage`")
    return reconcile.observation(
        source=source,
        message_id=wire.messageId,
        status=reconcile.status_group(status.groupName, status.groupId),
        status_id=status.id,
        status_name=status.name,
        status_description=status.description,
        done_at=reconcile.utc(wire.doneAt),
        error_group_id=error.groupId if error else None,
        error_group_name=error.groupName if error else None,
        error_id=error.id if error else None,
        error_name=error.name if error else None,
        error_permanent=error.permanent if error else None,
        to=number.to if number else None,
        bulk_id=wire.bulkId or None,
        sender=wire.sender or None,
        callback_data=wire.callbackData or None,
        sent_at=reconcile.utc(wire.sentAt),
        sms_count=wire.smsCount,
        price_amount=amount,
        price_currency=(wire.price.currency or None) if wire.price else None,
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
