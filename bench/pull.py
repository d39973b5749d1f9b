"""Pull drain throughput and memory against the raw upsert limit, and gap look-ups, in one run.

    .venv/bin/python -m bench.pull [--reports 200000] [--versions 3,1] [--open 10000]

A fake Infobip on loopback holds the reports; `dlr-reconciler pull ib` drains them in
1000-report pages from /sms/3/reports (v3) and /sms/1/reports (v1), each page kept raw,
then decoded and merged. Prints the raw unnest upsert rate, each drain's rate and its
ratio, and the pull process's RSS sampled through the drain (it should stay flat: pages
are processed one at a time). Then `--open` registered messages without a final status
are looked up: the /sms/3/logs requests that takes, and how long.
Targets (DESIGN section 9): drain >= 0.5 of raw (0.4 first); peak RSS < 250 MB and flat;
gap look-ups in a handful of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.common import bench_database, raw_rate, report
from service.providers import infobip
from service.providers.infobip.fake import FakeInfobip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_pull(url: str, fake: FakeInfobip, version: int,
             remaining: object) -> tuple[float, list[tuple[int, float]], str]:
    """`dlr-reconciler pull ib` against the fake: (seconds, RSS samples, its output)."""
    config = Path(tempfile.mkdtemp()) / "bench.toml"
    config.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                      f'api_key = "{fake.api_key}"\napi_version = {version}\n')
    env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "service", "pull", "ib"], env=env,
                               stdout=subprocess.PIPE, text=True)
    samples: list[tuple[int, float]] = []
    while process.poll() is None:
        samples.append((remaining(), rss_mb(process.pid)))  # type: ignore[operator]
        time.sleep(0.5)
    return time.perf_counter() - started, samples, process.communicate()[0].strip()


async def register_open(url: str, count: int, fake: FakeInfobip) -> None:
    """`count` registered messages sent an hour ago, each with a final log at the fake."""
    sent = datetime.now(UTC) - timedelta(hours=1)
    ids = [f"open-{uuid.uuid4()}" for _ in range(count)]
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany("INSERT INTO outbound (source, message_id, sent_at) VALUES "
                               "('ib', $1, $2)", [(i, sent) for i in ids])
    finally:
        await conn.close()
    for n, message_id in enumerate(ids):
        fake.logs[message_id] = report(message_id, n) | {"sentAt": infobip.infobip_time(sent)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--raw-rows", type=int, default=100_000)
    parser.add_argument("--versions", default="3,1")
    parser.add_argument("--open", type=int, default=10_000)
    args = parser.parse_args()

    with bench_database() as url, FakeInfobip() as fake:
        raw = asyncio.run(raw_rate(url, args.raw_rows))
        print(f"raw unnest upsert   {raw:10,.0f} rows/s   (1000-row batches, asyncpg)")
        for version in (int(v) for v in args.versions.split(",")):
            run = uuid.uuid4().hex[:8]
            fake.queue(*[report(f"{run}-{i}", i) for i in range(args.reports)])
            seconds, samples, output = run_pull(url, fake, version,
                                                lambda: args.reports - len(fake.queued))
            rate = args.reports / seconds
            print(f"v{version} pull drain       {rate:10,.0f} reports/s ratio {rate / raw:.2f}  "
                  f"(target >= 0.50)  [{output}]")
            shown = [samples[int(len(samples) * f)] for f in (0.1, 0.25, 0.5, 0.75, 0.99)] \
                if samples else []
            print(f"v{version} pull RSS         " + "  ".join(
                f"{done:,} done: {mb:.0f} MB" for done, mb in shown)
                + f"  peak {max(mb for _, mb in samples):.0f} MB  (target < 250 MB, flat)")
        if args.open:
            asyncio.run(register_open(url, args.open, fake))
            fake.requests.clear()
            seconds, _, output = run_pull(url, fake, 3, lambda: 0)
            look_ups = [r for r in fake.requests if r.startswith("/sms/3/logs")]
            print(f"v3 gap look-ups     {args.open:,} open messages: {len(look_ups)} /sms/3/logs "
                  f"requests, {seconds:.1f} s for the pass  [{output}]")


if __name__ == "__main__":
    main()
