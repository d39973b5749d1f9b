"""Single-report webhooks through PgBouncer in transaction mode against the same directly.

    .venv/bin/python -m bench.pgbouncer [--single 10000]

Prints requests/s and p50/p99 at 32 connections for `serve` (2 workers) on a direct
database URL, then on the same database through Debian's PgBouncer (transaction pooling,
`?pgbouncer=true`), and the ratio. Target (issue: production): >= 0.70, no 5xx.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.common import bench_database, load, percentile, running_service
from bench.ingest import HEADERS, bodies
from tests.pgbouncer import pgbouncer


def single(url: str, requests: int) -> tuple[float, str]:
    with running_service(url) as port:
        asyncio.run(load(port, bodies(500, 1), 32, HEADERS))  # warm up
        seconds, latencies, statuses = asyncio.run(load(port, bodies(requests, 1), 32, HEADERS))
    rps = requests / seconds
    return rps, (f"{rps:8,.0f} requests/s  p50 {percentile(latencies, 0.5) * 1000:.1f} ms  "
                 f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms  statuses {statuses}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=10_000, help="1-report requests")
    args = parser.parse_args()
    with bench_database() as url:
        direct, line = single(url, args.single)
        print(f"direct             {line}")
        with pgbouncer(url, pool_size=20) as bounced_url:
            bounced, line = single(bounced_url, args.single)
        print(f"through PgBouncer  {line}")
        print(f"ratio {bounced / direct:.2f} (target >= 0.70)")


if __name__ == "__main__":
    main()
