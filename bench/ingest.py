"""Webhook ingestion throughput against the raw upsert limit, measured in one run.

    .venv/bin/python -m bench.ingest [--reports 50000] [--single 10000]

Prints:
- raw: asyncpg `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`, 1000-row batches,
  into the same `messages` table (the ceiling for any ingest path);
- batched: reports/s through HTTP with 100-report bodies (16 connections), and its ratio to raw;
- single: requests/s and p50/p99 latency for 1-report bodies at 32 connections, and the
  ratio of reports/s to raw.
Targets (DESIGN section 9): batched ≥ 0.5 of raw; single ≥ 1,500 req/s with p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

from bench.common import bench_database, load, percentile, raw_rate, report, running_service

HEADERS = {"X-Hook": "bench-hook"}


def bodies(count: int, per_body: int) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    return [json.dumps({"results": [report(f"{run}-{b}-{i}", b * per_body + i)
                                     for i in range(per_body)]}).encode()
            for b in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=50_000, help="reports in 100-report bodies")
    parser.add_argument("--single", type=int, default=10_000, help="1-report requests")
    parser.add_argument("--raw-rows", type=int, default=100_000)
    args = parser.parse_args()

    with bench_database() as url:
        raw = asyncio.run(raw_rate(url, args.raw_rows))
        print(f"raw unnest upsert        {raw:10,.0f} rows/s   (1000-row batches, asyncpg)")
        with running_service(url) as port:
            asyncio.run(load(port, bodies(50, 100), 8, HEADERS))  # warm up
            seconds, _, statuses = asyncio.run(load(port, bodies(args.reports // 100, 100), 16, HEADERS))
            rate = args.reports / seconds
            print(f"batched webhooks         {rate:10,.0f} reports/s  ratio {rate / raw:.2f}  "
                  f"(target >= 0.50)  statuses {statuses}")
            asyncio.run(load(port, bodies(500, 1), 32, HEADERS))  # warm up
            seconds, latencies, statuses = asyncio.run(load(port, bodies(args.single, 1), 32, HEADERS))
            rps = args.single / seconds
            print(f"single-report webhooks   {rps:10,.0f} requests/s ratio {rps / raw:.2f}  "
                  f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms  "
                  f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms  "
                  f"(target >= 1,500 req/s, p99 < 50 ms)  statuses {statuses}")


if __name__ == "__main__":
    main()
