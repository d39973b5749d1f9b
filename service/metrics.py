"""Prometheus metrics, served by GET /metrics.

Under `serve --workers N` the processes share one port, so a scrape reaches any one of
them: `serve` then points PROMETHEUS_MULTIPROC_DIR at a fresh directory before starting
them, each process writes its values there, and /metrics adds them all up. Gauges say how
(`multiprocess_mode`); a gauge needs a value it was `set()` to, not a callback.
"""

from __future__ import annotations

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

RUNS = Counter("dlr_reconciler_runs_total", "Reconciler passes, by source and outcome",
               ["source", "outcome"])
PULLED_REPORTS = Counter("dlr_pulled_reports_total", "Reports read by reconciler passes",
                         ["source"])
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
WEBHOOK_REQUESTS = Counter("dlr_webhook_requests_total", "Webhook requests by source and status",
                           ["source", "status"])


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
