"""Webhook ingestion throughput against the raw upsert limit, measured in one run.

    .venv/bin/python -m bench.ingest [--reports 50000] [--single 10000]

Prints:
- raw: asyncpg `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`, 1000-row batches,
  into the same `messages` table (the ceiling for any ingest path);
- batched: reports/s through HTTP with 100-report bodies (16 connections), and its ratio to raw;
- single: requests/s and p50/p99 latency for 1-report bodies at 32 connections, and the
  ratio of reports/s to raw;
- the same single-report figure for each other kind's push (a signed Twilio status
  callback, a signed Vonage receipt by GET, a Sinch recipient report), and its ratio to
  Infobip's single-report figure of the same run (target >= 1).
Targets (DESIGN section 9): batched ≥ 0.5 of raw; single ≥ 1,500 req/s with p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from urllib.parse import urlencode

from bench.common import (
    bench_database,
    load,
    load_requests,
    percentile,
    raw_rate,
    report,
    running_service,
)
from service.providers import twilio, vonage

HEADERS = {"X-Hook": "bench-hook"}


def bodies(count: int, per_body: int) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    return [json.dumps({"results": [report(f"{run}-{b}-{i}", b * per_body + i)
                                     for i in range(per_body)]}).encode()
            for b in range(count)]


def _post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\n{extra}Content-Length: {len(body)}"
            "\r\n\r\n").encode() + body


def provider_requests(kind: str, count: int) -> list[bytes]:
    """`count` single-report pushes of a kind, each for a message of its own."""
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(count):
        if kind == "twilio":
            params = {"MessageSid": f"SM{run}{i:024x}", "MessageStatus": "delivered",
                      "To": "+14155552671", "From": "+15017122661", "AccountSid": "AC" + "1" * 32,
                      "ApiVersion": "2010-04-01", "RawDlrDoneDate": "2611011003"}
            signature = twilio.sign("bench-auth-token", "https://bench/webhooks/tw", params)
            out.append(_post("/webhooks/tw", urlencode(params).encode(), {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature}))
        elif kind == "vonage":
            params = {"messageId": f"0B{run}{i:08X}", "msisdn": "447700900000", "to": "Acme",
                      "network-code": "23410", "price": "0.03330000", "status": "delivered",
                      "scts": "2611011003", "err-code": "0", "client-ref": f"{run}-{i}",
                      "message-timestamp": "2026-11-01 10:03:05",
                      "timestamp": str(int(time.time())), "nonce": f"{run}-{i}"}
            params["sig"] = vonage.sign("bench-signature-secret", "sha256", params)
            out.append(f"GET /webhooks/vg?{urlencode(params)} HTTP/1.1\r\nHost: bench\r\n"
                       "\r\n".encode())
        else:
            body = json.dumps({"type": "recipient_delivery_report_sms", "batch_id": run,
                               "recipient": f"4477009{i:05d}", "code": 0, "status": "Delivered",
                               "at": "2026-11-01T10:03:05.000Z", "client_reference": "bench",
                               "number_of_message_parts": 1}).encode()
            out.append(_post("/webhooks/sn", body, {"Content-Type": "application/json",
                                                     "X-Hook": "bench-hook"}))
    return out


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
            for kind in ("twilio", "vonage", "sinch"):
                asyncio.run(load_requests(port, provider_requests(kind, 500), 32))  # warm up
                seconds, latencies, statuses = asyncio.run(load_requests(
                    port, provider_requests(kind, args.single), 32))
                kind_rps = args.single / seconds
                print(f"single {kind:<7} pushes   {kind_rps:10,.0f} requests/s "
                      f"vs infobip {kind_rps / rps:.2f}  "
                      f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms  "
                      f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms  (target >= 1.00)  "
                      f"statuses {statuses}")


if __name__ == "__main__":
    main()
