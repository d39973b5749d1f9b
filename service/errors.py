"""Expected failures, each carrying the HTTP status it maps to, and the RFC 9457 problem
document that every error answer of the service is.

    ServiceError
    ├── BadRequest            400  the request is malformed; nothing about it is retried
    │   └── TooManyReports    413  more reports (or JSON values, XML elements) in one body
    │                              than any provider sends
    ├── Unauthorized          401  missing or wrong credentials (with a WWW-Authenticate challenge)
    ├── Forbidden             403  valid credentials without the right (scope, source address)
    ├── NotFound              404  no such source, message or endpoint
    ├── TooLarge              413  a body larger than its kind of push can be
    ├── DatabaseUnavailable   503  the database cannot be reached now; retry later
    └── Busy                  503  the process holds all the unverified bytes it will; retry

ConfigError is not an HTTP error: it stops a command before it starts.
Anything else that escapes a handler is a bug and becomes a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

PROBLEM_JSON = "application/problem+json"


def problem(status: int, detail: str, **extensions: Any) -> dict[str, Any]:
    """An RFC 9457 problem document. Its type is "about:blank": the HTTP status says what
    kind of problem it is, its reason phrase is the title, `detail` says what happened here,
    and `extensions` are further members (such as `rejected` or `retry_after`)."""
    return {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": detail, **extensions}


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class ServiceError(Exception):
    """`message` (and `detail`, a further explanation) become the problem's detail; `extra`
    its extension members; `headers` go on the answer."""

    status_code = 500

    def __init__(self, message: str, detail: str | None = None, *,
                 extra: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    @property
    def explanation(self) -> str:
        """The problem's `detail` member."""
        return f"{self.message}: {self.detail}" if self.detail else self.message


class BadRequest(ServiceError):
    status_code = 400


class Unauthorized(ServiceError):
    """`challenge` is the WWW-Authenticate value that every 401 must carry (RFC 9110): how to
    authenticate here."""

    status_code = 401

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class TooManyReports(BadRequest):
    status_code = 413


class TooLarge(ServiceError):
    status_code = 413


class DatabaseUnavailable(ServiceError):
    status_code = 503
    retry_after_s = 5

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message, detail, extra={"retry_after": self.retry_after_s},
                         headers={"Retry-After": str(self.retry_after_s)})


class Busy(ServiceError):
    status_code = 503
    retry_after_s = 1

    def __init__(self, message: str) -> None:
        super().__init__(message, extra={"retry_after": self.retry_after_s},
                         headers={"Retry-After": str(self.retry_after_s)})


def challenge(scheme: str, **params: str) -> str:
    """A WWW-Authenticate challenge: `Basic realm="webhook ib"`, its values quoted."""
    quoted = ", ".join(f'{name}="{_escaped(value)}"' for name, value in params.items())
    return f"{scheme} {quoted}" if quoted else scheme


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
