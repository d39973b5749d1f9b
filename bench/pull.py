"""Pull drain throughput and memory against the raw upsert limit, measured in one run.

    .venv/bin/python -m bench.pull [--reports 200000]

A fake Infobip on loopback holds the reports; `dlr-reconciler pull ib` drains them in
1000-report pages (each page kept raw, then decoded and merged). Prints the raw unnest
upsert rate, the drain rate and its ratio, and the pull process's RSS sampled through
the drain (it should stay flat: pages are processed one at a time).
Targets (DESIGN section 9): drain >= 0.5 of raw; peak RSS < 250 MB and flat.
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
from pathlib import Path

from bench.common import bench_database, raw_rate, report
from service.providers.infobip.fake import FakeInfobip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--raw-rows", type=int, default=100_000)
    args = parser.parse_args()

    with bench_database() as url, FakeInfobip() as fake:
        raw = asyncio.run(raw_rate(url, args.raw_rows))
        print(f"raw unnest upsert   {raw:10,.0f} rows/s   (1000-row batches, asyncpg)")
        run = uuid.uuid4().hex[:8]
        fake.queue(*[report(f"{run}-{i}", i) for i in range(args.reports)])
        config = Path(tempfile.mkdtemp()) / "bench.toml"
        config.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                          f'api_key = "{fake.api_key}"\n')
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config)}
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "service", "pull", "ib"], env=env,
                                   stdout=subprocess.PIPE, text=True)
        samples: list[tuple[int, float]] = []
        while process.poll() is None:
            samples.append((args.reports - len(fake.queued), rss_mb(process.pid)))
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        output = process.communicate()[0].strip()
        rate = args.reports / seconds
        print(f"pull drain          {rate:10,.0f} reports/s ratio {rate / raw:.2f}  (target >= 0.50)"
              f"  [{output}]")
        shown = [samples[int(len(samples) * f)] for f in (0.1, 0.25, 0.5, 0.75, 0.99)] if samples else []
        print("pull RSS            " + "  ".join(f"{done:,} done: {mb:.0f} MB" for done, mb in shown)
              + f"  peak {max(mb for _, mb in samples):.0f} MB  (target < 250 MB, flat)")


if __name__ == "__main__":
    main()
