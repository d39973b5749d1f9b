"""Expected failures, each carrying the HTTP status it maps to.

    ServiceError
    ├── BadRequest            400  the request is malformed; nothing about it is retried
    ├── Unauthorized          401  missing or wrong credentials
    ├── Forbidden             403  valid credentials without the right (scope, source address)
    ├── NotFound              404  no such source, message or endpoint
    ├── TooManyReports        413  more reports in one body than any provider sends
    └── DatabaseUnavailable   503  the database cannot be reached now; retry later

ConfigError is not an HTTP error: it stops a command before it starts.
Anything else that escapes a handler is a bug and becomes a 500.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class ServiceError(Exception):
    status_code = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class TooManyReports(BadRequest):
    status_code = 413


class DatabaseUnavailable(ServiceError):
    status_code = 503
    retry_after_s = 5
