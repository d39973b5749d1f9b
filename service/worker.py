"""The reconciler: per source, on its interval, under a lease: pull → keep raw → merge → record."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn
from litestar import Litestar
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, logs, metrics, retention, rules, store
from service.config import Settings
from service.errors import DatabaseUnavailable
from service.pages import LEASE_TTL_S, Pages, Stopping, utc_now
from service.pages import RunResult as RunResult
from service.providers import Report, http, registry
from service.providers.registry import Source

log = logging.getLogger(__name__)
UPKEEP_INTERVAL_S = 3600.0
# dlr_open_gaps: registrations sent in this window still without a final status. Past the
# grace a final report is overdue (GET /v1/gaps has the same default); the lookback bounds
# what each pass counts (ix_outbound_sent_at) to a few days of registrations.
GAP_GRACE = timedelta(hours=48)
GAP_LOOKBACK = timedelta(days=7)


def holder_id() -> str:
    """Names this process in lease rows."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def pullable(sources: Mapping[str, Source]) -> list[Source]:
    """Sources with pull credentials."""
    return [s for s in sources.values() if s.pullable]


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
               spool_dir: Path | None = None,
               clock: Callable[[], datetime] = utc_now) -> RunResult | None:
    """One reconcile pass over one source; None when another process holds its lease.

    With `stop`, the pass ends after the page in hand once it is set: that page is kept
    and merged, and no new one is requested. With `spool_dir`, a one-time page is held on
    disk until the inbox has it, and pages an earlier pass left there are taken first.
    `clock` is the time the pass reads its windows and look-ups by.
    """
    stop = stop or asyncio.Event()
    async with db.statement(engine) as conn:
        if not await store.acquire_lease(conn, source.name, holder, LEASE_TTL_S):
            # another process pulls it: a standby still reports the pull lag it sees
            if (finished := await store.last_success(conn, source.name)) is not None:
                metrics.LAST_SUCCESS.labels(source.name).set(finished.timestamp())
            return None
        run_id = await store.start_run(conn, source.name)
    page = Pages(engine, client, source, holder, _stoppable(retry, stop), stop, spool_dir, run_id,
                 clock)
    try:
        await page.take_held()
        await registry.provider(source).pull(page, source)
    except Stopping as exc:  # asked to stop: the next pass resumes; not an error
        page.result.detail = (page.result.detail or {}) | {"stopped": str(exc)}
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
            counts = msgspec.structs.asdict(result)
            del counts["source"]
            await store.finish_run(conn, run_id, **counts)
            await store.release_lease(conn, source.name, holder)
    result = page.result
    await _show_open_gaps(engine, source.name)
    metrics.RUNS.labels(source.name, "error" if result.error else "ok").inc()
    if not result.error:
        metrics.LAST_SUCCESS.labels(source.name).set_to_current_time()
    metrics.PULLED_REPORTS.labels(source.name).inc(result.reports)
    metrics.PULLED_BYTES.labels(source.name, "fetched").inc(result.bytes_fetched)
    metrics.PULLED_BYTES.labels(source.name, "kept").inc(result.bytes_kept)
    if provider_counts := (result.detail or {}).get("counts"):
        metrics.show_count_missing(source.name, {day: c["missing"]
                                                 for day, c in provider_counts.items()})
    stopped = (result.detail or {}).get("stopped")
    log.log(logging.WARNING if result.error else logging.INFO,
            "pull %s: %d pages (%d seen before), %d records, %d reports, %d changed, "
            "%d rejected; %d bytes fetched, %d kept%s", source.name, result.pages,
            result.resighted, result.records_fetched, result.reports, result.changed,
            result.rejected, result.bytes_fetched, result.bytes_kept,
            f"; error: {result.error}" if result.error else f"; {stopped}" if stopped else "")
    return result


async def run_forever(engine: AsyncEngine, client: httpx.AsyncClient,
                      sources: Mapping[str, Source], stop: asyncio.Event,
                      retry: http.Retry = http.DEFAULT_RETRY, keep_months: int = 13,
                      spool_dir: Path | None = None) -> None:
    """Until `stop` is set: pull each pullable source on its own interval (with jitter),
    side by side, so a slow provider delays no other; keep the monthly partitions; close
    the messages of every source left at an intermediate status past its window.
    One-time pages wait under `spool_dir` until the inbox has them."""
    holder = holder_id()
    if not pullable(sources):
        log.info("reconciler has no source to pull")
    for source in pullable(sources):  # where from, so that two setups never share a fake
        log.info("pulling %s (%s) from %s every %g s", source.name,
                 registry.provider(source).kind, logs.Own(http.shown_origin(source.base_url)),
                 source.pull_interval_s)
    await _show_sources(engine, pullable(sources))
    await asyncio.gather(_keep_partitions_hourly(engine, keep_months, stop),
                         _close_every(engine, list(sources.values()), stop),
                         *[_pull_every(engine, client, source, holder, retry, stop, spool_dir)
                           for source in pullable(sources)])


async def close_intermediate(engine: AsyncEngine, source: Source,
                             now: datetime | None = None, page: int = 1000) -> int:
    """Make final the messages of `source` whose intermediate status (one its table says
    may be followed by nothing, such as Infobip's DELIVERED_TO_OPERATOR) has outlived its
    window: each gets an observation of the same state, final, written to its history
    through channel `closed`. A later report still merges over it as any report does.
    Returns how many were closed."""
    closing = registry.provider(source).closing(source)
    closed = 0
    while closing:
        async with db.transaction(engine) as conn:
            rows = await store.intermediate_due(conn, source.name, closing,
                                                now or datetime.now(UTC), page)
            reports = [_closed(source.name, row, closing[row.status_name.lower()])
                       for row in rows]
            written = await store.write(conn, [], [(r, CLOSED) for r in reports])
        metrics.MERGED_CHANGES.labels(CLOSED).inc(written.changed)
        metrics.count_finished(written.finished)
        closed += written.changed
        if len(rows) < page or not written.changed:
            break
    if closed:
        log.info("closed %d messages past their intermediate status's window", closed,
                 extra={"source": source.name})
    return closed


CLOSED = "closed"  # the history channel of an observation the reconciler made final
CLOSE_INTERVAL_S = 600.0


def _closed(source: str, row: Any, after_s: float) -> Report:
    return rules.observation(
        source=source, message_id=row.message_id, status=row.status, status_id=row.status_id,
        status_name=row.status_name, done_at=row.done_at, error_group_id=row.error_group_id,
        error_group_name=row.error_group_name, error_id=row.error_id, error_name=row.error_name,
        error_permanent=row.error_permanent, status_action=row.status_action,
        error_description=row.error_description,
        status_description=f"no further report within {after_s / 3600:g} h of sending: "
                           "made final by the reconciler")


async def _close_every(engine: AsyncEngine, sources: list[Source], stop: asyncio.Event) -> None:
    while True:
        for source in sources:
            try:
                await close_intermediate(engine, source)
            except DatabaseUnavailable:
                log.warning("closing intermediate statuses skipped: database unavailable")
            except Exception:
                log.exception("closing intermediate statuses failed",
                              extra={"source": source.name})
        if await _stopped_within(stop, CLOSE_INTERVAL_S):
            return


async def _show_open_gaps(engine: AsyncEngine, source: str) -> None:
    """Set dlr_open_gaps for `source`; left as it was if the database cannot say now."""
    now = datetime.now(UTC)
    try:
        async with db.statement(engine) as conn:
            count = await store.count_gaps(conn, source, sent_before=now - GAP_GRACE,
                                           sent_after=now - GAP_LOOKBACK)
    except DatabaseUnavailable:
        return
    metrics.OPEN_GAPS.labels(source).set(count)


async def _show_sources(engine: AsyncEngine, sources: list[Source]) -> None:
    """Each pulled source's interval, and when its last good pass finished as the database
    remembers it (by whichever process), so that the pull lag is known from the start and
    survives a restart."""
    for source in sources:
        metrics.PULL_INTERVAL.labels(source.name).set(source.pull_interval_s)
    try:
        async with db.statement(engine) as conn:
            finished = {s.name: await store.last_success(conn, s.name) for s in sources}
    except DatabaseUnavailable:
        log.warning("last successful passes unknown: database unavailable")
        return
    for name, at in finished.items():
        # never: 0, so that the lag of a source never pulled successfully is plain to see
        metrics.LAST_SUCCESS.labels(name).set(at.timestamp() if at is not None else 0)


def ops_app(settings: Settings, engine: AsyncEngine) -> Litestar:
    """`worker`'s own HTTP: /health/live, /health/ready (the database reachable, migrated
    and taking writes) and /metrics, as `serve` answers them."""
    from service.api import ops
    from service.app import problem_details

    return Litestar(route_handlers=[ops.live, ops.ready, ops.metrics],
                    state=State({"settings": settings, "engine": engine,
                                 "head_revision": db.head_revision()}),
                    plugins=[problem_details()],
                    openapi_config=None, logging_config=None, debug=False)


class OpsServer(uvicorn.Server):
    """uvicorn serving `ops_app` inside the worker's event loop. The worker's own signal
    handlers decide when to stop (it sets `should_exit`): uvicorn's would take SIGTERM from
    the reconciler and raise it again once stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    """Start-up made this month's partitions; later months' come from here, and replay keys
    whose window has ended go from here. A failure is logged and the upkeep tried again an
    interval later: until then DEFAULT takes the rows."""
    while not await _stopped_within(stop, UPKEEP_INTERVAL_S):
        try:
            async with db.transaction(engine) as conn:
                made = await retention.ensure_partitions(conn, datetime.now(UTC), keep_months)
                await store.forget_replays(conn)
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
