"""Sinch SMS REST API (XMS): delivery report callbacks (pushed) and delivery reports (pulled).

A message is one recipient of one batch: its id is `batch_id:recipient` (the recipient in
E.164), its bulk id the batch id. Pushed `recipient_delivery_report_sms` callbacks carry one
recipient's status; a batch report (`delivery_report_sms`, pushed or pulled with
`type=full`) lists the recipients per status code when full and is read as one report per
recipient; a summary one lists counts only and is kept raw with no report. A pulled page of
the batches list says each recipient was sent to, when and from whom: a PENDING report each,
which every delivery report outranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit

import httpx
import msgspec

from service import rules
from service.errors import BadRequest
from service.providers import (
    MAX_ID,
    AwareTime,
    Int32,
    Known,
    NumberText,
    OutOfBounds,
    Parts,
    Rejection,
    Report,
    WireStruct,
    http,
    judge_all,
    moment,
    read_json,
)
from service.providers.base import (
    Decoder,
    Delay,
    Interval,
    SourceBase,
    StatusTable,
    status_map_problem,
    sweep_problem,
)
from service.providers.sinch.status import STATUSES as STATUSES

# A recipient report is a few hundred bytes; a full batch report lists its recipients'
# numbers (about 20 bytes each) under their status codes, up to 100,000 of them: such a body
# fits, so it is read, answered 413 past the report cap, and kept.
MAX_CALLBACK_BYTES = 4 * 1024 * 1024


class SinchSource(SourceBase, frozen=True, tag="sinch", tag_field="kind"):
    service_plan_id: str | None = None  # pulls: /xms/v1/{service_plan_id}/…
    api_token: str | None = None  # pulls send "Authorization: Bearer <api_token>"
    lookback_s: Interval = 86400.0  # the batches created this recently are pulled
    # Each pass lists the batches created since the last pass's end, up to settle_s ago,
    # and reads their reports; every full_interval_s, the whole lookback.
    settle_s: Delay = 600.0
    full_interval_s: Interval = 86400.0
    pull_interval_s: Interval = 300.0
    status_map: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def pullable(self) -> bool:
        return bool(self.service_plan_id and self.api_token)

    def problem(self) -> tuple[str, str] | None:
        return sweep_problem(self.lookback_s, self.settle_s) or \
            status_map_problem(self.status_map)


BatchId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]


class RecipientReport(WireStruct):
    """A recipient delivery report: the callback, or GET …/delivery_report/{recipient}."""

    batch_id: BatchId
    recipient: NumberText
    status: str
    code: Int32
    at: AwareTime
    type: str = "recipient_delivery_report_sms"
    operator_status_at: AwareTime | None = None
    client_reference: str | None = None
    number_of_message_parts: Parts | None = None
    applied_originator: str | None = None
    encoding: str | None = None
    operator: str | None = None


class StatusCount(WireStruct):
    code: Int32
    count: int
    status: str
    recipients: list[NumberText] | None = None  # a full report only


class BatchReport(WireStruct):
    """A batch delivery report: the callback, or GET …/delivery_report?type=full."""

    batch_id: BatchId
    statuses: list[StatusCount]
    type: str = "delivery_report_sms"
    client_reference: str | None = None
    total_message_count: int | None = None


class _Kind(msgspec.Struct):
    type: str | None = None
    batch_id: object = None


class BatchSummary(msgspec.Struct):
    """What is read of a batch in the batches list: a text batch's body is its message's
    text, from which its parts are counted where no report says them (its options are not
    kept)."""

    id: BatchId
    to: list[NumberText] = []
    created_at: AwareTime | None = None
    client_reference: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    type: str | None = None  # mt_text, mt_binary or mt_media
    body: str | None = None


class BatchesPage(msgspec.Struct):
    batches: list[BatchSummary] = []
    count: int = 0
    page: int = 0
    page_size: int = 0


WIRE_NAMES = {"message_id": "batch_id/recipient", "to": "recipient", "bulk_id": "batch_id",
              "status_name": "status", "status_id": "code", "done_at": "operator_status_at/at",
              "callback_data": "client_reference", "sms_count": "number_of_message_parts",
              "sender": "applied_originator", "operator": "operator"}
RECIPIENT_TYPES = ("recipient_delivery_report_sms", "recipient_delivery_report_mms")
BATCH_TYPES = ("delivery_report_sms", "delivery_report_mms")

_kind = msgspec.json.Decoder(_Kind)
_recipient = Known(RecipientReport)
_batch = Known(BatchReport)
_batches = msgspec.json.Decoder(BatchesPage)


def decoder(source: SinchSource, url: str | None, content_type: str | None) -> Decoder:
    """Callbacks and pulled reports alike are read by their `type`; the batches list has none
    and yields no report."""
    if url is not None and urlsplit(url).path.rstrip("/").endswith("/batches"):
        return lambda body: decode_batches(source, body)
    return lambda body: decode_report(source, body, pushed=url is None)


def decode_batches(source: SinchSource, body: bytes) -> tuple[list[Report], list[Rejection]]:
    """A page of the batches list: each recipient of each batch sent, PENDING."""
    page = read_json(_batches, body, "a Sinch batches page")
    listed = [(batch, number) for batch in page.batches for number in batch.to]
    return judge_all(listed, lambda item: [sent_report(source.name, *item)],
                     "$.batches[*].to[{}]", lambda item: item[1], WIRE_NAMES)


def sent_report(source: str, batch: BatchSummary, recipient: str) -> Report:
    number = rules.recipient(recipient)
    return rules.observation(
        source=source, message_id=message_id(batch.id, number.to), status=rules.PENDING,
        to=number.to, bulk_id=batch.id, sent_at=moment("created_at", batch.created_at),
        callback_data=batch.client_reference or None, sender=batch.from_ or None,
        operator=number.carrier,
        # a binary batch's body is base64 of its payload, no text: its parts are unknown
        text=batch.body if batch.type in (None, "mt_text") and batch.body else None)


def message_id(batch_id: str, to: str) -> str:
    return f"{batch_id}:{to}"


def decode_report(source: SinchSource, body: bytes, *, pushed: bool = True,
                  ) -> tuple[list[Report], list[Rejection]]:
    kind = read_json(_kind, body, "a Sinch delivery report", pushed=pushed)
    statuses = StatusTable(source.name, STATUSES, source.status_map)

    if kind.type in RECIPIENT_TYPES:
        return judge_all([body], lambda raw: [recipient_report(
            source.name, statuses, _recipient.decode(raw, source.name))], "$",
            lambda _: kind.batch_id, WIRE_NAMES)
    if kind.type in BATCH_TYPES:
        try:
            batch = _batch.decode(body, source.name)
        except (msgspec.DecodeError, OutOfBounds) as exc:  # OutOfBounds: a key given twice
            raise BadRequest(f"not a Sinch batch delivery report: {exc}") from None
        listed = [(status, number) for status in batch.statuses
                  for number in status.recipients or []]
        return judge_all(listed, lambda item: [batch_recipient_report(
            source.name, statuses, batch, *item)], "$.statuses[*].recipients[{}]",
            lambda item: item[1], WIRE_NAMES)
    if kind.type is None:
        raise BadRequest("not a Sinch delivery report: no type")
    raise BadRequest(f"not a Sinch delivery report: unknown type {kind.type[:60]!r}")


def recipient_report(source: str, statuses: StatusTable, wire: RecipientReport) -> Report:
    number = rules.recipient(wire.recipient)
    return rules.observation(
        source=source,
        message_id=message_id(wire.batch_id, number.to),
        **statuses.state(wire.status),
        status_id=wire.code,
        status_name=wire.status,
        done_at=moment("operator_status_at", wire.operator_status_at) or moment("at", wire.at),
        to=number.to,
        bulk_id=wire.batch_id,
        callback_data=wire.client_reference or None,
        sms_count=wire.number_of_message_parts,
        sender=wire.applied_originator or None,
        operator=wire.operator or number.carrier,
    )


def batch_recipient_report(source: str, statuses: StatusTable, batch: BatchReport,
                           status: StatusCount, recipient: str) -> Report:
    number = rules.recipient(recipient)
    return rules.observation(
        source=source,
        message_id=message_id(batch.batch_id, number.to),
        **statuses.state(status.status),
        status_id=status.code,
        status_name=status.status,
        to=number.to,
        bulk_id=batch.batch_id,
        callback_data=batch.client_reference or None,
        operator=number.carrier,
    )


def batches_of(body: bytes) -> BatchesPage:
    return _batches.decode(body)


def headers(source: SinchSource) -> dict[str, str]:
    return {"Authorization": f"Bearer {source.api_token}", "Accept": "application/json"}


def plan_path(source: SinchSource, tail: str) -> str:
    return f"/xms/v1/{quote(source.service_plan_id or '', safe='')}/{tail}"


async def fetch(client: httpx.AsyncClient, source: SinchSource, path: str,
                params: Mapping[str, str | int] | None = None,
                retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET with the Bearer token; a 404 (no such batch or report yet) is an answer."""
    return await http.get(client, source.base_url, path, headers(source), params, retry,
                          accept=(200, 404))


def recipient_of(message: str) -> tuple[str, str] | None:
    """The batch id and recipient digits a message id names, or None."""
    batch_id, _, to = unquote(message).rpartition(":")
    digits = to.removeprefix("+")
    return (batch_id, digits) if batch_id and digits.isdigit() else None
