"""Prometheus metrics of this process, served by GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter("dlr_reconciler_runs_total", "Reconciler passes, by source and outcome",
               ["source", "outcome"])
PULLED_REPORTS = Counter("dlr_pulled_reports_total", "Reports read by reconciler passes",
                         ["source"])
UNMAPPED_STATUSES = Counter("dlr_unmapped_statuses_total",
                            "Provider statuses with no mapping, treated as PENDING",
                            ["source", "status"])
COUNT_MISSING = Gauge("dlr_provider_count_missing",
                      "Messages the provider counted for a day that we do not have",
                      ["source", "day"])

HTTP_SECONDS = Histogram("dlr_http_request_seconds", "HTTP request latency",
                         ["method", "route", "status"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
WEBHOOK_REPORTS = Counter("dlr_webhook_reports_total", "Reports in webhook bodies, by outcome",
                          ["source", "outcome"])
MERGED_CHANGES = Counter("dlr_merge_changes_total", "Merged rows a write changed", ["channel"])
LAST_SUCCESS = Gauge("dlr_reconciler_last_success_timestamp_seconds",
                     "When a source's last pass without error finished (lag: now minus this)",
                     ["source"])
DB_POOL_IN_USE = Gauge("dlr_db_pool_connections_in_use", "Database connections checked out")
WEBHOOK_REQUESTS = Counter("dlr_webhook_requests_total", "Webhook requests by source and status",
                           ["source", "status"])
