"""Prometheus metrics of this process, served by GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
