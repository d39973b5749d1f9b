"""One reconcile pass of an Infobip-compatible source: drain the one-time reports, then
look up registered messages the reports have not finished."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from service import db, store
from service.providers import infobip

if TYPE_CHECKING:
    from service.pages import Pages

LOOKUPS_PER_RUN = 100
LOOKUP_AFTER = timedelta(minutes=5)
LOGS_KEPT_FOR = timedelta(hours=48)


async def pull(pages: Pages, source: infobip.InfobipSource) -> None:
    """Fetch one-time report pages until one comes back empty, then look up the gaps.

    Each page is committed raw before it is decoded: a report handed out once is never
    lost to a crash or a decoder bug afterwards (`replay` merges what was kept).
    """
    while True:
        response = await infobip.fetch_reports_page(pages.client, source, retry=pages.retry)
        envelope = await pages.take(response, consuming=True)
        if not envelope.reports and not envelope.rejections:
            break
    await _look_up_gaps(pages, source)


async def _look_up_gaps(pages: Pages, source: infobip.InfobipSource) -> None:
    """Ask /sms/1/logs about registered messages the reports have not finished yet."""
    now = datetime.now(UTC)
    async with db.transaction(pages.engine) as conn:
        missing = await store.gaps(conn, source=source.name, sent_before=now - LOOKUP_AFTER,
                                   sent_after=now - LOGS_KEPT_FOR, with_message_id=True,
                                   limit=LOOKUPS_PER_RUN)
    for gap in missing:
        response = await infobip.fetch_logs(pages.client, source, gap.message_id, pages.retry)
        await pages.take(response)
