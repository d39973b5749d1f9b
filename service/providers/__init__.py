"""The neutral report every provider module produces, whatever its wire format."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """One observation of one message's state, normalised (E.164, aware UTC, Decimal).

    `obs_hash` identifies the observation's content; build reports with
    `service.reconcile.observation()`, which fills it in.
    """

    source: str
    message_id: str
    status: str
    final: bool
    obs_hash: bytes
    status_id: int | None = None
    status_name: str | None = None
    status_description: str | None = None
    done_at: datetime | None = None
    error_group_id: int | None = None
    error_group_name: str | None = None
    error_id: int | None = None
    error_name: str | None = None
    error_permanent: bool | None = None
    to: str | None = None
    bulk_id: str | None = None
    sender: str | None = None
    callback_data: str | None = None
    sent_at: datetime | None = None
    sms_count: int | None = None
    price_amount: Decimal | None = None
    price_currency: str | None = None
    mcc_mnc: str | None = None
    operator: str | None = None
    text: str | None = None


class Rejection(msgspec.Struct, frozen=True):
    """A report the decoder could not use: where it was in the body and why."""

    index: int
    reason: str
    message_id: str | None = None
