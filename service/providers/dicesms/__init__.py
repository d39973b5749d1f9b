"""DiceSMS: wire structs, the status table, derived message ids, and the pull client.

DiceSMS reports carry no message id: a message is identified by its recipient (E.164,
numbers given without country code are read in the source's region) and its `sent_at`
to the microsecond. Its batch id comes from /api/sms-report/{batch_id}/ or, for the
paginated listing, from /api/batch-ids joined on `sent_at`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated
from urllib.parse import unquote, urlsplit

import httpx
import msgspec
import phonenumbers

from service import rules
from service.providers import (
    ROOT,
    AwareTime,
    IdText,
    Int32,
    Known,
    MessageText,
    NameText,
    NumberText,
    OutOfBounds,
    Rejection,
    Report,
    WireStruct,
    base,
    http,
    judge_all,
    moment,
    read_json,
)
from service.providers.base import Decoder, Interval, SourceBase
from service.providers.dicesms.status import STATUSES


class DiceSmsSource(SourceBase, frozen=True, tag="dicesms", tag_field="kind"):
    token: str | None = None  # pulls send "Authorization: Token <token>"
    default_region: str = "NP"
    pull_interval_s: Interval = 300.0
    walk_interval_s: Interval = 3600.0  # how often the full listing walk starts over
    batch_ids_interval_s: Interval = 3600.0  # batch ids read at least this often
    status_map: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def pullable(self) -> bool:
        return bool(self.token)

    @property
    def region(self) -> str | None:
        return self.default_region

    def identify(self, to: str | None, sent_at: datetime,
                 given_id: str | None) -> tuple[str | None, str | None]:
        """DiceSMS reports carry neither message id nor callback data: a registration
        matches by the id derived from its `to` (read in the source's region) and `sent_at`
        (to the microsecond, as DiceSMS reports it), so it needs `to`, and a message id it
        gives must be that one."""
        if not to:
            raise OutOfBounds("to", "a DiceSMS registration needs `to`: DiceSMS reports carry "
                              "no message id, so the id comes from `to` and `sent_at` (to "
                              "the microsecond, as DiceSMS reports it)")
        number = rules.recipient(to, self.default_region).to
        derived = message_id(number, sent_at)
        if given_id is not None and given_id != derived:
            raise OutOfBounds("message_id", f"a DiceSMS message id is derived from `to` and "
                              f"`sent_at`: {derived!r}; give that one or none")
        return number, derived

    def problem(self) -> tuple[str, str] | None:
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            return "default_region", (f"{self.default_region!r} is not a region code "
                                      "(ISO 3166, e.g. NP)")
        return base.status_map_problem(self.status_map)


PhoneDigits = Annotated[int, msgspec.Meta(ge=0, lt=10**18)]  # an int64; MAX_TO bounds strings
RawStatus = NameText | Int32
MAX_URL = 2048  # a `next` link, kept as the walk's cursor
# A DiceSMS message goes to one number, or a handful; not to thousands in one report.
MAX_RECIPIENTS = 1000


class Recipient(WireStruct):
    client_phone: PhoneDigits | NumberText
    client_name: str | None = None


class SmsReport(WireStruct):
    recipients: Annotated[list[Recipient], msgspec.Meta(max_length=MAX_RECIPIENTS)]
    sent_at: AwareTime
    status: RawStatus | None = None
    delivered_at: AwareTime | None = None
    message: MessageText | None = None


class BatchRow(WireStruct):
    sent_at: AwareTime
    batch_id: IdText
    status: RawStatus | None = None
    delivered_at: AwareTime | None = None


class _Recipients(msgspec.Struct):
    recipients: list[msgspec.Raw] = []


class ReportPage(msgspec.Struct):
    results: list[msgspec.Raw]
    next: Annotated[str, msgspec.Meta(max_length=MAX_URL)] | None = None
    count: int | None = None


# Report fields by their names in a DiceSMS body, for rejection reasons.
WIRE_NAMES = {"to": "recipients.client_phone", "text": "message", "status_name": "status",
              "status": "status", "done_at": "delivered_at", "bulk_id": "batch_id",
              "message_id": "recipients.client_phone"}

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_report = Known(SmsReport)
_page = msgspec.json.Decoder(ReportPage)
_batch_row = Known(BatchRow)
_recipients = msgspec.json.Decoder(_Recipients)


class StatusTable(base.StatusTable):
    """DiceSMS status words and digits to status groups (the documented table, then the
    source's `status_map`); a status that is not a failure, with `delivered_at`, is
    DELIVERED."""

    def __init__(self, overrides: Mapping[str, str], source: str = "") -> None:
        super().__init__(source, STATUSES, overrides)

    def group(self, raw: str, delivered: bool = False) -> str:
        if delivered:  # an explicit failure stands, whatever its timestamps say
            found = self.table.get(raw.lower())
            return found.group if found is not None and found.final else "DELIVERED"
        return super().group(raw)

    def is_final(self, raw: str | int | None, delivered: bool) -> bool:
        return rules.is_final(self.group(str(raw or ""), delivered))


def message_id(to: str, sent_at: datetime) -> str:
    """The stable id of a DiceSMS message: its recipient and when it was sent."""
    stamp = rules.utc(sent_at)
    assert stamp is not None
    return f"{to}@{stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def to_reports(source: DiceSmsSource, statuses: StatusTable, item: SmsReport,
               batch_id: str | None) -> list[Report]:
    sent_at = moment("sent_at", item.sent_at)
    assert sent_at is not None
    done_at = moment("delivered_at", item.delivered_at)
    raw_status = str(item.status) if item.status is not None else ""
    group = statuses.group(raw_status, done_at is not None)
    reports = []
    for recipient in item.recipients:
        number = rules.recipient(str(recipient.client_phone), source.default_region)
        reports.append(rules.observation(
            source=source.name,
            message_id=message_id(number.to, sent_at),
            status=group,
            status_name=raw_status or None,
            done_at=done_at,
            to=number.to,
            bulk_id=batch_id,
            sent_at=sent_at,
            text=item.message,
            operator=rules.operator(None, number.carrier),
        ))
    return reports


def _decode_items(source: DiceSmsSource, statuses: StatusTable, items: list[msgspec.Raw],
                  batch_of: Mapping[datetime, str], batch_id: str | None, path: str,
                  ) -> tuple[list[Report], list[Rejection]]:
    def build(raw: msgspec.Raw) -> list[Report]:
        item = _report.decode(raw, source.name)
        return to_reports(source, statuses, item, batch_id or batch_of.get(item.sent_at))

    return judge_all(items, build, path, wire_names=WIRE_NAMES, weigh=_weight)


def _weight(raw: msgspec.Raw) -> int:
    """The reports an item yields, one per recipient, counted before it is judged."""
    try:
        return len(_recipients.decode(raw).recipients)
    except (msgspec.MsgspecError, RecursionError):
        return 1  # judged, it is a rejection


def decode_batch_report(source: DiceSmsSource, statuses: StatusTable, batch_id: str,
                        body: bytes) -> tuple[list[Report], list[Rejection]]:
    """GET /api/sms-report/{batch_id}/: a JSON list of report items."""
    items = read_json(_raw_list, body, "a DiceSMS report list", items=ROOT)
    return _decode_items(source, statuses, items, {}, batch_id, "$[{}]")


def decode_report_page(source: DiceSmsSource, statuses: StatusTable,
                       body: bytes, batch_of: Mapping[datetime, str] | None = None,
                       ) -> tuple[list[Report], list[Rejection]]:
    """GET /api/sms-report/: one page of the paginated listing (batch ids joined on sent_at)."""
    page = read_json(_page, body, "a DiceSMS report page", items="results")
    return _decode_items(source, statuses, page.results, batch_of or {}, None, "$.results[{}]")


def next_url(body: bytes) -> str | None:
    """The `next` link of a listing page that decoded (an item nested too deeply in it is
    rejected alone, and does not stop the walk)."""
    return read_json(_page, body, "a DiceSMS report page", items="results").next


def decode_batch_ids(source: str, body: bytes) -> tuple[list[BatchRow], list[Rejection]]:
    """GET /api/batch-ids: the rows that decode, and why the others did not."""
    items = read_json(_raw_list, body, "a DiceSMS batch-id list", items=ROOT)

    def build(raw: msgspec.Raw) -> list[BatchRow]:
        row = _batch_row.decode(raw, source)
        moment("sent_at", row.sent_at)
        moment("delivered_at", row.delivered_at)
        return [row]

    return judge_all(items, build, "$[{}]", capped=False)  # rows, not reports


def decoder(source: DiceSmsSource, url: str | None, content_type: str | None) -> Decoder:
    """How to read a body of `source` by where it was fetched from."""
    statuses = StatusTable(source.status_map, source.name)
    path = urlsplit(url or "").path.rstrip("/")
    if path.endswith("/api/batch-ids"):
        return lambda raw: no_reports(source.name, raw)
    if path.endswith("/api/sms-report"):
        return lambda raw: decode_report_page(source, statuses, raw)
    batch_id = unquote(path.rsplit("/", 1)[-1])
    return lambda raw: decode_batch_report(source, statuses, batch_id, raw)


def no_reports(source: str, body: bytes) -> tuple[list[Report], list[Rejection]]:
    """A batch-id list, checked: its rows carry no recipient, so no report of their own."""
    return [], decode_batch_ids(source, body)[1]


def headers(source: DiceSmsSource) -> dict[str, str]:
    return {"Authorization": f"Token {source.token}", "Accept": "application/json"}


async def fetch(client: httpx.AsyncClient, source: DiceSmsSource, path_or_url: str,
                retry: http.Retry = http.DEFAULT_RETRY,
                conditions: Mapping[str, str] | None = None) -> httpx.Response:
    """GET a DiceSMS endpoint; a 404 is an answer ("nothing found"), not a failure, and so
    is a 304 to a conditional GET (`conditions`: If-None-Match, If-Modified-Since)."""
    return await http.get(client, source.base_url, path_or_url,
                          headers(source) | dict(conditions or {}), retry=retry,
                          accept=(200, 304, 404) if conditions else (200, 404))


DAY_COUNTER = re.compile(r"^sms:metrics:enqueue:d:(\d{8})$")


def enqueued_per_day(body: bytes) -> dict[str, int]:
    """From /api/metrics/snapshot/: messages the provider enqueued per local day (YYYYMMDD)."""
    counters = msgspec.json.decode(body, type=dict[str, int])
    return {m[1]: value for key, value in counters.items() if (m := DAY_COUNTER.match(key))}
