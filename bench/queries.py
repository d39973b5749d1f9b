"""Query latency at 10,000,000 messages, through HTTP, with the plans PostgreSQL chose.

    .venv/bin/python -m bench.queries [--messages 10000000] [--samples 200]

Seeds the messages with INSERT … SELECT FROM generate_series, a million at a time (13
months, 3 sources, 2 currencies, 3 operators, 5 statuses, 100 bulks; the billing rollup
kept by the same statements), and 100,000 open registrations; then measures p50/p99 of:
a get by id, list pages at the start, at depth and filtered by number, a month's billing
summary for every grouping, a day's, a year's, a bulk summary of 100,000 messages, a
1,000-row changes page at depth, and a page of gaps.
Targets (DESIGN section 9 and the billing issue): get p99 < 10 ms, list page p99 < 25 ms
at any depth, month billing p99 < 1 s for any grouping, day billing p99 < 100 ms, year
billing < 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from datetime import timedelta

import asyncpg
import httpx

from bench.common import bench_database, percentile, running_service
from service.schemas import encode_cursor

SEED = """
INSERT INTO messages (source, message_id, status, final, obs_hash, status_id, status_name,
                      done_at, "to", bulk_id, sent_at, sms_count, price_amount, price_currency,
                      operator, callback_data, seq)
SELECT (ARRAY['ib','dice','ib2'])[1 + i % 3],
       'msg-' || i,
       (ARRAY['DELIVERED','DELIVERED','DELIVERED','UNDELIVERABLE','PENDING'])[1 + i % 5],
       i % 5 <> 4,
       decode(md5(i::text), 'hex'),
       5, 'DELIVERED_TO_HANDSET',
       timestamptz '2025-10-01' + (i * $3::interval) + interval '5 seconds',
       '+4179' || (3000000 + i % 6000000),
       'bulk-' || (i % 99),
       timestamptz '2025-10-01' + (i * $3::interval),
       1 + i % 3,
       (ARRAY[0.01, 0.0125, 0.2])[1 + i % 3]::numeric,
       (ARRAY['EUR','USD'])[1 + i % 2],
       (ARRAY['Swisscom','Sunrise','Salt'])[1 + i % 3],
       'order-' || i,
       nextval('messages_seq')
FROM generate_series($1::bigint, $2::bigint) AS i
"""
SPAN_S = 395 * 86400  # 13 months
REGISTER = """
INSERT INTO outbound (source, message_id, sent_at)
SELECT source, message_id, sent_at FROM messages WHERE NOT final ORDER BY sent_at LIMIT $1
"""


async def seed(url: str, count: int, registrations: int) -> float:
    conn = await asyncpg.connect(url)
    step = timedelta(seconds=SPAN_S / count)
    try:
        started = time.perf_counter()
        for first in range(1, count + 1, 1_000_000):
            await conn.execute(SEED, first, min(count, first + 999_999), step)
        await conn.execute(REGISTER, registrations)
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("VACUUM ANALYZE billing_rollup")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def explain(url: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("EXPLAIN " + sql, *args)
        return "\n    ".join(r[0] for r in rows[:6])
    finally:
        await conn.close()


def timed(client: httpx.Client, samples: int, path: str, params: dict[str, str]) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        response = client.get(path, params=params)
        out.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return out


def line(name: str, values: list[float], target: str) -> None:
    print(f"{name:34} p50 {percentile(values, 0.5) * 1000:7.1f} ms   "
          f"p99 {percentile(values, 0.99) * 1000:7.1f} ms   ({target})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--registrations", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    n = args.samples
    with bench_database() as url:
        seconds = asyncio.run(seed(url, args.messages, args.registrations))
        print(f"seeded {args.messages:,} messages in {seconds:.1f} s")
        with running_service(url, workers=1) as port, httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=60,
                headers={"Authorization": "Bearer bench"}) as client:
            timed(client, 20, "/v1/messages/ib/msg-3", {})  # warm up
            middle = f"/v1/messages/ib/msg-{args.messages // 6 * 3}"
            line("get by id", timed(client, n, middle, {}), "p99 < 10 ms")
            line("list page (100) at start", timed(client, n, "/v1/messages", {"limit": "100"}),
                 "p99 < 25 ms")
            deep = encode_cursor(("dice", "msg-" + str(10_000 * 3)))
            line("list page (100) at depth ~10,000",
                 timed(client, n, "/v1/messages", {"limit": "100", "cursor": deep}), "p99 < 25 ms")
            line("list page, filter by to", timed(client, n, "/v1/messages",
                                                   {"to": "+41793400000"}), "p99 < 25 ms")
            month = {"from": "2026-09-01T00:00:00Z", "to": "2026-10-01T00:00:00Z"}
            worst = [0.0]
            for size in range(5):
                for keys in itertools.combinations(("day", "source", "operator", "status"), size):
                    worst = max(worst, timed(client, 5, "/v1/billing/summary", month | {
                        "group_by": ",".join(keys) or "currency"}), key=max)
            line("month billing, slowest grouping", worst, "p99 < 1 s")
            line("month billing by day, +05:45", timed(client, 10, "/v1/billing/summary", month | {
                "group_by": "day,source", "tz": "Asia/Kathmandu"}), "p99 < 1 s")
            line("month billing, cut at 10:07", timed(client, 10, "/v1/billing/summary", {
                "from": "2026-09-01T10:07:00Z", "to": "2026-10-01T10:07:00Z",
                "group_by": "day,operator"}), "p99 < 1 s")
            line("day billing", timed(client, n // 4, "/v1/billing/summary", {
                "from": "2026-09-14T00:00:00Z", "to": "2026-09-15T00:00:00Z",
                "group_by": "source,operator,status"}), "p99 < 100 ms")
            line("year billing", timed(client, 3, "/v1/billing/summary", {
                "from": "2025-10-01T00:00:00Z", "to": "2026-10-01T00:00:00Z",
                "group_by": "day,source"}), "< 5 s")
            line("bulk summary (100,000 messages)", timed(client, 5, "/v1/bulks/ib/bulk-3", {}),
                 "-")
            line("changes page (1,000) at depth", timed(
                client, n // 4, "/v1/changes", {"after": str(args.messages * 9 // 10),
                                                "limit": "1000"}), "-")
            line("gaps page (100 of 100,000 open)", timed(
                client, n // 4, "/v1/gaps", {"older_than": "1m"}), "-")
        print("plans:")
        print("  list at depth:\n    " + asyncio.run(explain(
            url, "SELECT * FROM messages WHERE (source, message_id) > ($1, $2) "
                 "ORDER BY source, message_id LIMIT 101", "dice", "msg-30000")))
        print("  billing month (the rollup's part):\n    " + asyncio.run(explain(
            url, "SELECT to_char(timezone('UTC', bucket), 'YYYY-MM-DD'), currency, "
                 "sum(messages), sum(parts), sum(amount) FROM billing_rollup "
                 "WHERE bucket >= '2026-09-01' AND bucket < '2026-10-01' GROUP BY 1, 2")))


if __name__ == "__main__":
    main()
