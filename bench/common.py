"""Shared by the benchmarks: a scratch database, the service as a subprocess, a tiny HTTP load client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.databases import scratch_database, server_or_embedded

SERVER_URL = os.environ.get("DLR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def bench_database() -> Iterator[str]:
    """A new migrated database on the local server (else an embedded one), dropped afterwards."""
    server = server_or_embedded(SERVER_URL, Path(tempfile.mkdtemp()))
    with scratch_database(server) as url:
        yield url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIG = """
[api]
tokens = [ { token = "bench", scopes = ["read", "write", "admin"] } ]
[[sources]]
name = "ib"
kind = "infobip"
base_url = "http://127.0.0.1:9"
[sources.webhook]
token = { header = "X-Hook", value = "bench-hook" }
"""


@contextmanager
def running_service(database_url: str, workers: int = 2) -> Iterator[int]:
    """`dlr-reconciler serve` on a free port, ready; stopped with SIGTERM afterwards."""
    port = free_port()
    config = Path(tempfile.mkdtemp()) / "bench.toml"
    config.write_text(CONFIG)
    env = os.environ | {"DLR_DATABASE_URL": database_url, "DLR_CONFIG": str(config),
                        "DLR_PORT": str(port), "DLR_WORKERS": str(workers)}
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def load(port: int, bodies: list[bytes], connections: int,
               headers: dict[str, str]) -> tuple[float, list[float], dict[int, int]]:
    """POST every body over `connections` keep-alive connections; (seconds, latencies, statuses)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                body = queue.get_nowait()
                head = (f"POST /webhooks/ib HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                        f"{extra}Content-Length: {len(body)}\r\n\r\n").encode()
                started = time.perf_counter()
                writer.write(head + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                status = int(status_line.split()[1])
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(connections)])
    return time.perf_counter() - started, latencies, statuses


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]
