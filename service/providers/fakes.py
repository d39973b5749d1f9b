"""Fake providers: real HTTP servers on 127.0.0.1 with the providers' pull semantics.

Used by the tests, and meant for demos and load tests: a fake Infobip hands out each
queued report once from GET /sms/1/reports, checks `Authorization: App <key>`, and can be
told to fail first (status codes, Retry-After, redirects) to exercise the reconciler.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Fault:
    """One scripted answer that replaces the next real one."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.status = status
        self.headers = headers or {}
        self.body = body


class FakeInfobip:
    def __init__(self, api_key: str = "fake-key") -> None:
        self.api_key = api_key
        self.queued: deque[dict[str, Any]] = deque()
        self.faults: deque[Fault] = deque()
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeInfobip:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def queue(self, *reports: dict[str, Any]) -> None:
        with self.lock:
            self.queued.extend(reports)

    def take(self, limit: int) -> list[dict[str, Any]]:
        with self.lock:
            return [self.queued.popleft() for _ in range(min(limit, len(self.queued)))]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                with fake.lock:
                    fault = fake.faults.popleft() if fake.faults else None
                if fault is not None:
                    return self._send(fault.status, fault.body, fault.headers)
                if self.headers.get("Authorization") != f"App {fake.api_key}":
                    return self._send(401, b'{"requestError": {"serviceException": '
                                           b'{"messageId": "UNAUTHORIZED"}}}')
                url = urlsplit(self.path)
                if url.path != "/sms/1/reports":
                    return self._send(404, b"{}")
                limit = int(parse_qs(url.query).get("limit", ["50"])[0])
                body = json.dumps({"results": fake.take(min(limit, 1000))}).encode()
                return self._send(200, body)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
