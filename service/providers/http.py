"""GET from a provider: bounded retries with jittered backoff, Retry-After, and origin pinning.

Retried: connection errors, timeouts, 429 (honouring Retry-After) and 5xx.
Not retried: 401/403 (the credentials are wrong: AuthRejected ends the source's run),
other 4xx, and any redirect or URL off the source's configured origin (never followed).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec


class ProviderError(Exception):
    """A pull failed; the message says what the provider did."""


class AuthRejected(ProviderError):
    """The provider refused our credentials (401/403)."""


class ForeignOrigin(ProviderError):
    """A URL or redirect pointed away from the configured provider origin; nothing was sent."""


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def shown_origin(url: str) -> str:
    """`url`'s scheme, host and port, to name where a source is pulled from in a log line
    (never its user or password, path or query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Retry:
    attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))  # noqa: S311 (jitter)


DEFAULT_RETRY = Retry()
_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_LISTS: dict[str, msgspec.json.Decoder[object]] = {}


def items(body: bytes, field: str | None = None) -> int:
    """How many records a page holds: the items of its JSON list `field`, or of the body
    itself (a JSON list) without one. A page that is no such thing holds none."""
    try:
        if field is None:
            return len(_LIST.decode(body))
        if field not in _LISTS:
            _LISTS[field] = msgspec.json.Decoder(msgspec.defstruct(
                "Listed", [(field, list[msgspec.Raw], msgspec.field(default_factory=list))]))
        return len(getattr(_LISTS[field].decode(body), field))
    except (msgspec.MsgspecError, RecursionError):
        return 0


def new_client() -> httpx.AsyncClient:
    """The process-wide client: explicit timeouts, no redirects followed."""
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), follow_redirects=False,
                             limits=httpx.Limits(max_connections=20))


async def get(client: httpx.AsyncClient, base_url: str, path_or_url: str,
              headers: Mapping[str, str], params: Mapping[str, str | int] | None = None,
              retry: Retry = DEFAULT_RETRY, accept: tuple[int, ...] = (200,)) -> httpx.Response:
    """GET a provider resource; return a response whose status is in `accept`."""
    url = urljoin(base_url, path_or_url)
    if origin(url) != origin(base_url):
        raise ForeignOrigin(f"refused to follow {url!r}: not on {base_url!r}")
    problem = ""
    for attempt in range(retry.attempts):
        try:
            response = await client.get(url, headers=dict(headers), params=params)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            what = "no answer in time" if isinstance(exc, httpx.TimeoutException) else "no connection"
            problem = f"{what} on GET {url}"
            await retry.sleep(retry.delay(attempt, None))
            continue
        status = response.status_code
        if status in accept:
            return response
        if status in (401, 403):
            raise AuthRejected(f"GET {url} answered {status}: check the source's credentials")
        if response.is_redirect:
            raise ForeignOrigin(f"GET {url} redirected to {response.headers.get('location')!r}; "
                                "redirects are not followed")
        if status == 429 or status >= 500:
            problem = f"GET {url} answered {status}"
            await retry.sleep(retry.delay(attempt, response.headers.get("retry-after")))
            continue
        raise ProviderError(f"GET {url} answered {status}: {response.text[:200]}")
    raise ProviderError(f"gave up after {retry.attempts} attempts: {problem}")
