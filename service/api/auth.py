"""Bearer tokens with scopes for the /v1 API: 401 without a known token, 403 without the scope,
each with the RFC 6750 challenge saying which. Whether a token sees personal data (`pii`) is
not a gate but a view: the guard leaves the token's scopes on the request for sees_pii."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.config import ApiToken
from service.errors import Forbidden, Unauthorized, challenge

REALM = "dlr-reconciler"
SCOPES_KEY = "dlr.scopes"  # ASGI scope key: the scopes of the request's token
# Recipients' numbers in full and message texts: `pii`, or `admin` (whose inbox holds the
# raw bodies anyway).
PII_SCOPES = frozenset({"pii", "admin"})
PII_NOTE = ("A token without the `pii` scope (or `admin`) sees `to` masked (`+417******27`), "
            "also where `message_id` holds it (Sinch, Vonage and DiceSMS ids), and `text` "
            "null.")


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
    connection.scope[SCOPES_KEY] = scopes  # type: ignore[literal-required]
    needed = handler.opt.get("scope", "read")
    if needed not in scopes:
        raise Forbidden(f"token lacks the {needed!r} scope", headers={
            "WWW-Authenticate": challenge("Bearer", realm=REALM, error="insufficient_scope",
                                          scope=needed)})


def sees_pii(connection: ASGIConnection) -> bool:  # type: ignore[type-arg]
    """Whether the request's token (past require_scope) may see numbers in full and texts."""
    scopes: frozenset[str] = connection.scope.get(SCOPES_KEY, frozenset())  # type: ignore[assignment]
    return not PII_SCOPES.isdisjoint(scopes)
