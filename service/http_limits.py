"""uvicorn's HTTP/1.1 protocol with the limits it lacks.

- A new connection must send its first byte within `first_byte_timeout_s` (a few seconds),
  and a request must arrive whole (request line, headers and body) within
  `request_timeout_s` of its first byte: else 408 and the connection is closed. uvicorn's
  keep-alive timer restarts on every byte and is not armed before a first request, so
  without this a client sending nothing, or a byte at a time, holds its connection (and a
  half-read body) for ever; with it, an idle socket holds a slot for seconds, not minutes.
- The request line and headers must fit in `max_header_bytes`: else 431.
- At most `max_connections` connections at once (so at most that many requests in flight,
  HTTP/1.1 answering one request of a connection at a time), and at most
  `max_per_client` of them from one client address (trusted proxies excepted: every
  client behind them shares their address), so that one address cannot take them all.
  Past either, two connections per address may still ask for a health probe or the
  metrics, their request line and headers in one read (a probe's few hundred bytes, written
  at once): answered from a small reserve (PROBE_RESERVE requests at once), taken once the
  request has arrived and given back with its answer, then closed. Sockets that send
  nothing, or a probe a byte at a time, hold no place in it, so the kubelet's probes and
  the scrapes answer while the service is full, whatever other addresses hold; anything
  else is answered 503 with Retry-After and closed, without its request being parsed.
  uvicorn's own `limit_concurrency` answers without Retry-After and logs a warning per
  refusal.

Each of these answers, and uvicorn's 400 for a request it cannot parse, is an RFC 9457
problem like every other error of the service, with an X-Request-ID; each is counted in
`dlr_connections_refused_total{reason}` and logged at most once per LOG_EVERY_S per reason,
with how many there were.

The application's own time is not limited here: once a request has arrived, its handler's
database calls are bounded by DLR_DB_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import metrics
from service.errors import PROBLEM_JSON, problem
from service.logs import REFUSED_WITH, REQUEST_ID_KEY, request_id

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # past the connection cap: connections free up as fast as requests end
PROBE_RESERVE = 16  # probe requests past the caps answered at once
PROBE_RESERVE_PER_CLIENT = 2  # connections past the caps per address that may ask for one
PROBE_PATHS = frozenset({b"/health/live", b"/health/ready", b"/metrics"})
LOG_EVERY_S = 10.0
LINGER_S = 2.0  # after an answer given before its body arrived: the rest is drained this long
REASONS = ("capacity", "client_share", "first_byte_timeout", "request_timeout",
           "headers_too_large", "bad_request")


# uvicorn's own warning for each request it cannot parse (answered here, counted and logged
# at most once per LOG_EVERY_S) or whose upgrade it does not take (served as a plain
# request): a line per request would let anyone write the log as fast as they can send.
UVICORN_PER_REQUEST = ("Invalid HTTP request received.", "Unsupported upgrade request.",
                       "No supported WebSocket library detected.")


class _PerRequestWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(UVICORN_PER_REQUEST))


_per_request_warnings = _PerRequestWarnings()


class _HeadersTooLarge(Exception):
    pass


class _NotAProbe(Exception):  # past the caps: not a probe, or no room in the reserve
    pass


class _Books:
    """The connections one server holds: admitted ones, per client address; those past the
    caps that may ask for a probe, per address; and the probes being answered."""

    def __init__(self) -> None:
        self.admitted = 0
        self.per_client: collections.Counter[str] = collections.Counter()
        self.reserve = 0
        self.asking: collections.Counter[str] = collections.Counter()


class _RefusalLog:
    """One warning per reason per LOG_EVERY_S, saying how many were refused since the last:
    a flood of refusals must not become a flood of log lines."""

    def __init__(self) -> None:
        self.pending: collections.Counter[str] = collections.Counter()
        self.last: dict[str, float] = {}

    def refused(self, reason: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(reason).inc()
        self.pending[reason] += 1
        now = time.monotonic()
        if now - self.last.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            log.warning("refused %d connection(s) or request(s): %s", self.pending[reason],
                        reason, extra={"reason": reason, "refused": self.pending[reason]})
            self.pending[reason] = 0
            self.last[reason] = now


_refusals = _RefusalLog()


class _Lingering:
    """The connection's transport, as uvicorn and the refusals close it: closed before its
    request arrived whole, it lingers (LimitedHttp.linger) rather than reset the client."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedHttp) -> None:
        self._transport, self._protocol = transport, protocol

    def close(self) -> None:
        protocol, transport = self._protocol, self._transport
        if (protocol._arrived or not protocol._began or protocol._lingering
                or transport.is_closing() or not transport.can_write_eof()):
            transport.close()
        else:
            protocol.linger(transport)

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def trusted_networks(entries: Iterable[str]) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


class LimitedHttp(HttpToolsProtocol):
    def __init__(self, *args: Any, request_timeout_s: float, max_header_bytes: int,
                 max_connections: int, first_byte_timeout_s: float = 5.0,
                 max_per_client: int | None = None, trusted: tuple[Any, ...] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger.addFilter(_per_request_warnings)  # once: the logger is uvicorn's own
        self.request_timeout_s = request_timeout_s
        self.first_byte_timeout_s = min(first_byte_timeout_s, request_timeout_s)
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.max_per_client = max_per_client or max_connections
        self.trusted = trusted
        # "full"; past the caps "asking" (may ask for a probe), then "probe" (answering one
        # from the reserve); or None: refused
        self._slot: str | None = None
        self._refusal = "capacity"
        self._host = ""
        self._began = False  # a byte of the current request has arrived
        self._arrived = False  # the current request has arrived whole
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._headers_too_large = False
        self._not_a_probe = False
        self._books: _Books | None = None
        self._counted = False  # its refusal is counted already
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _Lingering(transport, self)  # type: ignore[assignment]
        self._admit()
        self._arm(self.first_byte_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # answered and closing: what the client still sends is dropped
            return
        if self._slot is None or (self._slot == "asking" and self._began):
            self._began = True
            self._refuse(503, self._refusal)
            return
        if not self._began:  # the first byte: the whole request is due request_timeout_s on
            self._began = True
            self._disarm()
            self._arm(self.request_timeout_s)
        super().data_received(data)
        if self._slot == "asking" and not self.transport.is_closing():
            self._refuse(503, self._refusal)  # past the caps, a probe's headers come at once

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arrived = False
        if self._deadline is None:
            self._arm(self.request_timeout_s)

    def on_url(self, url: bytes) -> None:
        if self._slot in ("asking", "probe") and url.partition(b"?")[0] not in PROBE_PATHS:
            self._not_a_probe = True
            raise _NotAProbe  # the parser stops; uvicorn calls send_400_response
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        books = self._books
        if self._slot == "asking" and books is not None:  # a probe has arrived: answered
            if books.reserve >= PROBE_RESERVE:  # from the reserve, if it has room
                self._not_a_probe = True
                raise _NotAProbe
            self._slot = "probe"
            books.reserve += 1
        super().on_headers_complete()
        if self._slot == "probe" and self.cycle is not None:
            self.cycle.keep_alive = False  # one probe a connection: closed once answered

    def on_response_complete(self) -> None:
        if self._slot == "probe" and self._books is not None:  # its place, given back
            self._slot = "asking"
            self._books.reserve -= 1
        super().on_response_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._began = False
        self._arrived = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parse error; a callback raising counts as one."""
        if self._not_a_probe:
            self._refuse(503, self._refusal)
        elif self._headers_too_large:
            self._refuse(431, "headers_too_large")
        else:
            self._refuse(400, "bad_request", "not an HTTP/1.1 request this server can read")

    def _admit(self) -> None:
        """Take a slot: a whole one if the caps allow, else one of its address's two that
        may ask for a probe, else none (the connection is answered 503 when it speaks)."""
        books: _Books | None = getattr(self.server_state, "dlr_books", None)
        if books is None:
            books = _Books()
            self.server_state.dlr_books = books  # type: ignore[attr-defined]
        self._books = books
        self._host = self.client[0] if self.client else ""
        if books.admitted >= self.max_connections:
            self._refusal = "capacity"
        elif books.per_client[self._host] >= self.max_per_client and not self._trusted():
            self._refusal = "client_share"
        else:
            self._slot = "full"
            books.admitted += 1
            books.per_client[self._host] += 1
            return
        if books.asking[self._host] < PROBE_RESERVE_PER_CLIENT:
            self._slot = "asking"
            books.asking[self._host] += 1
        else:  # counted now: it may never speak
            _refusals.refused(self._refusal)
            self._counted = True

    def _release(self) -> None:
        books, host = self._books, self._host
        if books is None:
            return
        if self._slot == "full":
            books.admitted -= 1
            counts = books.per_client
        elif self._slot in ("asking", "probe"):
            if self._slot == "probe":
                books.reserve -= 1
            counts = books.asking
        else:
            return
        self._slot = None
        counts[host] -= 1
        if counts[host] <= 0:
            del counts[host]

    def _trusted(self) -> bool:
        if not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(self._host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise _HeadersTooLarge  # the parser stops; uvicorn calls send_400_response

    def linger(self, transport: asyncio.Transport) -> None:
        """Closing before the request arrived whole (a refusal, which reads no further):
        the client is told (end of stream after the answer), what it still sends is
        dropped for LINGER_S, then the connection closes. Closing at once would reset it
        while it sends, and the client might lose the answer."""
        self._lingering = True
        self._disarm()
        transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_S, transport.close)

    def _arm(self, seconds: float) -> None:
        self._deadline = self.loop.call_later(seconds, self._expired)

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
        if self._slot is None:  # refused, and it never spoke: nothing to answer
            self.transport.close()
            return
        self._refuse(408, "request_timeout" if self._began else "first_byte_timeout")

    def _refuse(self, status: int, reason: str, detail: str | None = None) -> None:
        if self.transport.is_closing():
            return
        if not self._counted:
            _refusals.refused(reason)
        extensions: dict[str, Any] = {}
        if reason == "first_byte_timeout":
            detail = f"no request began within {self.first_byte_timeout_s:g} s"
        elif status == 408:
            detail = f"the request did not arrive whole within {self.request_timeout_s:g} s"
        elif status == 431:
            detail = f"the request line and headers exceed {self.max_header_bytes} bytes"
        elif reason == "client_share":
            detail = (f"this client address holds its {self.max_per_client} connections; "
                      "retry later")
            extensions["retry_after"] = RETRY_AFTER_S
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
