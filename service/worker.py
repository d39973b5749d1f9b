"""The reconciler: per source, on its interval, under a lease: pull → keep raw → merge → record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Mapping

import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, ingest, store
from service.config import InfobipSource, Source
from service.errors import DatabaseUnavailable
from service.providers import http, infobip

log = logging.getLogger(__name__)
LEASE_TTL_S = 120.0


class RunResult(msgspec.Struct):
    source: str
    pages: int = 0
    reports: int = 0
    changed: int = 0
    rejected: int = 0
    error: str | None = None


def holder_id() -> str:
    """Names this process in lease rows."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def pullable(sources: Mapping[str, Source]) -> list[Source]:
    """Sources this version can pull: Infobip-compatible ones with an API key."""
    return [s for s in sources.values() if isinstance(s, InfobipSource) and s.api_key]


async def pull(engine: AsyncEngine, client: httpx.AsyncClient, source: Source, holder: str,
               retry: http.Retry = http.DEFAULT_RETRY) -> RunResult | None:
    """One reconcile pass over one source; None when another process holds its lease."""
    async with db.statement(engine) as conn:
        if not await store.acquire_lease(conn, source.name, holder, LEASE_TTL_S):
            return None
        run_id = await store.start_run(conn, source.name)
    result = RunResult(source.name)
    try:
        if not isinstance(source, InfobipSource):
            raise http.ProviderError(f"pulling {source.name!r} (dicesms) is not supported yet")
        await _drain_infobip(engine, client, source, holder, result, retry)
    except http.ProviderError as exc:
        result.error = str(exc)
    finally:
        async with db.statement(engine) as conn:
            await store.finish_run(conn, run_id, pages=result.pages, reports=result.reports,
                                   changed=result.changed, rejected=result.rejected,
                                   error=result.error)
            await store.release_lease(conn, source.name, holder)
    log.info("pull finished", extra=msgspec.structs.asdict(result))
    return result


async def _drain_infobip(engine: AsyncEngine, client: httpx.AsyncClient, source: InfobipSource,
                         holder: str, result: RunResult, retry: http.Retry) -> None:
    """Fetch one-time report pages until one comes back empty.

    Each page is committed raw before it is decoded: a report handed out once is never
    lost to a crash or a decoder bug afterwards (`replay` merges what was kept).
    """
    while True:
        response = await infobip.fetch_reports_page(client, source, retry=retry)
        content_type = response.headers.get("content-type")
        async with db.statement(engine) as conn:
            kept = store.InboxRow(source.name, "pull", content_type, response.content,
                                  "received", 0, 0, None)
            inbox_id = await store.keep_raw(conn, kept)
        result.pages += 1
        envelope = ingest.decode_infobip(source.name, "pull", response.content, content_type)
        async with db.transaction(engine) as conn:
            result.changed += await store.write(conn, [], [(r, "pull") for r in envelope.reports])
            await store.mark_inbox(conn, inbox_id, envelope.inbox_row())
            still_ours = await store.acquire_lease(conn, source.name, holder, LEASE_TTL_S)
        result.reports += len(envelope.reports)
        result.rejected += len(envelope.rejections)
        if envelope.error is not None:
            raise http.ProviderError(f"page {result.pages} unusable (kept as inbox "
                                     f"#{inbox_id}): {envelope.error}")
        if not still_ours:
            raise http.ProviderError("lease lost to another process; stopping")
        if not envelope.reports and not envelope.rejections:
            return


async def run_forever(engine: AsyncEngine, client: httpx.AsyncClient,
                      sources: Mapping[str, Source], stop: asyncio.Event) -> None:
    """Pull every pullable source on its interval (with jitter) until `stop` is set."""
    holder = holder_id()
    due = {s.name: time.monotonic() for s in pullable(sources)}
    if not due:
        log.info("reconciler has no source to pull")
        return
    while not stop.is_set():
        for source in pullable(sources):
            if due[source.name] > time.monotonic() or stop.is_set():
                continue
            try:
                await pull(engine, client, source, holder)
            except DatabaseUnavailable:
                log.warning("pull skipped: database unavailable", extra={"source": source.name})
            except Exception:
                log.exception("pull failed", extra={"source": source.name})
            jitter = random.uniform(0, 0.1 * source.pull_interval_s)  # noqa: S311
            due[source.name] = time.monotonic() + source.pull_interval_s + jitter
        pause = max(0.0, min(due.values()) - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
