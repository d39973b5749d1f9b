"""Passes over an unchanging DiceSMS account: what the first pass fetches and keeps, and
what each later one does, in one run.

    .venv/bin/python -m bench.unchanged [--messages 200000] [--batches 10000] [--passes 3]
        [--batch-ids-every-pass]

A fake DiceSMS on loopback holds `--messages` final messages in `--batches` batches;
`dlr-reconciler pull dice` runs once, then `--passes` more times with nothing changed.
Prints bytes fetched, bytes kept and seconds per pass, and the peak RSS of each.
Targets (issue: pulls that learn nothing keep nothing): a later pass keeps under 1% of
the first pass's bytes and takes under a tenth of its time; peak RSS under 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from bench.common import bench_database
from bench.pull import rss_mb
from service.providers.dicesms.fake import DiceMessage, FakeDiceSms

NPT = timezone(timedelta(hours=5, minutes=45))


def account(messages: int, batches: int) -> list[DiceMessage]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for i in range(messages):
        sent = (start + timedelta(seconds=i, microseconds=i % 999_983 + 1)).astimezone(NPT)
        out.append(DiceMessage(9840000000 + i, sent.isoformat(), f"batch-{i % batches}", "1",
                               (sent + timedelta(seconds=5)).isoformat(), text=f"hello {i}"))
    return out


async def last_run(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT pages, resighted, bytes_fetched, bytes_kept, error "
                                  "FROM runs ORDER BY id DESC LIMIT 1")
    finally:
        await conn.close()
    assert row is not None and row["error"] is None, row
    return dict(row)


def one_pass(env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "service", "pull", "dice"], env=env,
                               stdout=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, rss_mb(process.pid))
        time.sleep(0.2)
    assert process.returncode == 0
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-ids-every-pass", action="store_true",
                        help="re-read the batch-id list each pass (batch_ids_interval_s 1 s)")
    args = parser.parse_args()

    with bench_database() as url, FakeDiceSms(page_size=100) as fake:
        fake.messages = account(args.messages, args.batches)
        config = Path(tempfile.mkdtemp()) / "bench.toml"
        config.write_text(f'[[sources]]\nname = "dice"\nkind = "dicesms"\nbase_url = "{fake.url}"\n'
                          f'token = "{fake.token}"\n'
                          + ("batch_ids_interval_s = 1\n" if args.batch_ids_every_pass else ""))
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config)}
        first_seconds = first_bytes = 0.0
        for n in range(1 + args.passes):
            seconds, peak = one_pass(env)
            run = asyncio.run(last_run(url))
            if n == 0:
                first_seconds, first_bytes = seconds, run["bytes_kept"]
            print(f"pass {n + 1}: {run['pages']:6,} pages ({run['resighted']:,} seen before), "
                  f"{run['bytes_fetched'] / 1e6:8.2f} MB fetched, {run['bytes_kept'] / 1e6:8.2f} MB "
                  f"kept, {seconds:7.2f} s, peak RSS {peak:.0f} MB"
                  + ("" if n == 0 else f"   kept/first {run['bytes_kept'] / first_bytes:.4%}"
                     f" (target < 1%), time/first {seconds / first_seconds:.3f} (target < 0.1)"))


if __name__ == "__main__":
    main()
