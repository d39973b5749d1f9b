"""Fake providers: real HTTP servers on 127.0.0.1 with the providers' pull semantics.

Used by the tests, and meant for demos and load tests. Each checks its provider's
credentials, can be told to fail first (`faults`: status codes, Retry-After, redirects),
and records the requests it served.

- FakeInfobip hands out each queued report once from GET /sms/1/reports, and answers
  GET /sms/1/logs?messageId= from `logs` without consuming.
- FakeDiceSms serves its messages from /api/batch-ids, /api/sms-report/{batch_id}/ and
  the paginated /api/sms-report/ with absolute `next` links.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Answer = tuple[int, bytes, dict[str, str]]


class Fault:
    """One scripted answer that replaces the next real one."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"",
                 delay_s: float = 0.0) -> None:
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.delay_s = delay_s  # answer this late (a slow or stuck provider)


class FakeServer:
    """HTTP plumbing shared by the fakes: a threaded server, faults, a request log."""

    def __init__(self, port: int = 0) -> None:
        self.faults: deque[Fault] = deque()
        self.requests: list[str] = []
        self.delay_s = 0.0  # every answer this late
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                with fake.lock:
                    fault = fake.faults.popleft() if fake.faults else None
                if fault is not None:
                    time.sleep(fault.delay_s)
                    status, body, headers = fault.status, fault.body, fault.headers
                else:
                    time.sleep(fake.delay_s)
                    url = urlsplit(self.path)
                    with fake.lock:
                        status, body, headers = fake.answer(url.path, parse_qs(url.query),
                                                            self.headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _json(status: int, value: object) -> Answer:
    return status, json.dumps(value).encode(), {}


class FakeInfobip(FakeServer):
    def __init__(self, api_key: str = "fake-key", port: int = 0) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.queued: deque[dict[str, Any]] = deque()
        self.logs: dict[str, dict[str, Any]] = {}  # messageId -> latest state, not consumed

    def queue(self, *reports: dict[str, Any]) -> None:
        with self.lock:
            self.queued.extend(reports)

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if headers.get("Authorization") != f"App {self.api_key}":
            return _json(401, {"requestError": {"serviceException": {"messageId": "UNAUTHORIZED"}}})
        if path == "/sms/1/logs":
            wanted = query.get("messageId", [""])[0]
            return _json(200, {"results": [self.logs[wanted]] if wanted in self.logs else []})
        if path != "/sms/1/reports":
            return _json(404, {})
        limit = min(int(query.get("limit", ["50"])[0]), 1000)
        taken = [self.queued.popleft() for _ in range(min(limit, len(self.queued)))]
        return _json(200, {"results": taken})


class DiceMessage:
    """One message as DiceSMS keeps it."""

    def __init__(self, phone: int, sent_at: str, batch_id: str, status: str = "SENT",
                 delivered_at: str | None = None, text: str = "hello") -> None:
        self.phone, self.sent_at, self.batch_id = phone, sent_at, batch_id
        self.status, self.delivered_at, self.text = status, delivered_at, text

    def report(self) -> dict[str, Any]:
        return {"message": self.text, "recipients": [{"client_name": None,
                                                     "client_phone": self.phone}],
                "sent_at": self.sent_at, "delivered_at": self.delivered_at,
                "status": self.status}


class FakeDiceSms(FakeServer):
    def __init__(self, token: str = "fake-token", page_size: int = 5,
                 next_base: str | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.token = token
        self.page_size = page_size
        self.next_base = next_base  # where `next` links point; our own URL by default
        self.messages: list[DiceMessage] = []
        self.snapshot: dict[str, int] | None = None  # None: answer 403, as for non-staff

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if headers.get("Authorization") != f"Token {self.token}":
            return _json(401, {"detail": "Invalid token."})
        if path == "/api/batch-ids":
            rows = [{"sent_at": m.sent_at, "delivered_at": m.delivered_at, "status": m.status,
                     "batch_id": m.batch_id} for m in self.messages]
            return _json(200, rows) if rows else _json(404, {"error": "No batch ID found."})
        if path == "/api/sms-report/":
            return self._page(int(query.get("page", ["1"])[0]))
        if path.startswith("/api/sms-report/"):
            batch_id = unquote(path.removeprefix("/api/sms-report/").rstrip("/"))
            items = [m.report() for m in self.messages if m.batch_id == batch_id]
            return _json(200, items) if items else _json(404, {"error": "SMS message not found."})
        if path == "/api/metrics/snapshot/":
            if self.snapshot is None:
                return _json(403, {"detail": "You do not have permission to perform this action."})
            return _json(200, self.snapshot)
        return _json(404, {"detail": "Not found."})

    def _page(self, page: int) -> Answer:
        newest_first = sorted(self.messages, key=lambda m: datetime.fromisoformat(m.sent_at),
                              reverse=True)
        start = (page - 1) * self.page_size
        items = [m.report() for m in newest_first[start:start + self.page_size]]
        more = start + self.page_size < len(newest_first)
        base = self.next_base or self.url
        return _json(200, {"count": len(newest_first),
                           "next": f"{base}/api/sms-report/?page={page + 1}" if more else None,
                           "previous": None, "results": items})
