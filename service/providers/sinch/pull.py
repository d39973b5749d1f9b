"""One reconcile pass of a Sinch source: the batches created since the last pass (each
recipient sent: a PENDING report with its sent time), the full delivery report of each of
them not yet stored complete and final, and the recipient report of each registered message
sent meanwhile and still open (up to RECIPIENT_LOOKUPS a pass).

No pass reads again what an earlier one read unless it may have changed since
(service.providers.sweep): a batch's `created_at` never changes, and the list filters on it
(`start_date` "at or after", `end_date` "before",
https://developers.sinch.com/docs/sms/api-reference/sms/batches), so each pass lists the
batches created from where the last pass stopped up to `settle_s` ago, when their
recipients' delivery reports have had time to become final, and reads their reports once.
Every `full_interval_s`, and on the first pass, the whole `lookback_s` is listed again, with
the report of every batch still open there and the look-up of every registered message still
open, for what became final later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec

from service import db, store
from service.providers import http, sinch
from service.providers.sweep import Sweep, Window

if TYPE_CHECKING:
    from service.pages import Pages

PAGE_SIZE = 100  # batches a page (Sinch's most)
BATCH_PAGES = 50
RECIPIENT_LOOKUPS = 100
LOOKUP_AFTER = timedelta(minutes=5)


async def pull(pages: Pages, source: sinch.SinchSource) -> None:
    sweep = Sweep(pages, "batches", source.lookback_s, source.settle_s, source.full_interval_s)
    window = await sweep.window()  # asked for even when empty: the credentials are checked
    recipients: dict[str, int] = {}  # batch id -> its number of recipients
    listed_all = False
    for page in range(BATCH_PAGES):
        params: dict[str, str | int] = {"start_date": _time(window.since), "page": page,
                                        "page_size": PAGE_SIZE}
        if not window.whole:  # a whole re-read lists everything created since
            params["end_date"] = _time(window.until)
        response = await sinch.fetch(pages.client, source, sinch.plan_path(source, "batches"),
                                     params, pages.retry)
        pages.fetched(http.items(response.content, "batches"))
        await pages.take(response)
        if response.status_code != 200:
            break
        listed = sinch.batches_of(response.content)
        recipients |= {b.id: len(b.to) for b in listed.batches}
        if not listed.batches or (page + 1) * PAGE_SIZE >= listed.count:
            listed_all = True
            break
    async with db.transaction(pages.engine) as conn:
        stored = await store.bulk_progress(conn, source.name, sorted(recipients))
    for batch_id, count in sorted(recipients.items()):
        have, have_final = stored.get(batch_id, (0, 0))
        if have >= count and have_final >= count:
            continue  # every recipient is here and final
        path = sinch.plan_path(source, f"batches/{quote(batch_id, safe='')}/delivery_report")
        response = await sinch.fetch(pages.client, source, path, {"type": "full"}, pages.retry)
        pages.fetched(recipients_in(response.content))
        await pages.take(response)
    await _look_up(pages, source, window)
    if listed_all:
        await sweep.reached(window, window.until)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


async def _look_up(pages: Pages, source: sinch.SinchSource, window: Window) -> None:
    """The recipient report of registered messages still without a final status: those sent
    in the window (all of the lookback but the last LOOKUP_AFTER, on a whole re-read)."""
    until = window.until - LOOKUP_AFTER if window.whole else window.until
    async with db.transaction(pages.engine) as conn:
        gaps = await store.gaps(conn, source=source.name, sent_before=until,
                                sent_after=window.since, limit=RECIPIENT_LOOKUPS)
    for gap in gaps:
        named = sinch.recipient_of(gap.message_id) if gap.message_id else None
        if named is None:
            continue
        batch_id, digits = named
        path = sinch.plan_path(source, f"batches/{quote(batch_id, safe='')}/delivery_report/"
                               f"{digits}")
        response = await sinch.fetch(pages.client, source, path, retry=pages.retry)
        pages.fetched(1 if response.status_code == 200 else 0)
        await pages.take(response)


class _Status(msgspec.Struct):
    recipients: list[msgspec.Raw] = []


class _FullReport(msgspec.Struct):
    statuses: list[_Status] = []


_full_report = msgspec.json.Decoder(_FullReport)


def recipients_in(body: bytes) -> int:
    """The recipients a full batch delivery report lists (none when it is no such report)."""
    try:
        return sum(len(status.recipients) for status in _full_report.decode(body).statuses)
    except (msgspec.MsgspecError, RecursionError):
        return 0
