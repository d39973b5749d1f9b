"""Which part of a provider's time-filtered listing a pull pass reads, so that no pass reads
again what an earlier pass read unless it may have changed since.

A listing filtered by a time that never changes (when the provider received, sent or
created a message) is read in windows. Each pass reads from where the last one stopped (its
high-water mark, a pull cursor) up to `settle_s` ago: a record is read once it has had
`settle_s` to be listed at all and to reach its final status, and the next pass starts at the
mark, so a record is read once. Every `full_interval_s`, on the first pass, and after an
outage longer than the lookback, the pass reads the whole lookback instead, up to now, for the
records whose status changed later than `settle_s` after they were sent; the mark then goes
back to `settle_s` ago, so the newest of those are read again once settled. A whole re-read
too long for one pass goes on from where it stopped in the next passes.

Records read in a day, for N records sent a day (lookback_s L): about N from the passes, and
N * L / 86400 from each whole re-read, so about 2N a day with full_interval_s = L = 1 day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from service import db, store

if TYPE_CHECKING:
    from service.pages import Pages


@dataclass(frozen=True)
class Window:
    """Records whose time is in [since, until); `whole`: the whole lookback, up to now."""

    since: datetime
    until: datetime
    whole: bool


class Sweep:
    """The windows of one listing of one source, its high-water mark kept as the pull cursor
    `<name>.until` and its last whole re-read as `<name>.whole_at`."""

    def __init__(self, pages: Pages, name: str, lookback_s: float, settle_s: float,
                 full_interval_s: float) -> None:
        self.pages, self.name = pages, name
        self.now = _second(pages.now())  # providers filter to the second
        self.lookback = timedelta(seconds=lookback_s)
        self.settle = timedelta(seconds=settle_s)
        self.full_interval = timedelta(seconds=full_interval_s)

    @property
    def settled(self) -> datetime:
        """`settle_s` ago: records older than this have had their time to settle."""
        return _second(self.now - self.settle)

    async def window(self) -> Window:
        """What this pass reads (also shown in the run's `detail.windows`)."""
        source = self.pages.source.name
        async with db.transaction(self.pages.engine) as conn:
            mark = _time(await store.get_cursor(conn, source, f"{self.name}.until"))
            whole_at = _time(await store.get_cursor(conn, source, f"{self.name}.whole_at"))
        oldest = _second(self.now - self.lookback)
        if mark is None or whole_at is None or mark < oldest or \
                self.now - whole_at >= self.full_interval:
            window = Window(oldest, self.now, whole=True)
        else:
            window = Window(mark, max(mark, self.settled), whole=False)
        detail = self.pages.result.detail = self.pages.result.detail or {}
        detail.setdefault("windows", {})[self.name] = {
            "since": window.since.isoformat(), "until": window.until.isoformat(),
            "whole": window.whole}
        return window

    async def reached(self, window: Window, upto: datetime) -> None:
        """`window` is read up to `upto` (its end, once read entirely): the next pass starts
        there, or `settle_s` ago if that is earlier. A whole re-read is done once reached,
        even cut short: the next passes go on from where it stopped."""
        source = self.pages.source.name
        async with db.transaction(self.pages.engine) as conn:
            await store.set_cursor(conn, source, f"{self.name}.until",
                                   min(upto, self.settled).isoformat())
            if window.whole:
                await store.set_cursor(conn, source, f"{self.name}.whole_at",
                                       self.now.isoformat())


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)
