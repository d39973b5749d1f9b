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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg

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
[[sources]]
name = "tw"
kind = "twilio"
base_url = "http://127.0.0.1:9"
[sources.webhook]
twilio_signature = { auth_tokens = ["bench-auth-token"], public_url = "https://bench/webhooks/tw" }
[[sources]]
name = "vg"
kind = "vonage"
base_url = "http://127.0.0.1:9"
[sources.webhook]
vonage_signature = { secret = "bench-signature-secret", method = "sha256" }
[[sources]]
name = "sn"
kind = "sinch"
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
    # Its log (a line a request) goes to a file, as in production, not to this terminal.
    log = config.with_name("serve.log")
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited; its log: {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def webhook_request(body: bytes, headers: str = "X-Hook: bench-hook\r\n") -> bytes:
    """A keep-alive POST of `body` to /webhooks/ib, as raw HTTP/1.1."""
    return (f"POST /webhooks/ib HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; return its status."""
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def load(port: int, bodies: list[bytes], connections: int,
               headers: dict[str, str]) -> tuple[float, list[float], dict[int, int]]:
    """POST every body over `connections` keep-alive connections; (seconds, latencies, statuses)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return await load_requests(port, [webhook_request(body, extra) for body in bodies],
                               connections)


async def load_requests(port: int, requests: list[bytes], connections: int,
                        ) -> tuple[float, list[float], dict[int, int]]:
    """Send every raw HTTP/1.1 request over `connections` keep-alive connections."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                started = time.perf_counter()
                writer.write(request)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(connections)])
    return time.perf_counter() - started, latencies, statuses


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


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
