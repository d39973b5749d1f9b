"""Prometheus metrics, served by GET /metrics.

Every label value comes from configuration (source names), from the application's routes,
or from a closed set, so that no request and no provider answer can add series: the
helpers below bound the two labels whose values providers choose (status, day).

Under `serve --workers N` the processes share one port, so a scrape reaches any one of
them: `serve` then points PROMETHEUS_MULTIPROC_DIR at a fresh directory before starting
them, each process writes its values there, and /metrics adds them all up. Gauges say how
(`multiprocess_mode`); a gauge needs a value it was `set()` to, not a callback.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from service.store import Finished

RUNS = Counter("dlr_reconciler_runs_total", "Reconciler passes, by source and outcome",
               ["source", "outcome"])
PULLED_REPORTS = Counter("dlr_pulled_reports_total", "Reports read by reconciler passes",
                         ["source"])
PULLED_BYTES = Counter("dlr_pulled_bytes_total", "Bytes of pulled bodies: fetched, and kept "
                       "(a body fetched again unchanged is not kept again)", ["source", "what"])
log = logging.getLogger(__name__)
UNMAPPED_STATUSES = Counter("dlr_unmapped_statuses_total",
                            "Provider statuses with no mapping, treated as PENDING",
                            ["source", "status"])
COUNT_MISSING = Gauge("dlr_provider_count_missing",
                      "Messages the provider counted for a day that we do not have",
                      ["source", "day"], multiprocess_mode="mostrecent")

HTTP_SECONDS = Histogram("dlr_http_request_seconds", "HTTP request latency",
                         ["method", "route", "status"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
WEBHOOK_REPORTS = Counter("dlr_webhook_reports_total", "Reports in webhook bodies, by outcome",
                          ["source", "outcome"])
MERGED_CHANGES = Counter("dlr_merge_changes_total", "Merged rows a write changed", ["channel"])
LAST_SUCCESS = Gauge("dlr_reconciler_last_success_timestamp_seconds",
                     "When a source's last pass without error finished (lag: now minus this)",
                     ["source"], multiprocess_mode="max")
DB_POOL_IN_USE = Gauge("dlr_db_pool_connections_in_use", "Database connections checked out",
                       multiprocess_mode="livesum")
UNKNOWN_FIELDS = Counter("dlr_unknown_fields_total",
                         "Fields in providers' reports that no decoder reads, by dotted name",
                         ["source", "field"])
WEBHOOK_REQUESTS = Counter("dlr_webhook_requests_total", "Webhook requests by source and status",
                           ["source", "status"])

# Business outcomes: each message counted once, by the write that made it final (a later,
# duplicated, replayed or concurrent report of a final message is not counted again).
FINISHED = Counter("dlr_messages_final_total",
                   "Messages that became final, by source and final status group",
                   ["source", "status"])
FINISHED_SECONDS = Histogram(
    "dlr_message_final_seconds",
    "Seconds from sent_at to done_at of each message that became final (when it has both)",
    ["source", "status"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 172800))
OPEN_GAPS = Gauge("dlr_open_gaps",
                  "Registered messages sent 48 hours to 7 days ago still without a final "
                  "status, counted by each reconciler pass of the source",
                  ["source"], multiprocess_mode="mostrecent")
DB_UNAVAILABLE = Counter("dlr_database_unavailable_total",
                         "Database operations that found the database unavailable (no "
                         "connection, a timeout, out of resources, shutting down)")
PULL_INTERVAL = Gauge("dlr_reconciler_pull_interval_seconds",
                      "A pulled source's configured pull_interval_s", ["source"],
                      multiprocess_mode="max")
# What the HTTP layer and the webhooks refuse before a sender is known good: `reason` is
# one of a closed set (service.http_limits.REASONS), `source` a configured source name.
CONNECTIONS_REFUSED = Counter("dlr_connections_refused_total",
                              "Connections and requests the HTTP layer answered itself "
                              "(capacity, client_share, first_byte_timeout, request_timeout, "
                              "headers_too_large, bad_request)", ["reason"])
UNVERIFIED_REFUSED = Counter("dlr_webhook_unverified_refused_total",
                             "Webhook bodies refused while their sender was not yet known "
                             "good: over the kind's size limit, or past the process's budget "
                             "for unverified bytes", ["source", "reason"])
UNVERIFIED_BYTES = Gauge("dlr_webhook_unverified_bytes",
                         "Bytes of webhook bodies held whose signature is not yet checked",
                         multiprocess_mode="livesum")
DROPPED_VALUES = Counter("dlr_dropped_values_total",
                         "Values a provider sent outside what it documents (a positive "
                         "Twilio price), dropped: the report was merged without them",
                         ["source", "field"])
REPLAYS = Counter("dlr_webhook_replays_total",
                  "Signed pushes recognised as replays of one already kept (answered 200, "
                  "not kept again)", ["source"])


LABEL_IDLE_S = 86400.0  # a label slot unseen this long goes to the next new name


class LabelSlots:
    """A few label values per source for names a provider chooses (its statuses, its
    fields), so that no body can add series: a name takes a free slot, else the slot of the
    name seen least recently if that was over LABEL_IDLE_S ago (its series is dropped),
    else it is counted as "other". Names sent once, or a flood of invented ones, so hold
    slots for a day at most, and a provider's real new name is named within a day of the
    noise stopping.

    Under `serve --workers N` a series cannot be dropped (prometheus multiprocess mode):
    there an evicted name's series stays, at most one more per slot per day.
    """

    def __init__(self, counter: Counter, per_source: int, label_chars: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counter, self.per_source, self.label_chars = counter, per_source, label_chars
        self.clock = clock
        self._seen: dict[str, collections.OrderedDict[str, float]] = {}  # oldest sight first

    def label(self, source: str, name: str) -> tuple[str, bool]:
        """The label to count `name` under, and whether it just took a slot."""
        label = name[:self.label_chars]
        now = self.clock()
        seen = self._seen.setdefault(source, collections.OrderedDict())
        if label in seen:
            seen[label] = now
            seen.move_to_end(label)
            return label, False
        if len(seen) >= self.per_source:
            oldest, last = next(iter(seen.items()))
            if now - last <= LABEL_IDLE_S:
                return "other", False
            del seen[oldest]
            if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
                with contextlib.suppress(KeyError):  # never counted
                    self.counter.remove(source, oldest)
        seen[label] = now
        return label, True


UNMAPPED_PER_SOURCE = 20  # distinct raw statuses labelled per source at once; others "other"
STATUS_LABEL_CHARS = 32
DAYS_SHOWN = 7  # the newest days of a provider's counters that keep a series
UNMAPPED_SLOTS = LabelSlots(UNMAPPED_STATUSES, UNMAPPED_PER_SOURCE, STATUS_LABEL_CHARS)
_days_shown: dict[str, set[str]] = {}


def count_unmapped(source: str, raw: str, count: int) -> None:
    """Count a provider status with no mapping, under a short label (UNMAPPED_SLOTS)."""
    label, _ = UNMAPPED_SLOTS.label(source, raw)
    UNMAPPED_STATUSES.labels(source, label).inc(count)


UNKNOWN_FIELDS_PER_SOURCE = 32  # distinct names labelled per source at once; others "other"
FIELD_LABEL_CHARS = 64
UNKNOWN_FIELD_SLOTS = LabelSlots(UNKNOWN_FIELDS, UNKNOWN_FIELDS_PER_SOURCE, FIELD_LABEL_CHARS)


def count_unknown_field(source: str, name: str) -> None:
    """Count a field no decoder reads, under its name while it holds a slot (a provider's
    new fields), else as "other" (a body full of invented ones): UNKNOWN_FIELD_SLOTS. A
    name is logged when it takes a slot."""
    label, new = UNKNOWN_FIELD_SLOTS.label(source, name)
    if new:
        log.warning("a report field is not read", extra={"source": source, "field": label})
    UNKNOWN_FIELDS.labels(source, label).inc()


def count_finished(finished: Iterable[Finished]) -> None:
    """Count messages that a committed write made final. Their status is a final group, a
    closed set; a time before its sending (a provider's clocks) counts as 0 seconds. On the
    write path: one increment per label pair, and each histogram child looked up once."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for message in finished:
        key = (message.source, message.status)
        counts[key] += 1
        if message.sent_at is not None and message.done_at is not None:
            seconds = (message.done_at - message.sent_at).total_seconds()
            child = _finished_seconds.get(key)
            if child is None:
                child = _finished_seconds[key] = FINISHED_SECONDS.labels(*key)
            child.observe(max(seconds, 0.0))
    for key, count in counts.items():
        FINISHED.labels(*key).inc(count)


_finished_seconds: dict[tuple[str, str], Histogram] = {}


def show_count_missing(source: str, missing: dict[str, int]) -> None:
    """Set the per-day gap for the newest days given (YYYYMMDD); drop the older days' series.

    Under `serve --workers N` a series cannot be dropped (prometheus multiprocess mode), so
    there the days of earlier passes stay: a few each day, not a few per pass.
    """
    newest = sorted(missing, reverse=True)[:DAYS_SHOWN]
    for day in newest:
        COUNT_MISSING.labels(source, day).set(missing[day])
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        for day in _days_shown.get(source, set()) - set(newest):
            COUNT_MISSING.remove(source, day)
    _days_shown[source] = set(newest)


def exposition() -> bytes:
    """Every metric, of all the processes serving this port."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return bytes(generate_latest(REGISTRY))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


def process_exiting() -> None:
    """Drop this process's live gauges (connections in use) from the shared values."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
