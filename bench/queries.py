"""Query latency at 1,000,000 messages, through HTTP, with the plans PostgreSQL chose.

    .venv/bin/python -m bench.queries [--messages 1000000] [--samples 200]

Seeds the messages with one INSERT … SELECT FROM generate_series (3 months, 2 sources,
20,000 bulks), then measures p50/p99 of: a get by id, a list page at the start and at
depth 10,000 (keyset cursor), a month's billing summary by day and currency, and a
1,000-row changes page. Targets (DESIGN section 9): get p99 < 10 ms, list page p99 < 25 ms
at any depth, month billing summary < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import httpx

from bench.common import bench_database, percentile, running_service
from service.schemas import encode_cursor

SEED = """
INSERT INTO messages (source, message_id, status, final, obs_hash, status_id, status_name,
                      done_at, "to", bulk_id, sent_at, sms_count, price_amount, price_currency,
                      operator, callback_data, seq)
SELECT CASE WHEN i % 3 = 0 THEN 'dice' ELSE 'ib' END,
       'msg-' || i,
       (ARRAY['DELIVERED','DELIVERED','DELIVERED','UNDELIVERABLE','PENDING'])[1 + i % 5],
       i % 5 <> 4,
       decode(md5(i::text), 'hex'),
       5, 'DELIVERED_TO_HANDSET',
       timestamptz '2026-08-01' + (i * interval '7.776 seconds') + interval '5 seconds',
       '+4179' || (3000000 + i % 6000000),
       'bulk-' || (i % 20000),
       timestamptz '2026-08-01' + (i * interval '7.776 seconds'),
       1 + i % 3,
       (ARRAY[0.01, 0.0125, 0.2])[1 + i % 3]::numeric,
       (ARRAY['EUR','USD'])[1 + i % 2],
       (ARRAY['Swisscom','Sunrise','Salt'])[1 + i % 3],
       'order-' || i,
       nextval('messages_seq')
FROM generate_series(1, $1) AS i
"""


async def seed(url: str, count: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute(SEED, count)
        await conn.execute("ANALYZE messages")
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
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    n = args.samples
    with bench_database() as url:
        seconds = asyncio.run(seed(url, args.messages))
        print(f"seeded {args.messages:,} messages in {seconds:.1f} s")
        with running_service(url, workers=1) as port, httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=60,
                headers={"Authorization": "Bearer bench"}) as client:
            timed(client, 20, "/v1/messages/ib/msg-1", {})  # warm up
            line("get by id", timed(client, n, "/v1/messages/ib/msg-500000", {}), "p99 < 10 ms")
            line("list page (100) at start", timed(client, n, "/v1/messages", {"limit": "100"}),
                 "p99 < 25 ms")
            deep = encode_cursor(("dice", "msg-" + str(10_000 * 3)))
            line("list page (100) at depth ~10,000",
                 timed(client, n, "/v1/messages", {"limit": "100", "cursor": deep}), "p99 < 25 ms")
            line("list page, filter by to", timed(client, n, "/v1/messages",
                                                   {"to": "+41793400000"}), "p99 < 25 ms")
            month = {"from": "2026-09-01T00:00:00Z", "to": "2026-10-01T00:00:00Z",
                     "group_by": "day,currency"}
            line("month billing summary", timed(client, max(5, n // 20), "/v1/billing/summary",
                                                month), "< 1 s")
            line("changes page (1,000)", timed(client, n // 4, "/v1/changes",
                                               {"after": "400000", "limit": "1000"}), "-")
        print("plans:")
        print("  list at depth:\n    " + asyncio.run(explain(
            url, "SELECT * FROM messages WHERE (source, message_id) > ($1, $2) "
                 "ORDER BY source, message_id LIMIT 101", "dice", "msg-30000")))
        print("  billing month:\n    " + asyncio.run(explain(
            url, "SELECT to_char(timezone('UTC', sent_at), 'YYYY-MM-DD'), price_currency, "
                 "count(*), sum(coalesce(sms_count, 1)), sum(price_amount * coalesce(sms_count, 1)) "
                 "FROM messages WHERE sent_at >= '2026-09-01' AND sent_at < '2026-10-01' "
                 "GROUP BY 1, 2")))


if __name__ == "__main__":
    main()
