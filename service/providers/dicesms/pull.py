"""One reconcile pass of a DiceSMS source: batch ids, the batches not yet complete and
final, a slice of the full listing walk, and the provider's own counters against ours."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin

import msgspec

from service import db, metrics, store
from service.providers import Rejection, Report, dicesms, http
from service.providers.dicesms import DiceSmsSource

if TYPE_CHECKING:
    from service.pages import Pages

log = logging.getLogger(__name__)
WALK_PAGES_PER_RUN = 50


async def pull(pages: Pages, source: DiceSmsSource) -> None:
    """Batch ids, then the batches not yet complete and final, then a slice of the full walk."""
    statuses = dicesms.StatusTable(source.status_map)
    response = await dicesms.fetch(pages.client, source, "/api/batch-ids", pages.retry)
    rows: list[dicesms.BatchRow] = []

    def batch_ids(body: bytes) -> tuple[list[Report], list[Rejection]]:
        """The list decoded once: kept as the page's check, and its rows used below."""
        found, rejected = dicesms.decode_batch_ids(source.name, body)
        rows.extend(found)
        return [], rejected

    await pages.take(response, batch_ids)  # a 404 is not decoded: no rows
    batch_of = {row.sent_at: row.batch_id for row in rows}
    expected: dict[str, list[bool]] = {}
    for row in rows:
        expected.setdefault(row.batch_id, []).append(
            statuses.is_final(row.status, row.delivered_at is not None))
    async with db.transaction(pages.engine) as conn:
        stored = await store.bulk_progress(conn, source.name, sorted(expected))
    for batch_id, finals in sorted(expected.items()):
        have, have_final = stored.get(batch_id, (0, 0))
        if all(finals) and have >= len(finals) and have_final >= len(finals):
            continue  # every message of the batch is here and final
        path = f"/api/sms-report/{quote(batch_id, safe='')}/"
        response = await dicesms.fetch(pages.client, source, path, pages.retry)
        await pages.take(response, functools.partial(dicesms.decode_batch_report, source,
                                                     statuses, batch_id))
    await _walk(pages, source, statuses, batch_of)
    await _compare_counts(pages, source)
    if statuses.unmapped:
        pages.result.detail = (pages.result.detail or {}) | {"unmapped_statuses": statuses.unmapped}
        for raw, count in statuses.unmapped.items():
            metrics.count_unmapped(source.name, raw, count)


NEPAL = "Asia/Kathmandu"  # DiceSMS counts days in Nepal time


async def _compare_counts(pages: Pages, source: DiceSmsSource) -> None:
    """The provider's enqueue counters per day against our messages; staff-only, 403 is normal."""
    try:
        response = await dicesms.fetch(pages.client, source, "/api/metrics/snapshot/",
                                       pages.retry)
    except http.AuthRejected:
        return
    if response.status_code != 200:
        return
    try:
        theirs = dicesms.enqueued_per_day(response.content)
    except msgspec.MsgspecError:
        log.warning("metrics snapshot not understood", extra={"source": source.name})
        return
    async with db.transaction(pages.engine) as conn:
        ours = await store.sent_per_day(conn, source.name, sorted(theirs), NEPAL)
    pages.result.detail = (pages.result.detail or {}) | {"counts": {
        day: {"provider": n, "ours": ours.get(day, 0), "missing": n - ours.get(day, 0)}
        for day, n in sorted(theirs.items())}}


async def _walk(pages: Pages, source: DiceSmsSource, statuses: dicesms.StatusTable,
                batch_of: Mapping[datetime, str]) -> None:
    """Continue the paginated listing where the last run stopped; `next` stays on our origin.

    A finished walk starts over only after the source's `walk_interval_s`.
    """
    async with db.transaction(pages.engine) as conn:
        url = await store.get_cursor(conn, source.name, "walk_next")
        finished = await store.get_cursor(conn, source.name, "walk_finished_at")
    if url is None and finished is not None:
        since = datetime.now(UTC) - datetime.fromisoformat(finished)
        if since.total_seconds() < source.walk_interval_s:
            return
    url = url or "/api/sms-report/"
    for _ in range(WALK_PAGES_PER_RUN):
        response = await dicesms.fetch(pages.client, source, url, pages.retry)
        await pages.take(response, functools.partial(dicesms.decode_report_page, source,
                                                     statuses, batch_of=batch_of))
        next_url = dicesms.next_url(response.content) if response.status_code == 200 else None
        if next_url is not None and http.origin(urljoin(source.base_url, next_url)) != \
                http.origin(source.base_url):
            raise http.ForeignOrigin(f"refused to follow next {next_url!r}: not on "
                                     f"{source.base_url!r}")
        async with db.transaction(pages.engine) as conn:
            await store.set_cursor(conn, source.name, "walk_next", next_url)
            if next_url is None:
                await store.set_cursor(conn, source.name, "walk_finished_at",
                                       datetime.now(UTC).isoformat())
        if next_url is None:
            return
        url = next_url
