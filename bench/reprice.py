"""`reprice` over a million stored messages: a card applied to messages with no price yet,
a correction that moves part of them, and a run that finds nothing to change.

    .venv/bin/python -m bench.reprice [--messages 1000000]

Prints seconds and messages/s for each run. Target (issue 16): under a minute for 1M
messages on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import msgspec

from bench.common import bench_database
from service import db, ingest, pricing
from service.providers.dicesms import DiceSmsSource

SEED = """
INSERT INTO messages (source, message_id, status, final, obs_hash, "to", sent_at, operator,
                      text, sms_count, seq)
SELECT 'dice', 'm' || i, 'DELIVERED', true, '\\x00'::bytea,
       (ARRAY['+97798', '+97796', '+97797'])[i % 3 + 1] || lpad((i % 10000000)::text, 8, '0'),
       timestamptz '2026-11-01' + i * interval '2 seconds',
       (ARRAY['Ncell', 'Smart Telecom', 'Nepal Telecom'])[i % 3 + 1],
       CASE WHEN i % 2 = 0 THEN 'Your code is ' || i || '. Do not share it.' END,
       CASE WHEN i % 2 = 1 THEN 1 END, nextval('messages_seq')
FROM generate_series(1, $1) AS i
"""


def rates(*lines: dict[str, str]) -> list[pricing.Rate]:
    return [msgspec.convert({"currency": "NPR"} | line, pricing.Rate) for line in lines]


CARD = rates({"price": "0.80", "country": "NP"},
             {"price": "0.70", "country": "NP", "from": "2026-11-15"},
             {"price": "0.60", "prefix": "+97796"},
             {"price": "0.50", "operator": "Ncell"})
CORRECTED = [*CARD, *rates({"price": "0.45", "operator": "Ncell", "from": "2026-11-15"})]


async def run(url: str, count: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute(SEED, count)
        await conn.execute("VACUUM ANALYZE messages")
        print(f"seeded {count:,} messages in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()
    engine = db.create_engine(db.asyncpg_url(url), 60.0, pool_size=2)
    try:
        for label, card in (("first card (every message)", CARD),
                            ("corrected card (Ncell from 11-15)", CORRECTED),
                            ("same card again (nothing)", CORRECTED)):
            source = DiceSmsSource("dice", "http://127.0.0.1:9", rates=card)
            started = time.perf_counter()
            result = await ingest.reprice(engine, [source])
            seconds = time.perf_counter() - started
            print(f"{label:36} {seconds:6.1f} s  {result.examined / seconds:9,.0f} messages/s  "
                  f"examined {result.examined:,}, changed {result.changed:,}  "
                  f"(target < 60 s for 1M)")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    with bench_database() as url:
        asyncio.run(run(url, args.messages))


if __name__ == "__main__":
    main()
