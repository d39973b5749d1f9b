"""Soak: a steady webhook load with 1% malformed bodies; latency and memory over time.

    .venv/bin/python -m bench.soak [--seconds 600] [--rate 800]

Runs `serve` (2 workers) on a scratch database and sends single-report bodies at a fixed
rate (default about half of the single-report capacity bench.ingest measures here) over
32 connections. Prints, per minute: requests, p50/p99, the service's RSS, statuses; and its
RSS at the start and the end. Expected: only 200 and 400 (the malformed ones), p99 stable,
RSS at the end within 10% of the start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

from bench.common import (
    bench_database,
    percentile,
    read_response,
    report,
    running_service,
    webhook_request,
)


def service_rss_mb() -> float:
    """Resident memory of the `serve` process and its worker processes."""
    parents: dict[int, int] = {}
    rss: dict[int, float] = {}
    serve = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines()
                          if ":" in line)
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields["PPid"])
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        if b"service\x00serve" in cmdline:
            serve.add(pid)
    return sum(mb for pid, mb in rss.items() if pid in serve or parents.get(pid) in serve)


async def soak(port: int, seconds: float, rate: float,
               rss: list[float]) -> list[tuple[int, float, int]]:
    """(minute, latency, status) for every request; the service's RSS each minute into `rss`."""
    run = uuid.uuid4().hex[:8]
    samples: list[tuple[int, float, int]] = []
    started = time.perf_counter()
    connections = 32
    interval = connections / rate

    async def connection(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = 0
        try:
            while (now := time.perf_counter()) - started < seconds:
                sent += 1
                if sent % 100 == n % 100:  # 1% malformed
                    payload = b'{"results": [{"messageId": 42'
                else:
                    payload = json.dumps({"results": [report(f"{run}-{n}-{sent}", sent)]}).encode()
                t0 = time.perf_counter()
                writer.write(webhook_request(payload))
                status = await read_response(reader)
                samples.append((int((t0 - started) // 60), time.perf_counter() - t0, status))
                await asyncio.sleep(max(0.0, now + interval - time.perf_counter()))
        finally:
            writer.close()

    async def memory() -> None:
        while time.perf_counter() - started < seconds:
            rss.append(service_rss_mb())
            await asyncio.sleep(60)

    await asyncio.gather(memory(), *[connection(n) for n in range(connections)])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=800)
    args = parser.parse_args()
    with bench_database() as url, running_service(url) as port:
        time.sleep(2)
        start_rss = service_rss_mb()
        rss: list[float] = []
        samples = asyncio.run(soak(port, args.seconds, args.rate, rss))
        end_rss = service_rss_mb()
    for minute in sorted({m for m, _, _ in samples}):
        in_minute = [(lat, st) for m, lat, st in samples if m == minute]
        statuses: dict[int, int] = {}
        for _, status in in_minute:
            statuses[status] = statuses.get(status, 0) + 1
        latencies = [lat for lat, _ in in_minute]
        print(f"minute {minute:2}  {len(in_minute):6} requests  p50 "
              f"{percentile(latencies, 0.5) * 1000:5.1f} ms  p99 "
              f"{percentile(latencies, 0.99) * 1000:5.1f} ms  RSS at its start "
              f"{rss[minute] if minute < len(rss) else float('nan'):4.0f} MB  statuses {statuses}")
    print(f"service RSS: start {start_rss:.0f} MB, end {end_rss:.0f} MB "
          f"({(end_rss / start_rss - 1) * 100:+.1f}%, target within 10%)")


if __name__ == "__main__":
    main()
