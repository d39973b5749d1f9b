"""The reconciler: per source, on its interval, under a lease: pull → keep raw → merge → record."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
import secrets
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, metrics, retention, spool, store
from service.config import DiceSmsSource, InfobipSource, Source
from service.errors import DatabaseUnavailable
from service.providers import Rejection, Report, dicesms, http, infobip

log = logging.getLogger(__name__)
LEASE_TTL_S = 120.0
UPKEEP_INTERVAL_S = 3600.0


class RunResult(msgspec.Struct):
    source: str
    pages: int = 0
    reports: int = 0
    changed: int = 0
    rejected: int = 0
    error: str | None = None
    detail: dict[str, Any] | None = None


def holder_id() -> str:
    """Names this process in lease rows."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def pullable(sources: Mapping[str, Source]) -> list[Source]:
    """Sources with pull credentials."""
    return [s for s in sources.values()
            if (s.api_key if isinstance(s, InfobipSource) else s.token)]


class Stopping(http.ProviderError):
    """Shutdown asked for: the pass ends after the page in hand (the next pass resumes)."""


def _stoppable(retry: http.Retry, stop: asyncio.Event) -> http.Retry:
    """The same retry policy, whose waits end at once when shutdown is asked for."""

    async def sleep(seconds: float) -> None:
        waits = [asyncio.ensure_future(retry.sleep(seconds)), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if stop.is_set():
            raise Stopping("stopped for shutdown while waiting to retry")

    return dataclasses.replace(retry, sleep=sleep)


async def pull(engine: AsyncEngine, client: httpx.AsyncClient, source: Source, holder: str,
               retry: http.Retry = http.DEFAULT_RETRY, stop: asyncio.Event | None = None,
               spool_dir: Path | None = None) -> RunResult | None:
    """One reconcile pass over one source; None when another process holds its lease.

    With `stop`, the pass ends after the page in hand once it is set: that page is kept
    and merged, and no new one is requested. With `spool_dir`, a one-time page is held on
    disk until the inbox has it, and pages an earlier pass left there are taken first.
    """
    stop = stop or asyncio.Event()
    async with db.statement(engine) as conn:
        if not await store.acquire_lease(conn, source.name, holder, LEASE_TTL_S):
            return None
        run_id = await store.start_run(conn, source.name)
    page = _Pages(engine, client, source, holder, _stoppable(retry, stop), RunResult(source.name),
                  stop, spool_dir)
    try:
        await page.take_held()
        if isinstance(source, InfobipSource):
            await _drain_infobip(page, source)
        else:
            await _pull_dicesms(page, source)
    except http.ProviderError as exc:
        page.result.error = str(exc)
    except DatabaseUnavailable:
        raise
    except Exception:  # a bug: the pass says so in /v1/runs, and the next pass goes on
        log.exception("pull failed", extra={"source": source.name})
        page.result.error = (f"internal error after page {page.result.pages} (see the log); "
                             "kept pages can be merged with replay --rejected")
    finally:
        async with db.statement(engine) as conn:
            result = page.result
            await store.finish_run(conn, run_id, pages=result.pages, reports=result.reports,
                                   changed=result.changed, rejected=result.rejected,
                                   error=result.error, detail=result.detail)
            await store.release_lease(conn, source.name, holder)
    result = page.result
    metrics.RUNS.labels(source.name, "error" if result.error else "ok").inc()
    if not result.error:
        metrics.LAST_SUCCESS.labels(source.name).set_to_current_time()
    metrics.PULLED_REPORTS.labels(source.name).inc(result.reports)
    if counts := (result.detail or {}).get("counts"):
        metrics.show_count_missing(source.name, {day: c["missing"] for day, c in counts.items()})
    log.log(logging.WARNING if result.error else logging.INFO,
            "pull %s: %d pages, %d reports, %d changed, %d rejected%s", source.name,
            result.pages, result.reports, result.changed, result.rejected,
            f"; error: {result.error}" if result.error else "")
    return result


class _Pages:
    """Fetches pages for one run: each kept raw first, then decoded, merged and counted."""

    def __init__(self, engine: AsyncEngine, client: httpx.AsyncClient, source: Source,
                 holder: str, retry: http.Retry, result: RunResult, stop: asyncio.Event,
                 spool_dir: Path | None = None) -> None:
        self.engine, self.client, self.source = engine, client, source
        self.holder, self.retry, self.result, self.stop = holder, retry, result, stop
        self.spool_dir = spool_dir

    async def take(self, response: httpx.Response, decoder: ingest.Decoder,
                   consuming: bool = False) -> ingest.Envelope:
        """Keep a fetched page raw, then decode and merge it. A page of a `consuming`
        endpoint (handed out once) is held on disk first and its inbox write retried until
        it succeeds or the process stops: a database failure cannot lose it."""
        page = spool.Page(self.source.name, str(response.request.url),
                          response.headers.get("content-type"), response.content)
        if response.status_code == 404:  # "nothing found" is an answer
            decoder = _nothing
        if consuming and self.spool_dir is not None:
            held = await asyncio.to_thread(spool.hold, self.spool_dir, page)  # fsync: off the loop
            inbox_id = await self._keep_retrying(page)
            spool.release(held)
        else:
            inbox_id = await self._keep(page)
        return await self._merge(inbox_id, page, decoder)

    async def take_held(self) -> None:
        """Pages an earlier pass held on disk and could not keep: into the inbox first."""
        if self.spool_dir is None:
            return
        for path, page in await asyncio.to_thread(spool.held, self.spool_dir, self.source.name):
            inbox_id = await self._keep_retrying(page)
            spool.release(path)
            log.info("held page kept", extra={"source": page.source, "inbox_id": inbox_id})
            await self._merge(inbox_id, page, ingest.decoder_for(self.source, page.url))

    async def _keep(self, page: spool.Page) -> int:
        async with db.statement(self.engine) as conn:
            return await store.keep_raw(conn, store.InboxRow(
                page.source, "pull", page.content_type, page.body, "received", 0, 0, None,
                page.url))

    async def _keep_retrying(self, page: spool.Page) -> int:
        attempt = 0
        while True:
            try:
                return await self._keep(page)
            except DatabaseUnavailable:
                log.warning("database unavailable: a one-time page waits on disk",
                            extra={"source": page.source})
                if self.stop.is_set():
                    raise Stopping("stopped while the database was unavailable; a page "
                                   "held on disk is kept by the next pass") from None
                await self.retry.sleep(self.retry.delay(min(attempt, 6), None))
                attempt += 1

    async def _merge(self, inbox_id: int, page: spool.Page,
                     decoder: ingest.Decoder) -> ingest.Envelope:
        self.result.pages += 1
        envelope = ingest.decode(self.source.name, "pull", page.body, page.content_type,
                                 decoder, page.url)
        changed, envelope = await ingest.merge_kept(self.engine, inbox_id, envelope)
        self.result.changed += changed
        if unmerged := sum(r.index == ingest.MERGE_FAILED for r in envelope.rejections):
            self.result.error = (f"{unmerged} reports of page {self.result.pages} could not be "
                                 f"merged (kept as inbox #{inbox_id}; replay --rejected after a fix)")
        async with db.statement(self.engine) as conn:
            still_ours = await store.acquire_lease(conn, self.source.name, self.holder,
                                                   LEASE_TTL_S)
        self.result.reports += len(envelope.reports)
        self.result.rejected += len(envelope.rejections)
        if envelope.error is not None:
            raise http.ProviderError(f"page {self.result.pages} unusable (kept as inbox "
                                     f"#{inbox_id}): {envelope.error}")
        if not still_ours:
            raise http.ProviderError("lease lost to another process; stopping")
        if self.stop.is_set():
            raise Stopping(f"stopped for shutdown after page {self.result.pages}; "
                           "the next pass resumes")
        return envelope


def _nothing(body: bytes) -> tuple[list[Report], list[Rejection]]:
    return [], []


async def _drain_infobip(pages: _Pages, source: InfobipSource) -> None:
    """Fetch one-time report pages until one comes back empty.

    Each page is committed raw before it is decoded: a report handed out once is never
    lost to a crash or a decoder bug afterwards (`replay` merges what was kept).
    """
    decoder = ingest.decoder_for(source, None)
    while True:
        response = await infobip.fetch_reports_page(pages.client, source, retry=pages.retry)
        envelope = await pages.take(response, decoder, consuming=True)
        if not envelope.reports and not envelope.rejections:
            break
    await _look_up_gaps(pages, source, decoder)


LOOKUPS_PER_RUN = 100
LOOKUP_AFTER = timedelta(minutes=5)
LOGS_KEPT_FOR = timedelta(hours=48)


async def _look_up_gaps(pages: _Pages, source: InfobipSource, decoder: ingest.Decoder) -> None:
    """Ask /sms/1/logs about registered messages the reports have not finished yet."""
    now = datetime.now(UTC)
    async with db.transaction(pages.engine) as conn:
        missing = await store.gaps(conn, source=source.name, sent_before=now - LOOKUP_AFTER,
                                   sent_after=now - LOGS_KEPT_FOR, with_message_id=True,
                                   limit=LOOKUPS_PER_RUN)
    for gap in missing:
        response = await infobip.fetch_logs(pages.client, source, gap.message_id, pages.retry)
        await pages.take(response, decoder)


WALK_PAGES_PER_RUN = 50


async def _pull_dicesms(pages: _Pages, source: DiceSmsSource) -> None:
    """Batch ids, then the batches not yet complete and final, then a slice of the full walk."""
    statuses = dicesms.StatusTable(source.status_map)
    response = await dicesms.fetch(pages.client, source, "/api/batch-ids", pages.retry)
    rows: list[dicesms.BatchRow] = []

    def batch_ids(body: bytes) -> tuple[list[Report], list[Rejection]]:
        """The list decoded once: kept as the page's check, and its rows used below."""
        found, rejected = dicesms.decode_batch_ids(body)
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
    await _walk_dicesms(pages, source, statuses, batch_of)
    await _compare_counts(pages, source)
    if statuses.unmapped:
        pages.result.detail = (pages.result.detail or {}) | {"unmapped_statuses": statuses.unmapped}
        for raw, count in statuses.unmapped.items():
            metrics.count_unmapped(source.name, raw, count)


NEPAL = "Asia/Kathmandu"  # DiceSMS counts days in Nepal time


async def _compare_counts(pages: _Pages, source: DiceSmsSource) -> None:
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


async def _walk_dicesms(pages: _Pages, source: DiceSmsSource, statuses: dicesms.StatusTable,
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


async def run_forever(engine: AsyncEngine, client: httpx.AsyncClient,
                      sources: Mapping[str, Source], stop: asyncio.Event,
                      retry: http.Retry = http.DEFAULT_RETRY, keep_months: int = 13,
                      spool_dir: Path | None = None) -> None:
    """Until `stop` is set: pull each pullable source on its own interval (with jitter),
    side by side, so a slow provider delays no other; and keep the monthly partitions.
    One-time pages wait under `spool_dir` until the inbox has them."""
    holder = holder_id()
    if not pullable(sources):
        log.info("reconciler has no source to pull")
    await asyncio.gather(_keep_partitions_hourly(engine, keep_months, stop),
                         *[_pull_every(engine, client, source, holder, retry, stop, spool_dir)
                           for source in pullable(sources)])


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def _pull_every(engine: AsyncEngine, client: httpx.AsyncClient, source: Source,
                      holder: str, retry: http.Retry, stop: asyncio.Event,
                      spool_dir: Path | None) -> None:
    while not stop.is_set():
        try:
            await pull(engine, client, source, holder, retry, stop, spool_dir)
        except DatabaseUnavailable:
            log.warning("pull skipped: database unavailable", extra={"source": source.name})
        except Exception:
            log.exception("pull failed", extra={"source": source.name})
        jitter = random.uniform(0, 0.1 * source.pull_interval_s)  # noqa: S311
        await _stopped_within(stop, source.pull_interval_s + jitter)


async def _keep_partitions_hourly(engine: AsyncEngine, keep_months: int,
                                  stop: asyncio.Event) -> None:
    """Start-up made this month's partitions; later months' come from here. A failure is
    logged and the upkeep tried again an interval later: until then DEFAULT takes the rows."""
    while not await _stopped_within(stop, UPKEEP_INTERVAL_S):
        try:
            async with db.transaction(engine) as conn:
                made = await retention.ensure_partitions(conn, datetime.now(UTC), keep_months)
        except DatabaseUnavailable:
            log.warning("partition upkeep skipped: database unavailable")
            continue
        except Exception:
            log.exception("partition upkeep failed")
            continue
        if made:
            log.info("partitions created", extra={"partitions": made})


async def stop_within(task: asyncio.Task[Any], stop: asyncio.Event, grace_s: float) -> None:
    """Wait for `task`; once `stop` is set, allow it `grace_s` to finish, then cancel it.
    A page cut off this way was kept raw before merging: `replay --rejected` merges it."""
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    try:
        await asyncio.wait_for(task, grace_s)
    except TimeoutError:
        log.warning("reconciler cancelled: still busy %s s after the stop", grace_s)
