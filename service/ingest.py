"""Raw body → inbox row + merged reports, in one transaction, shared by push and pull.

Concurrent callers are coalesced: whatever arrives while a transaction is being
written goes into the next one (group commit). Each caller still returns only after
the transaction holding its body has committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db, metrics, pricing, store
from service.errors import BadRequest, DatabaseUnavailable
from service.providers import MAX_REJECTIONS_LISTED, Rejection, Report, TooMany, registry
from service.providers.base import Decoder
from service.providers.registry import Source

log = logging.getLogger(__name__)


# The index a rejection gives for a report that decoded but could not be merged.
MERGE_FAILED = -1


class Envelope(msgspec.Struct, frozen=True):
    """One received body, already decoded in memory (decoding never touches the database)."""

    source: str
    channel: str
    body: bytes
    content_type: str | None
    reports: Sequence[Report] = ()
    rejections: Sequence[Rejection] = ()
    error: str | None = None  # the whole body was unusable
    error_status: int = 400  # the HTTP status that answers such a body
    url: str | None = None  # where a pulled body was fetched from
    replay: tuple[bytes, datetime] | None = None  # a signed push's replay key and its window
    replayed: bool = False  # its replay key was held when it was written: not kept again

    def inbox_row(self, failure: str | None = None) -> store.InboxRow:
        if failure is not None:
            state, reason = "failed", failure
        elif self.error is not None:
            state, reason = "rejected", self.error
        elif self.rejections:  # the first ones; the row's `rejected` counts them all
            state = "partial" if self.reports else "rejected"
            reason = msgspec.json.encode(self.rejections[:MAX_REJECTIONS_LISTED]).decode()
        else:
            state, reason = "accepted", None
        return store.InboxRow(self.source, self.channel, self.content_type, self.body, state,
                              len(self.reports), len(self.rejections), reason, self.url)

    def without(self, failed: Sequence[Report]) -> Envelope:
        """This envelope less the reports that could not be merged, now rejections."""
        if not failed:
            return self
        gone = {id(r) for r in failed}  # these very reports: one body may hold two of a message
        return msgspec.structs.replace(
            self, reports=[r for r in self.reports if id(r) not in gone],
            rejections=[*self.rejections, *(Rejection(
                MERGE_FAILED, "could not be merged (kept for replay after a fix)", r.message_id)
                for r in failed)])


def decode(source: Source, channel: str, body: bytes, content_type: str | None,
           decoder: Decoder, url: str | None = None) -> Envelope:
    """Decode in memory; whatever goes wrong, the envelope keeps the body and the reason.

    Every report of every kind is estimated here, in one place: what its provider did not
    say, parts and price, filled in from the text and the source's rate card."""
    name = source.name
    try:
        reports, rejections = decoder(body)
    except BadRequest as exc:
        return Envelope(name, channel, body, content_type, error=exc.message,
                        error_status=exc.status_code, url=url)
    except Exception:  # a decoder bug must not lose the body
        log.exception("decoder failed", extra={"source": name})
        return Envelope(name, channel, body, content_type, url=url,
                        error="the body could not be decoded (kept for replay after a fix)")
    card = pricing.card_of(source.rates) if source.rates else None
    return Envelope(name, channel, body, content_type, pricing.estimate_all(reports, card),
                    rejections, url=url)


def decoder_for(source: Source, url: str | None, content_type: str | None) -> Decoder:
    """How the source's kind reads a body of it: pushed (no url), or fetched from `url`."""
    return registry.provider(source).decoder(source, url, content_type)


async def merge_alone(conn: AsyncConnection, observed: Sequence[tuple[Report, str]],
                      ) -> tuple[store.Written, list[Report]]:
    """Merge each report in a savepoint of its own, so that one the merge fails on (a bug)
    is rejected alone; return what changed and the reports that failed. The database being
    unavailable still raises."""
    written, failed = store.Written(), []
    for report, channel in observed:
        try:
            async with conn.begin_nested():
                written += await store.write(conn, [], [(report, channel)])
        except Exception as exc:
            if db.is_unavailable(exc):
                raise
            log.exception("merge failed for one report", extra={"source": report.source})
            failed.append(report)
    return written, failed


async def merge_body(engine: AsyncEngine, inbox_id: int, source: Source, channel: str,
                     body: bytes, content_type: str | None, url: str | None,
                     decoder: Decoder | None = None) -> tuple[int, Envelope]:
    """Decode and merge a body already kept as inbox row `inbox_id` (a pulled page, or any
    body replayed), with `decoder` or else the one its source's kind reads it with; return
    rows changed and the envelope as recorded.

    A pulled page of more than MAX_REPORTS reports (a provider may send one: the full report
    of a Sinch batch sent to a group) is merged a part of at most MAX_REPORTS reports at a
    time, a transaction each, so that no part holds the event loop longer than a push may;
    a push that large is refused (413)."""
    decoder = decoder or decoder_for(source, url, content_type)
    parts: list[Callable[[], tuple[list[Report], list[Rejection]]]] = []

    def whole(raw: bytes) -> tuple[list[Report], list[Rejection]]:
        try:
            return decoder(raw)
        except TooMany as exc:
            if channel != "pull":
                raise
            parts.extend(exc.parts)
            return [], []

    envelope = decode(source, channel, body, content_type, whole, url)
    if not parts:
        return await merge_kept(engine, inbox_id, envelope)
    return await _merge_parts(engine, inbox_id, envelope, (
        decode(source, channel, body, content_type, _given(part), url) for part in parts))


def _given(part: Callable[[], tuple[list[Report], list[Rejection]]]) -> Decoder:
    """A decoder of one part already read from its body."""
    return lambda _: part()


async def _merge_parts(engine: AsyncEngine, inbox_id: int, first: Envelope,
                       pieces: Iterable[Envelope]) -> tuple[int, Envelope]:
    """Merge the parts of one kept body, each decoded when its turn comes and merged in a
    transaction of its own; then record the whole as `first` with every part's reports."""
    changed, reports, rejections = 0, list[Report](), list[Rejection]()
    for piece in pieces:
        observed = [(r, piece.channel) for r in piece.reports]
        try:
            async with db.transaction(engine) as conn:
                written = await store.write(conn, [], observed)
        except DatabaseUnavailable:
            raise
        except Exception:
            log.exception("merge failed; merging the reports one by one",
                          extra={"source": piece.source})
            async with db.transaction(engine) as conn:
                written, failed = await merge_alone(conn, observed)
            piece = piece.without(failed)
        metrics.count_finished(written.finished)
        changed += written.changed
        reports += piece.reports
        rejections += piece.rejections
    envelope = msgspec.structs.replace(first, reports=reports, rejections=rejections)
    async with db.transaction(engine) as conn:
        await store.mark_inbox(conn, inbox_id, envelope.inbox_row())
    return changed, envelope


async def merge_kept(engine: AsyncEngine, inbox_id: int, envelope: Envelope,
                     ) -> tuple[int, Envelope]:
    """Merge the reports of a body already kept as inbox row `inbox_id` and record what was
    found; return rows changed and the envelope as recorded (less any report that could
    not be merged, which becomes a rejection)."""
    observed = [(r, envelope.channel) for r in envelope.reports]
    try:
        async with db.transaction(engine) as conn:
            written = await store.write(conn, [], observed)
            await store.mark_inbox(conn, inbox_id, envelope.inbox_row())
        metrics.count_finished(written.finished)
        return written.changed, envelope
    except DatabaseUnavailable:
        raise
    except Exception:
        log.exception("merge failed; merging the reports one by one",
                      extra={"source": envelope.source})
    async with db.transaction(engine) as conn:
        written, failed = await merge_alone(conn, observed)
        envelope = envelope.without(failed)
        await store.mark_inbox(conn, inbox_id, envelope.inbox_row())
    metrics.count_finished(written.finished)
    return written.changed, envelope


class IngestFailed(Exception):
    """A bug stopped the merge; `kept`: the raw body was still stored (state 'failed') for
    replay."""

    def __init__(self, *, kept: bool) -> None:
        super().__init__("merge failed")
        self.kept = kept


class Ingestor:
    """Writes envelopes with group commit; `writers` transactions may run at once."""

    def __init__(self, engine: AsyncEngine, *, writers: int = 4, max_batch_reports: int = 5000,
                 timeout_s: float = 15.0) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[tuple[Envelope, asyncio.Future[Envelope]]] = asyncio.Queue()
        self._writers = writers
        self._max_batch_reports = max_batch_reports
        self._timeout_s = timeout_s
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"ingest-writer-{i}")
                       for i in range(self._writers)]

    async def stop(self) -> None:
        """Finish what is queued, then stop the writers."""
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ingest(self, envelope: Envelope) -> Envelope:
        """Store and merge one envelope; return it as committed (a report the merge failed
        on is a rejection) once its transaction has committed.

        Raises DatabaseUnavailable (nothing acknowledged) or IngestFailed.
        """
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((envelope, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            # the writer settles it later; nobody reads that outcome but this callback
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise DatabaseUnavailable("database did not answer in time") from None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0].reports)
            while size < self._max_batch_reports and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item[0].reports)
            try:
                await self._write_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[tuple[Envelope, asyncio.Future[Envelope]]]) -> None:
        replayed: list[int] = []
        try:
            await write(self._engine, [envelope for envelope, _ in batch], replayed)
        except DatabaseUnavailable as exc:
            for _, future in batch:
                _settle(future, exc=exc)
            return
        except Exception:
            if len(batch) == 1:
                await self._isolate(*batch[0])
            else:  # find the one that fails; the others still go through
                for item in batch:
                    await self._write_batch([item])
            return
        for index, (envelope, future) in enumerate(batch):
            _settle(future, msgspec.structs.replace(envelope, replayed=True)
                    if index in replayed else envelope)

    async def _isolate(self, envelope: Envelope, future: asyncio.Future[Envelope]) -> None:
        """The body alone failed to merge: keep it and merge its reports one by one, so
        the report at fault is rejected alone; if even that fails, keep the body raw."""
        log.exception("merge failed; merging the reports one by one",
                      extra={"source": envelope.source})
        try:
            async with db.transaction(self._engine) as conn:
                if envelope.replay is not None:  # claimed with the body, as write() claims it
                    await store.claim_replays(conn, [(envelope.source, *envelope.replay)])
                written, failed = await merge_alone(
                    conn, [(r, envelope.channel) for r in envelope.reports])
                envelope = envelope.without(failed)
                await store.write(conn, [envelope.inbox_row()], [])
            metrics.MERGED_CHANGES.labels(envelope.channel).inc(written.changed)
            metrics.count_finished(written.finished)
            _settle(future, envelope)
            return
        except DatabaseUnavailable as exc:
            _settle(future, exc=exc)
            return
        except Exception:
            log.exception("merging alone failed too; keeping the raw body",
                          extra={"source": envelope.source})
        try:
            async with db.statement(self._engine) as conn:
                await store.write(conn, [envelope.inbox_row(failure="merge failed")], [])
        except Exception as exc:
            failed_exc = exc if isinstance(exc, DatabaseUnavailable) else IngestFailed(kept=False)
            _settle(future, exc=failed_exc)
            return
        _settle(future, exc=IngestFailed(kept=True))


def _settle(future: asyncio.Future[Envelope], result: Envelope | None = None, *,
            exc: BaseException | None = None) -> None:
    if future.done():  # the caller gave up waiting
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


async def write(engine: AsyncEngine, envelopes: Sequence[Envelope],
                replayed: list[int] | None = None) -> int:
    """Every body into the inbox and every report merged, atomically; return rows changed.

    A signed push whose replay key is held (kept within its window, by a request that
    committed meanwhile, or earlier in `envelopes`) is not written: its index goes to
    `replayed`. Its key is claimed in the transaction that keeps it, so that of identical
    pushes arriving at once, on any replica, one is kept."""
    keys = [(e.source, *e.replay) for e in envelopes if e.replay is not None]
    async with db.transaction(engine) if keys else db.statement(engine) as conn:
        if keys:
            claimed = await store.claim_replays(conn, keys)
            kept = []
            for index, envelope in enumerate(envelopes):
                if envelope.replay is not None:
                    key = (envelope.source, envelope.replay[0])
                    if key not in claimed:
                        if replayed is not None:
                            replayed.append(index)
                        continue
                    claimed.discard(key)  # the same key again in this batch: a replay
                kept.append(envelope)
            envelopes = kept
        written = await store.write(conn, [e.inbox_row() for e in envelopes],
                                    [(r, e.channel) for e in envelopes for r in e.reports])
    # committed (one statement, or the pooler's transaction ended with the block)
    metrics.MERGED_CHANGES.labels(envelopes[0].channel if envelopes else "push").inc(
        written.changed)
    metrics.count_finished(written.finished)
    return written.changed


class ReplayResult(msgspec.Struct):
    bodies: int = 0
    reports: int = 0
    rejected: int = 0
    changed: int = 0
    skipped: int = 0
    failed: int = 0  # bodies that could not be merged at all (logged; the rest went on)


async def replay(engine: AsyncEngine, sources: Mapping[str, Source], *, only_unaccepted: bool,
                 since: datetime | None = None, until: datetime | None = None,
                 source: str | None = None, page: int = 200,
                 progress: Callable[[ReplayResult], None] | None = None) -> ReplayResult:
    """Decode and merge kept bodies again (after a decoder fix, say); safe to repeat.

    Bodies of sources no longer configured are skipped; a body that cannot be merged is
    logged and counted, and the replay goes on. The database being unavailable stops it.
    With `source`, only that source's bodies; `progress` is shown the counts after each body.
    """
    result = ReplayResult()
    after = 0
    while True:
        async with db.transaction(engine) as conn:
            rows = await store.inbox_page(conn, after, page, only_unaccepted=only_unaccepted,
                                          since=since, until=until, source=source)
        if not rows:
            return result
        after = rows[-1].id
        for row in rows:
            configured = sources.get(row.source)
            if configured is None:
                result.skipped += 1
                continue
            try:
                changed, envelope = await merge_body(engine, row.id, configured, row.channel,
                                                     row.body, row.content_type, row.url)
            except DatabaseUnavailable:
                raise
            except Exception:
                log.exception("replay: inbox body could not be merged",
                              extra={"source": row.source, "inbox_id": row.id})
                result.failed += 1
                continue
            result.changed += changed
            result.bodies += 1
            result.reports += len(envelope.reports)
            result.rejected += len(envelope.rejections) + (envelope.error is not None)
            if progress is not None:
                progress(result)


class RepriceResult(msgspec.Struct):
    examined: int = 0  # messages whose price or parts may be estimates
    changed: int = 0  # of which the estimate changed (each with a new seq)
    skipped: int = 0  # changed by a merge meanwhile: left as merged (the next run sees them)


async def reprice(engine: AsyncEngine, sources: Sequence[Source], *,
                  since: datetime | None = None, page: int = 10_000) -> RepriceResult:
    """Make the stored estimates again by each source's rate card as configured now (after
    a card is corrected, say) and recount parts from the text: only messages without a
    reported price or part count, sent at or after `since`. Idempotent: a row whose
    estimate stands is not written, so the change feed moves only for those that change.

    Each page is read in a transaction of its own and written in another, while the next
    page is read and estimated (two connections: the database writes as Python computes)."""
    result = RepriceResult()

    async def write(source: str, changed: Sequence[tuple[str, int, Sequence[Any]]]) -> None:
        async with db.transaction(engine) as conn:
            written = await store.set_estimates(conn, source, changed)
        result.changed += written
        result.skipped += len(changed) - written

    for source in sources:
        card = pricing.card_of(source.rates) if source.rates else None
        after: str | None = None
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                async with db.transaction(engine) as conn:
                    rows = await store.estimated_page(conn, source.name, since, after, page)
                if not rows:
                    break
                after = rows[-1].message_id
                result.examined += len(rows)
                changed = [(row.message_id, row.seq, new) for row in rows
                           if (new := pricing.reestimate(row, card)) is not None]
                if writing is not None:
                    await writing
                writing = asyncio.create_task(write(source.name, changed)) if changed else None
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
    return result
