"""One reconcile pass of a Sinch source: the batches created within `lookback_s` (each
recipient sent: a PENDING report with its sent time), the full
delivery report of each batch not yet stored complete and final, and the recipient report
of each registered message still open (up to RECIPIENT_LOOKUPS a pass)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec

from service import db, store
from service.providers import http, sinch

if TYPE_CHECKING:
    from service.pages import Pages

PAGE_SIZE = 100  # batches a page (Sinch's most)
BATCH_PAGES = 50
RECIPIENT_LOOKUPS = 100
LOOKUP_AFTER = timedelta(minutes=5)


async def pull(pages: Pages, source: sinch.SinchSource) -> None:
    since = datetime.now(UTC) - timedelta(seconds=source.lookback_s)
    recipients: dict[str, int] = {}  # batch id -> its number of recipients
    for page in range(BATCH_PAGES):
        response = await sinch.fetch(pages.client, source, sinch.plan_path(source, "batches"), {
            "start_date": since.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "page": page,
            "page_size": PAGE_SIZE}, pages.retry)
        pages.fetched(http.items(response.content, "batches"))
        await pages.take(response)
        if response.status_code != 200:
            break
        listed = sinch.batches_of(response.content)
        recipients |= {b.id: len(b.to) for b in listed.batches}
        if not listed.batches or (page + 1) * PAGE_SIZE >= listed.count:
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
    await _look_up(pages, source)


async def _look_up(pages: Pages, source: sinch.SinchSource) -> None:
    """The recipient report of registered messages still without a final status."""
    now = datetime.now(UTC)
    async with db.transaction(pages.engine) as conn:
        gaps = await store.gaps(conn, source=source.name, sent_before=now - LOOKUP_AFTER,
                                sent_after=now - timedelta(seconds=source.lookback_s),
                                limit=RECIPIENT_LOOKUPS)
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
