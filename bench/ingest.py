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
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from bench.common import bench_database, load, percentile, running_service

HEADERS = {"X-Hook": "bench-hook"}


def report(message_id: str, n: int) -> dict[str, object]:
    return {
        "bulkId": "bulk-bench", "messageId": message_id, "to": f"4179{3000000 + n % 6000000}",
        "sentAt": "2026-11-01T10:00:00.000+0000", "doneAt": "2026-11-01T10:00:05.000+0000",
        "smsCount": 1, "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET",
                   "description": "Message delivered to handset"},
        "error": {"groupId": 0, "groupName": "Ok", "id": 0, "name": "NO_ERROR", "permanent": False},
        "callbackData": "order-42",
    }


def bodies(count: int, per_body: int) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    return [json.dumps({"results": [report(f"{run}-{b}-{i}", b * per_body + i)
                                     for i in range(per_body)]}).encode()
            for b in range(count)]


RAW_SQL = """
INSERT INTO messages (source, message_id, status, final, obs_hash, status_id, status_name,
                      done_at, "to", bulk_id, sent_at, sms_count, price_amount, price_currency,
                      callback_data, seq)
SELECT t.*, nextval('messages_seq') FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[],
    $5::bytea[], $6::int[], $7::text[], $8::timestamptz[], $9::text[], $10::text[],
    $11::timestamptz[], $12::int[], $13::numeric[], $14::text[], $15::text[])
    AS t(source, message_id, status, final, obs_hash, status_id, status_name, done_at, "to",
         bulk_id, sent_at, sms_count, price_amount, price_currency, callback_data)
ON CONFLICT (source, message_id) DO UPDATE SET status = excluded.status, done_at = excluded.done_at,
    seq = excluded.seq
"""


async def raw_rate(url: str, rows: int) -> float:
    from decimal import Decimal

    conn = await asyncpg.connect(url)
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    try:
        started = time.perf_counter()
        for batch in range(rows // 1000):
            ids = [f"raw-{run}-{batch}-{i}" for i in range(1000)]
            n = len(ids)
            await conn.execute(RAW_SQL, ["ib"] * n, ids, ["DELIVERED"] * n, [True] * n,
                               [b"0123456789abcdef"] * n, [5] * n, ["DELIVERED_TO_HANDSET"] * n,
                               [now] * n, ["+41793026727"] * n, ["bulk"] * n, [now] * n, [1] * n,
                               [Decimal("0.01")] * n, ["EUR"] * n, ["order-42"] * n)
        return rows // 1000 * 1000 / (time.perf_counter() - started)
    finally:
        await conn.close()


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
