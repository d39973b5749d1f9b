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

from service import db, store
from service.providers import Rejection, Report, dicesms, http
from service.providers.dicesms import DiceSmsSource

if TYPE_CHECKING:
    from service.pages import Pages

log = logging.getLogger(__name__)
WALK_PAGES_PER_RUN = 50


async def pull(pages: Pages, source: DiceSmsSource) -> None:
    """The newest listing page; the batch ids when that page changed (or every
    `batch_ids_interval_s`); the batches not yet complete and final; the rest of the
    listing walk, down to the first page with nothing new; the provider's counters.

    A page fetched again unchanged is not kept again (Pages.take), so an unchanging
    account costs a page or two a pass, and keeps nothing but the record of a sighting.
    """
    statuses = dicesms.StatusTable(source.status_map, source.name)
    response = await dicesms.fetch(pages.client, source, LISTING, pages.retry)
    pages.fetched(http.items(response.content, "results"))
    newest = await pages.take(response, functools.partial(dicesms.decode_report_page, source,
                                                          statuses))
    rows = None
    if not newest.resighted or await _due(pages, source, "batch_ids_at",
                                          source.batch_ids_interval_s):
        rows = await _batch_ids(pages, source)
    await _batches(pages, source, statuses, rows or [])
    batch_of = {row.sent_at: row.batch_id for row in rows or []}
    after_newest = dicesms.next_url(response.content) if response.status_code == 200 else None
    await _walk(pages, source, statuses, batch_of, after_newest, not newest.resighted)
    await _compare_counts(pages, source)
    if statuses.unmapped:  # counted in the metric as they were read
        pages.result.detail = (pages.result.detail or {}) | {"unmapped_statuses": statuses.unmapped}


LISTING = "/api/sms-report/"
OPEN_BATCHES_PER_RUN = 1000


async def _due(pages: Pages, source: DiceSmsSource, cursor: str, interval_s: float) -> bool:
    """Whether `interval_s` has passed since the time kept under `cursor` (or it is unset)."""
    async with db.transaction(pages.engine) as conn:
        last = await store.get_cursor(conn, source.name, cursor)
    return last is None or \
        (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds() >= interval_s


async def _batch_ids(pages: Pages, source: DiceSmsSource) -> list[dicesms.BatchRow]:
    """GET /api/batch-ids (conditional where the provider allows): the rows, read even
    when the list is the one last kept."""
    rows: list[dicesms.BatchRow] = []

    def batch_ids(body: bytes) -> tuple[list[Report], list[Rejection]]:
        """The list decoded once: kept as the page's check, and its rows used below."""
        found, rejected = dicesms.decode_batch_ids(source.name, body)
        rows.extend(found)
        return [], rejected

    response = await dicesms.fetch(pages.client, source, "/api/batch-ids", pages.retry,
                                   await pages.conditions("/api/batch-ids"))
    pages.fetched(http.items(response.content))
    await pages.take(response, batch_ids, read_unchanged=True)  # a 404 is not decoded: no rows
    async with db.transaction(pages.engine) as conn:
        await store.set_cursor(conn, source.name, "batch_ids_at", datetime.now(UTC).isoformat())
    return rows


async def _batches(pages: Pages, source: DiceSmsSource, statuses: dicesms.StatusTable,
                   rows: list[dicesms.BatchRow]) -> None:
    """GET /api/sms-report/{batch_id}/ for each batch the batch ids show incomplete or not
    final here, and each batch whose messages here are not all final."""
    expected: dict[str, list[bool]] = {}
    for row in rows:
        expected.setdefault(row.batch_id, []).append(
            statuses.is_final(row.status, row.delivered_at is not None))
    async with db.transaction(pages.engine) as conn:
        stored = await store.bulk_progress(conn, source.name, sorted(expected))
        still_open = await store.open_bulks(conn, source.name, OPEN_BATCHES_PER_RUN)
    wanted = {batch_id for batch_id, finals in expected.items()
              if not (all(finals) and min(stored.get(batch_id, (0, 0))) >= len(finals))}
    for batch_id in sorted(wanted | set(still_open)):
        path = f"{LISTING}{quote(batch_id, safe='')}/"
        response = await dicesms.fetch(pages.client, source, path, pages.retry,
                                       await pages.conditions(path))
        pages.fetched(http.items(response.content))
        await pages.take(response, functools.partial(dicesms.decode_batch_report, source,
                                                     statuses, batch_id))


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
                batch_of: Mapping[datetime, str], after_newest: str | None,
                newest_changed: bool) -> None:
    """Walk the listing on from where the last pass stopped, or, when the newest page
    changed or the source's `walk_interval_s` has passed, from the page after the newest;
    stop at the first page with nothing new (each of its messages final and unchanged, or
    the page as last kept). `next` stays on the source's origin."""
    async with db.transaction(pages.engine) as conn:
        url = await store.get_cursor(conn, source.name, "walk_next")
    if url is None:
        if after_newest is None or not (newest_changed or await _due(
                pages, source, "walk_finished_at", source.walk_interval_s)):
            return
        url = after_newest
    for _ in range(WALK_PAGES_PER_RUN):
        response = await dicesms.fetch(pages.client, source, url, pages.retry)
        pages.fetched(http.items(response.content, "results"))
        taken = await pages.take(response, functools.partial(
            dicesms.decode_report_page, source, statuses, batch_of=batch_of))
        reports = taken.envelope.reports
        nothing_new = taken.resighted or (
            reports and not taken.changed and all(r.final for r in reports))
        next_url = dicesms.next_url(response.content) \
            if response.status_code == 200 and not nothing_new else None
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
