"""uvicorn's HTTP/1.1 protocol with the three limits it lacks.

- A request must arrive whole (request line, headers and body) within `request_timeout_s`
  of its first byte, and a new connection must deliver its first request within that time:
  else 408 and the connection is closed. uvicorn's keep-alive timer restarts on every byte
  and is not armed before a first request, so without this a client sending nothing, or a
  byte at a time, holds its connection (and a half-read body) for ever.
- The request line and headers must fit in `max_header_bytes`: else 431.
- At most `max_connections` connections at once (so at most that many requests in flight,
  HTTP/1.1 answering one request of a connection at a time): past it, a new connection is
  answered 503 with Retry-After and closed, without its request being parsed. uvicorn's
  own `limit_concurrency` answers without Retry-After and logs a warning per refusal.

Each of these answers, and uvicorn's 400 for a request it cannot parse, is an RFC 9457
problem like every other error of the service, with an X-Request-ID.

The application's own time is not limited here: once a request has arrived, its handler's
database calls are bounded by DLR_DB_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import PROBLEM_JSON, problem
from service.logs import REFUSED_WITH, REQUEST_ID_KEY, request_id

RETRY_AFTER_S = 1  # past the connection cap: connections free up as fast as requests end


class _HeadersTooLarge(Exception):
    pass


class LimitedHttp(HttpToolsProtocol):
    def __init__(self, *args: Any, request_timeout_s: float, max_header_bytes: int,
                 max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout_s = request_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self._busy = False
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._headers_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._busy = len(self.connections) > self.max_connections
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._busy:
            self._refuse(503)
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parse error; a callback raising counts as one."""
        if self._headers_too_large:
            self._refuse(431)
        else:
            self._refuse(400, "not an HTTP/1.1 request this server can read")

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise _HeadersTooLarge  # the parser stops; uvicorn calls send_400_response

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # the application is reading this body: it logs and counts 408, not its own
            # answer to the disconnect (which never reaches the client)
            self.cycle.scope[REFUSED_WITH] = 408  # type: ignore[literal-required]
        self._refuse(408)

    def _refuse(self, status: int, detail: str | None = None) -> None:
        if self.transport.is_closing():
            return
        extensions: dict[str, Any] = {}
        if status == 408:
            detail = f"the request did not arrive whole within {self.request_timeout_s:g} s"
        elif status == 431:
            detail = f"the request line and headers exceed {self.max_header_bytes} bytes"
        elif status == 503:
            detail = f"the server holds its {self.max_connections} connections; retry later"
            extensions["retry_after"] = RETRY_AFTER_S
        body = msgspec.json.encode(problem(status, detail or "", **extensions))
        # The id of the request this answers, if it got as far as the application (a
        # keep-alive connection's cycle is its last request's until the next one's headers)
        current = None
        if self.cycle is not None and not self.cycle.response_complete:
            current = self.cycle.scope.get(REQUEST_ID_KEY)
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
            b"content-type: %s\r\n" % PROBLEM_JSON.encode(),
            b"x-request-id: %s\r\n" % str(current or request_id(None)).encode(),
            b"retry-after: %d\r\n" % RETRY_AFTER_S if status == 503 else b"",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body]))
        self.transport.close()
