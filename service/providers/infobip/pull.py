"""One reconcile pass of an Infobip-compatible source: drain the one-time reports, then
look up in the logs the registered messages the reports have not finished.

The logs are not consuming and keep 48 hours; a look-up asks again only what may have
changed since (service.providers.sweep): each pass looks up the open registrations sent
from where the last pass's look-ups stopped (the pull cursor `lookups.until`) up to 5
minutes ago, each once; every `full_interval_s`, and on the first pass, every registration
still open of the last 48 hours, for the messages whose status came later."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from service import db, store
from service.errors import BadRequest
from service.providers import http, infobip, read_json
from service.providers.sweep import Sweep, Window

if TYPE_CHECKING:
    from service.pages import Pages

LOOKUP_AFTER = timedelta(minutes=5)
LOGS_KEPT_FOR = timedelta(hours=48)
V1_LOOKUPS_PER_RUN = 100  # /sms/1/logs: one request per message
OPEN_PER_RUN = 10_000  # /sms/3/logs: open registrations looked up per pass, oldest first
IDS_CHARS = 2048  # Infobip's limit on a comma-separated messageId or bulkId list
ID_REQUESTS = 10  # more lists of ids than this: read the logs of their time window instead
WINDOW_PAGES = 100  # of 1000 logs each
LOGS_LIMIT = 1000


async def pull(pages: Pages, source: infobip.InfobipSource) -> None:
    """Fetch one-time report pages until one comes back empty, then look up the gaps.

    Each page is committed raw before it is decoded: a report handed out once is never
    lost to a crash or a decoder bug afterwards (`replay` merges what was kept).
    """
    while True:
        response = await infobip.fetch_reports_page(pages.client, source, retry=pages.retry)
        pages.fetched(http.items(response.content, "results"))
        envelope = (await pages.take(response, consuming=True)).envelope
        if not envelope.reports and not envelope.rejections:
            break
    if source.api_version == 1:
        await _look_up_v1(pages, source)
    else:
        await _look_up(pages, source)


async def _open(pages: Pages, source: infobip.InfobipSource,
                limit: int) -> tuple[Sweep, Window, Sequence[Any]]:
    """The registered messages without a final status this pass looks up: those sent in
    its window, up to 5 minutes ago, oldest first, at most `limit`."""
    sweep = Sweep(pages, "lookups", LOGS_KEPT_FOR.total_seconds(),
                  LOOKUP_AFTER.total_seconds(), source.full_interval_s)
    window = await sweep.window()
    async with db.transaction(pages.engine) as conn:
        gaps = await store.gaps(conn, source=source.name, sent_after=window.since,
                                sent_before=min(window.until, sweep.settled), limit=limit)
    return sweep, window, gaps


async def _looked_up(sweep: Sweep, window: Window, gaps: Sequence[Any], limit: int) -> None:
    """The next pass goes on after these (after the last one, when there were more)."""
    last = gaps[-1].sent_at if len(gaps) >= limit else None
    await sweep.reached(window, last if last and last > window.since else window.until)


async def _look_up_v1(pages: Pages, source: infobip.InfobipSource) -> None:
    sweep, window, gaps = await _open(pages, source, V1_LOOKUPS_PER_RUN)
    for gap in gaps:
        if gap.message_id:
            response = await infobip.fetch_logs(pages.client, source, {
                "messageId": gap.message_id}, pages.retry)
            pages.fetched(http.items(response.content, "results"))
            await pages.take(response)
    await _looked_up(sweep, window, gaps, V1_LOOKUPS_PER_RUN)


async def _look_up(pages: Pages, source: infobip.InfobipSource) -> None:
    """/sms/3/logs for the open messages: by lists of message ids (and bulk ids, for those
    registered by callback data), or, when that takes more than ID_REQUESTS requests, every
    log of their time window, a thousand a page."""
    sweep, window, gaps = await _open(pages, source, OPEN_PER_RUN)
    await _read_open(pages, source, gaps)
    await _looked_up(sweep, window, gaps, OPEN_PER_RUN)


async def _read_open(pages: Pages, source: infobip.InfobipSource, gaps: Sequence[Any]) -> None:
    message_ids = sorted({g.message_id for g in gaps if g.message_id})
    bulk_ids = sorted({g.bulk_id for g in gaps
                       if not g.message_id and g.bulk_id})
    lists = [("messageId", ids) for ids in comma_lists(message_ids)] + \
            [("bulkId", ids) for ids in comma_lists(bulk_ids)]
    if len(lists) <= ID_REQUESTS:
        for name, ids in lists:
            await _read_logs(pages, source, {name: ids})
        return
    sent = [g.sent_at for g in gaps]
    await _read_logs(pages, source, {
        "sentSince": infobip.infobip_time(min(sent) - LOOKUP_AFTER),
        "sentUntil": infobip.infobip_time(max(sent) + LOOKUP_AFTER)}, WINDOW_PAGES)


async def _read_logs(pages: Pages, source: infobip.InfobipSource,
                     params: dict[str, str | int], most_pages: int = WINDOW_PAGES) -> None:
    """Every page of a logs query, following `cursor.nextCursor`."""
    params = params | {"limit": LOGS_LIMIT, "useCursor": "true"}
    for _ in range(most_pages):
        response = await infobip.fetch_logs(pages.client, source, params, pages.retry)
        pages.fetched(http.items(response.content, "results"))
        await pages.take(response)
        cursor = next_cursor(response.content) if response.status_code == 200 else None
        if cursor is None:
            return
        params = params | {"cursor": cursor}


class _Cursor(msgspec.Struct):
    nextCursor: str | None = None


class _LogsPage(msgspec.Struct):
    cursor: _Cursor | None = None
    results: list[msgspec.Raw] = []  # raw: read_json cuts them out if one nests too deeply


_logs_page = msgspec.json.Decoder(_LogsPage)


def next_cursor(body: bytes) -> str | None:
    """The cursor of the next logs page, or None on the last (or an unreadable) page; read
    as the page is, so a log nested too deeply is no end."""
    try:
        page = read_json(_logs_page, body, "an Infobip logs page", items="results")
    except BadRequest:
        return None
    return page.cursor.nextCursor if page.cursor and page.cursor.nextCursor else None


def comma_lists(ids: Iterable[str], limit: int = IDS_CHARS) -> list[str]:
    """Ids joined by commas into as few lists of at most `limit` characters as fit; an id
    that holds a comma cannot be asked for this way, and is left out."""
    lists: list[str] = []
    current = ""
    for one in ids:
        if "," in one or len(one) > limit:
            continue
        if current and len(current) + 1 + len(one) > limit:
            lists.append(current)
            current = ""
        current = f"{current},{one}" if current else one
    return [*lists, current] if current else lists
