"""The pages of one reconcile pass: each fetched page kept raw first, then merged and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urljoin

import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, spool, store
from service.errors import DatabaseUnavailable
from service.providers import Rejection, Report, http
from service.providers.base import Decoder
from service.providers.registry import Source

log = logging.getLogger(__name__)
LEASE_TTL_S = 120.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class RunResult(msgspec.Struct):
    source: str
    pages: int = 0
    reports: int = 0
    changed: int = 0
    rejected: int = 0
    error: str | None = None
    detail: dict[str, Any] | None = None
    bytes_fetched: int = 0
    bytes_kept: int = 0
    resighted: int = 0  # pages fetched again unchanged: recorded as seen, not kept again
    # records (reports, messages, batches …) the fetched pages held, unchanged ones too: what
    # a provider that charges per record returned bills for the pass
    records_fetched: int = 0


class Taken(NamedTuple):
    """A page taken: what it held, the merged rows it changed, and whether it was the
    body last kept for its URL fetched again (then neither kept nor merged again)."""

    envelope: ingest.Envelope
    changed: int
    resighted: bool = False


class Stopping(http.ProviderError):
    """Shutdown asked for: the pass ends after the page in hand (the next pass resumes)."""


class Pages:
    """Fetches pages for one run: each kept raw first, then decoded, merged and counted.

    A provider's pull pass fetches with `client` and `retry` and hands each response to
    `take`; `result` is what the run records.
    """

    def __init__(self, engine: AsyncEngine, client: httpx.AsyncClient, source: Source,
                 holder: str, retry: http.Retry, stop: asyncio.Event,
                 spool_dir: Path | None = None, run_id: int | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.engine, self.client, self.source = engine, client, source
        self.holder, self.retry, self.stop = holder, retry, stop
        self.result = RunResult(source.name)
        self.spool_dir, self.run_id = spool_dir, run_id
        self.clock = clock
        # what conditions() read for a URL, for the take() of its answer to use again
        self._last_kept: dict[str, store.KeptBody | None] = {}

    def now(self) -> datetime:
        """The time a pass reads its windows and look-ups by (`clock`: tests move it)."""
        return self.clock()

    def fetched(self, records: int) -> None:
        """Count `records` read from a fetched page (what per-record pricing bills)."""
        self.result.records_fetched += records

    async def conditions(self, path_or_url: str) -> dict[str, str]:
        """Headers that make a GET of a non-consuming URL conditional on the body last kept
        for it (If-None-Match, If-Modified-Since), where the provider gave validators."""
        url = urljoin(self.source.base_url, path_or_url)
        async with db.transaction(self.engine) as conn:
            kept = self._last_kept[url] = await store.last_kept(conn, self.source.name, url)
        if kept is None:
            return {}
        return ({"If-None-Match": kept.etag} if kept.etag else {}) | (
            {"If-Modified-Since": kept.last_modified} if kept.last_modified else {})

    async def take(self, response: httpx.Response, decoder: Decoder | None = None,
                   consuming: bool = False, read_unchanged: bool = False) -> Taken:
        """Keep a fetched page raw, then decode and merge it (with `decoder`, else the one
        the source's kind reads that URL with; a 404 is "nothing found").

        A page of a `consuming` endpoint (handed out once) is held on disk first and its
        inbox write retried until it succeeds or the process stops: a database failure
        cannot lose it. A page of any other endpoint that is the body last kept for its
        URL, byte for byte (or a 304 Not Modified), is recorded as seen again instead:
        neither kept nor merged again, and decoded only with `read_unchanged`.
        """
        url = str(response.request.url)
        page = spool.Page(self.source.name, url, response.headers.get("content-type"),
                          response.content)
        self.result.bytes_fetched += len(page.body)
        if response.status_code == 404:
            decoder = _nothing
        if not consuming and (unchanged := await self._seen_again(response, page)) is not None:
            self.result.pages += 1
            self.result.resighted += 1
            envelope = ingest.Envelope(self.source.name, "pull", b"", page.content_type)
            if read_unchanged:
                envelope = ingest.decode(self.source, "pull", unchanged.body,
                                         unchanged.content_type,
                                         decoder or ingest.decoder_for(self.source, url,
                                                                       unchanged.content_type),
                                         url)
            await self._after_page()
            return Taken(envelope, 0, resighted=True)
        if consuming and self.spool_dir is not None:
            held = await asyncio.to_thread(spool.hold, self.spool_dir, page)  # fsync: off the loop
            inbox_id = await self._keep_retrying(page)
            spool.release(held)
        else:
            inbox_id = await self._keep(page)
            if response.status_code == 200:
                async with db.transaction(self.engine) as conn:
                    await store.remember_kept(conn, self.source.name, url, store.KeptBody(
                        store.sha256(page.body), inbox_id, response.headers.get("etag"),
                        response.headers.get("last-modified")))
        return await self._merge(inbox_id, page, decoder)

    async def _seen_again(self, response: httpx.Response, page: spool.Page) -> spool.Page | None:
        """The page as last kept, when this one is the same (or a 304); recorded as seen."""
        async with db.transaction(self.engine) as conn:
            if page.url in self._last_kept:
                kept = self._last_kept.pop(page.url)
            else:
                kept = await store.last_kept(conn, page.source, page.url)
            if kept is None or (response.status_code != 304 and
                                store.sha256(page.body) != kept.body_hash):
                return None
            await store.seen_again(conn, page.source, kept.inbox_id, self.run_id,
                                   not_modified=response.status_code == 304)
            if response.status_code != 304:
                return page
            row = await store.kept_body(conn, kept.inbox_id)
            if row is None:  # pruned since: forgotten, so that the next fetch is whole
                await store.forget_kept(conn, page.source, page.url)
                return spool.Page(page.source, page.url, None, b"")
        return spool.Page(page.source, page.url, row.content_type, row.body)

    async def take_held(self) -> None:
        """Pages an earlier pass held on disk and could not keep: into the inbox first."""
        if self.spool_dir is None:
            return
        for path, page in await asyncio.to_thread(spool.held, self.spool_dir, self.source.name):
            inbox_id = await self._keep_retrying(page)
            spool.release(path)
            log.info("held page kept", extra={"source": page.source, "inbox_id": inbox_id})
            await self._merge(inbox_id, page, None)

    async def _keep(self, page: spool.Page) -> int:
        self.result.bytes_kept += len(page.body)
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

    async def _merge(self, inbox_id: int, page: spool.Page, decoder: Decoder | None) -> Taken:
        self.result.pages += 1
        changed, envelope = await ingest.merge_body(
            self.engine, inbox_id, self.source, "pull", page.body, page.content_type, page.url,
            decoder)
        self.result.changed += changed
        if unmerged := sum(r.index == ingest.MERGE_FAILED for r in envelope.rejections):
            self.result.error = (f"{unmerged} reports of page {self.result.pages} could not be "
                                 f"merged (kept as inbox #{inbox_id}; replay --rejected after a fix)")
        self.result.reports += len(envelope.reports)
        self.result.rejected += len(envelope.rejections)
        if envelope.error is not None:
            raise http.ProviderError(f"page {self.result.pages} unusable (kept as inbox "
                                     f"#{inbox_id}): {envelope.error}")
        await self._after_page()
        return Taken(envelope, changed)

    async def _after_page(self) -> None:
        """Renew the lease, and end the pass if it was lost or shutdown is asked for."""
        async with db.statement(self.engine) as conn:
            still_ours = await store.acquire_lease(conn, self.source.name, self.holder,
                                                   LEASE_TTL_S)
        if not still_ours:
            raise http.ProviderError("lease lost to another process; stopping")
        if self.stop.is_set():
            raise Stopping(f"stopped for shutdown after page {self.result.pages}; "
                           "the next pass resumes")


def _nothing(body: bytes) -> tuple[list[Report], list[Rejection]]:
    return [], []
