"""The query API's own JSON shapes (separate from providers' wire structs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Price(msgspec.Struct):
    amount: str
    currency: str | None


class ProviderStatus(msgspec.Struct):
    id: int | None
    name: str | None
    description: str | None


class ErrorInfo(msgspec.Struct):
    group: str | None
    group_id: int | None
    id: int | None
    name: str | None
    permanent: bool | None


class Message(msgspec.Struct):
    source: str
    message_id: str
    bulk_id: str | None
    to: str | None
    sender: str | None
    callback_data: str | None
    status: str
    final: bool
    provider_status: ProviderStatus
    error: ErrorInfo | None
    sent_at: datetime | None
    done_at: datetime | None
    sms_count: int | None
    price: Price | None
    mcc_mnc: str | None
    operator: str | None
    text: str | None
    seq: int
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


def message_from_row(row: Any) -> Message:
    """Message JSON from a `messages` row."""
    error = None
    if row.error_id is not None or row.error_name is not None:
        error = ErrorInfo(row.error_group_name, row.error_group_id, row.error_id, row.error_name,
                          row.error_permanent)
    price = None
    if row.price_amount is not None:
        price = Price(format(row.price_amount, "f"), row.price_currency)
    return Message(
        source=row.source, message_id=row.message_id, bulk_id=row.bulk_id, to=row.to,
        sender=row.sender, callback_data=row.callback_data, status=row.status, final=row.final,
        provider_status=ProviderStatus(row.status_id, row.status_name, row.status_description),
        error=error, sent_at=row.sent_at, done_at=row.done_at, sms_count=row.sms_count,
        price=price, mcc_mnc=row.mcc_mnc, operator=row.operator, text=row.text, seq=row.seq,
        updated_at=row.updated_at,
    )
