"""What the fake providers share: a real HTTP server on 127.0.0.1, faults, a request log.

Used by the tests, and meant for demos and load tests. Each checks its provider's
credentials, can be told to fail first (`faults`: status codes, Retry-After, redirects),
records the requests it served, and counts the records (reports, messages, batches …) its
pull endpoints answered with, so that tests hold pulls to their cost.

Each provider kind's fake is in its package (`service.providers.<kind>.fake`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
        self.etags = False  # tag 200 answers, and answer 304 to a matching If-None-Match
        # records sent in answers: what a provider charging per record returned would bill
        self.records_returned = 0
        self._answering = 0  # records in the answer being built (answer() calls returning())
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

    def returning(self, count: int) -> None:
        """Called by answer(): the answer holds `count` records. They count once sent (not
        when the answer becomes a 304 Not Modified)."""
        self._answering += count

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                with fake.lock:
                    fault = fake.faults.popleft() if fake.faults else None
                counted = 0
                if fault is not None:
                    time.sleep(fault.delay_s)
                    status, body, headers = fault.status, fault.body, fault.headers
                else:
                    time.sleep(fake.delay_s)
                    url = urlsplit(self.path)
                    with fake.lock:
                        fake._answering = 0
                        status, body, headers = fake.answer(url.path, parse_qs(url.query),
                                                            self.headers)
                        counted = fake._answering
                if fake.etags and status == 200:
                    tag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
                    headers = headers | {"ETag": tag}
                    if self.headers.get("If-None-Match") == tag:
                        status, body = 304, b""
                if status != 304:
                    with fake.lock:
                        fake.records_returned += counted
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


def json_answer(status: int, value: object) -> Answer:
    return status, json.dumps(value).encode(), {}
