"""Bearer tokens with scopes for the /v1 API: 401 without a known token, 403 without the scope."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.config import ApiToken
from service.errors import Forbidden, Unauthorized


class TokenBook:
    """Known tokens, kept as digests and compared in constant time."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._entries = [(hashlib.sha256(t.token.encode()).digest(), frozenset(t.scopes))
                         for t in tokens if t.token]

    def scopes(self, authorization: str) -> frozenset[str] | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for known, scopes in self._entries:  # no early exit: timing does not tell which
            if hmac.compare_digest(digest, known):
                found = scopes
        return found


def require_scope(connection: ASGIConnection, handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Litestar guard: the handler's `opt["scope"]` must be granted to the bearer token."""
    book: TokenBook = connection.app.state.tokens
    scopes = book.scopes(connection.headers.get("authorization", ""))
    if scopes is None:
        raise Unauthorized("missing or unknown bearer token")
    needed = handler.opt.get("scope", "read")
    if needed not in scopes:
        raise Forbidden(f"token lacks the {needed!r} scope")
