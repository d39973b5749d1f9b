"""The pages of one reconcile pass: each fetched page kept raw first, then merged and counted."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

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


class RunResult(msgspec.Struct):
    source: str
    pages: int = 0
    reports: int = 0
    changed: int = 0
    rejected: int = 0
    error: str | None = None
    detail: dict[str, Any] | None = None


class Stopping(http.ProviderError):
    """Shutdown asked for: the pass ends after the page in hand (the next pass resumes)."""


class Pages:
    """Fetches pages for one run: each kept raw first, then decoded, merged and counted.

    A provider's pull pass fetches with `client` and `retry` and hands each response to
    `take`; `result` is what the run records.
    """

    def __init__(self, engine: AsyncEngine, client: httpx.AsyncClient, source: Source,
                 holder: str, retry: http.Retry, stop: asyncio.Event,
                 spool_dir: Path | None = None) -> None:
        self.engine, self.client, self.source = engine, client, source
        self.holder, self.retry, self.stop = holder, retry, stop
        self.result = RunResult(source.name)
        self.spool_dir = spool_dir

    async def take(self, response: httpx.Response, decoder: Decoder | None = None,
                   consuming: bool = False) -> ingest.Envelope:
        """Keep a fetched page raw, then decode and merge it (with `decoder`, else the one
        the source's kind reads that URL with; a 404 is "nothing found"). A page of a
        `consuming` endpoint (handed out once) is held on disk first and its inbox write
        retried until it succeeds or the process stops: a database failure cannot lose it."""
        page = spool.Page(self.source.name, str(response.request.url),
                          response.headers.get("content-type"), response.content)
        if response.status_code == 404:
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
            await self._merge(inbox_id, page, None)

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
                     decoder: Decoder | None) -> ingest.Envelope:
        self.result.pages += 1
        changed, envelope = await ingest.merge_body(
            self.engine, inbox_id, self.source, "pull", page.body, page.content_type, page.url,
            decoder)
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
