"""Bearer tokens with scopes for the /v1 API: 401 without a known token, 403 without the scope,
each with the RFC 6750 challenge saying which."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.config import ApiToken
from service.errors import Forbidden, Unauthorized, challenge

REALM = "dlr-reconciler"


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
    authorization = connection.headers.get("authorization", "")
    scopes = book.scopes(authorization)
    if scopes is None:
        if authorization:  # one was presented: say it is not good (RFC 6750 section 3.1)
            raise Unauthorized("missing or unknown bearer token",
                               challenge("Bearer", realm=REALM, error="invalid_token"))
        raise Unauthorized("missing or unknown bearer token", challenge("Bearer", realm=REALM))
    needed = handler.opt.get("scope", "read")
    if needed not in scopes:
        raise Forbidden(f"token lacks the {needed!r} scope", headers={
            "WWW-Authenticate": challenge("Bearer", realm=REALM, error="insufficient_scope",
                                          scope=needed)})
