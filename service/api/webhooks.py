"""POST /webhooks/{source}: verify the raw body, keep it, merge its reports, then answer.

Verification follows the source's `[sources.webhook]` table: HTTP Basic, a static header
token, Standard Webhooks signatures (HMAC-SHA256 over "id.timestamp.body"), or a provider's
own signature (Twilio's X-Twilio-Signature, Vonage's `sig`), whose check lives with its
provider. A kind whose reports may come as a GET query (Vonage) is also received by GET:
the query string is then the body kept and decoded.

Before a sender is known good it costs little: credentials in headers are checked before
the body is read; where a signature needs the body, the body is read against its kind's
size limit and a process-wide budget of unverified bytes (503 with Retry-After past it),
and hashed as it arrives, so that nothing scaling with the body runs before the last byte.
A signed push whose key (Standard Webhooks `webhook-id`, Vonage `nonce`, Twilio signature
and query) was kept within its window is a replay: answered 200, not kept again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from service import metrics, store
from service.api.openapi import WEBHOOK_SECURITY, Documented, ReceiveReports, errors
from service.config import Source, WebhookConfig
from service.errors import (
    BadRequest,
    Busy,
    ConfigError,
    Forbidden,
    NotFound,
    ServiceError,
    TooLarge,
    TooManyReports,
    Unauthorized,
    challenge,
)
from service.ingest import Ingestor, decode, decoder_for
from service.providers import MAX_REJECTIONS_LISTED, MAX_REPORTS, registry, twilio, vonage
from service.schemas import doc

log = logging.getLogger(__name__)
TIMESTAMP = re.compile(r"^\d{1,12}$")  # seconds since 1970; 12 digits reach the year 33658
# Twilio signs no time: a callback captured once could be replayed for ever. Its signature
# and body are remembered this long; a replay later than that is kept again (and merges to
# the same state).
TWILIO_REPLAY_WINDOW_S = 86400
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def _secret_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ConfigError("standard_webhooks.secrets: a secret is not base64 "
                          "(expected whsec_<base64>)") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value a Standard Webhooks sender puts on this body."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Unverified:
    """Bytes of webhook bodies held, across the process, whose sender is not yet known good.

    A signed push's body is needed to check its signature; an unauthenticated source's
    body is anyone's. Each such body takes its bytes from here as they arrive and gives
    them back once checked (or refused): past `limit`, a request gets 503 with Retry-After.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self, source: str) -> Iterator[Callable[[int], None]]:
        """A `take(n)` for one body; all it took is given back on leaving."""
        taken = 0

        def take(n: int) -> None:
            nonlocal taken
            if self.held + n > self.limit:
                metrics.UNVERIFIED_REFUSED.labels(source, "budget").inc()
                raise Busy("the service holds as many unverified webhook bytes as it will; "
                           "retry later")
            self.held += n
            taken += n
            metrics.UNVERIFIED_BYTES.set(self.held)

        try:
            yield take
        finally:
            self.held -= taken
            metrics.UNVERIFIED_BYTES.set(self.held)


class BodyCheck(Protocol):
    """One request's signature check: fed the body as it arrives, then asked once."""

    def update(self, chunk: bytes) -> None: ...

    def verify(self, body: bytes) -> None:
        """Raise Unauthorized (or BadRequest for a body no sender could sign) unless good."""

    def replay_key(self, body: bytes) -> tuple[bytes, datetime] | None:
        """A key no other push of this source has, and until when a replay is refused."""


class _StandardWebhooks:
    def __init__(self, gate: Gate, headers: Mapping[str, str], timestamp: int) -> None:
        self.gate, self.timestamp = gate, timestamp
        self.msg_id, self.signatures = headers["webhook-id"], headers["webhook-signature"]
        prefix = f"{self.msg_id}.{timestamp}.".encode()
        self.macs = [hmac.new(key, prefix, hashlib.sha256) for key in gate.keys]

    def update(self, chunk: bytes) -> None:
        for mac in self.macs:
            mac.update(chunk)

    def verify(self, body: bytes) -> None:
        expected = [base64.b64encode(mac.digest()) for mac in self.macs]
        for candidate in self.signatures.split():
            version, _, value = candidate.partition(",")
            if version == "v1" and any(hmac.compare_digest(value.encode(), e) for e in expected):
                return
        raise Unauthorized("no valid webhook signature", self.gate.challenge)

    def replay_key(self, body: bytes) -> tuple[bytes, datetime] | None:
        assert self.gate.hook.standard_webhooks is not None
        until = self.timestamp + self.gate.hook.standard_webhooks.tolerance_s
        return (store.sha256(b"webhook-id\0" + self.msg_id.encode()),
                datetime.fromtimestamp(until, UTC))


class _Twilio:
    def __init__(self, gate: Gate, headers: Mapping[str, str], query: str) -> None:
        self.gate, self.headers, self.query = gate, headers, query
        self.signature = headers.get(twilio.SIGNATURE_HEADER, "")

    def update(self, chunk: bytes) -> None:
        pass  # a callback is a few hundred bytes (its kind's limit): checked whole

    def verify(self, body: bytes) -> None:
        assert self.gate.hook.twilio_signature is not None
        if not twilio.signature_valid(self.gate.hook.twilio_signature, self.query, body,
                                      self.signature, self.headers.get("content-type")):
            raise Unauthorized("wrong X-Twilio-Signature", self.gate.challenge)

    def replay_key(self, body: bytes) -> tuple[bytes, datetime] | None:
        # What was signed, which the signature stands for: the URL with its query, and the
        # form's parameters sorted (each value once) or a JSON body's bodySHA256. Not the
        # body as sent: reordered, repeated or encoded otherwise it is the same callback.
        key = store.sha256(b"\0".join([self.signature.encode(), self.query.encode()]))
        return key, datetime.now(UTC) + timedelta(seconds=TWILIO_REPLAY_WINDOW_S)


class _Vonage:
    def __init__(self, gate: Gate, headers: Mapping[str, str]) -> None:
        self.gate, self.content_type = gate, headers.get("content-type")
        self.params: dict[str, str] = {}

    def update(self, chunk: bytes) -> None:
        pass  # a receipt is a few hundred bytes (its kind's limit): checked whole

    def verify(self, body: bytes) -> None:
        auth = self.gate.hook.vonage_signature
        assert auth is not None
        self.params = vonage.signed_params(body, self.content_type)  # 400 unless flat and short
        if not vonage.signature_valid(auth, self.params):
            raise Unauthorized("missing, wrong or stale Vonage sig", self.gate.challenge)

    def replay_key(self, body: bytes) -> tuple[bytes, datetime] | None:
        auth = self.gate.hook.vonage_signature
        nonce, stamp = self.params.get("nonce"), self.params.get("timestamp", "")
        if auth is None or not nonce or not TIMESTAMP.match(stamp):
            return None
        return (store.sha256(b"nonce\0" + nonce.encode()),
                datetime.fromtimestamp(int(stamp) + auth.tolerance_s, UTC))


SINCH_SIGNATURE = "x-sinch-webhook-signature"
SINCH_NONCE = "x-sinch-webhook-signature-nonce"
SINCH_TIMESTAMP = "x-sinch-webhook-signature-timestamp"


def sinch_sign(secret: str, nonce: str, timestamp: int | str, body: bytes) -> str:
    """X-Sinch-Webhook-Signature for this body: base64 HMAC-SHA256 of body.nonce.timestamp."""
    mac = hmac.new(secret.encode(), body + f".{nonce}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class _Sinch:
    def __init__(self, gate: Gate, headers: Mapping[str, str], timestamp: int) -> None:
        self.gate, self.timestamp = gate, timestamp
        self.nonce, self.signature = headers[SINCH_NONCE], headers[SINCH_SIGNATURE]
        assert gate.hook.sinch_signature is not None
        self.macs = [hmac.new(s.encode(), b"", hashlib.sha256)
                     for s in gate.hook.sinch_signature.secrets if s]

    def update(self, chunk: bytes) -> None:
        for mac in self.macs:
            mac.update(chunk)

    def verify(self, body: bytes) -> None:
        tail = f".{self.nonce}.{self.timestamp}".encode()
        presented = self.signature.encode()
        ok = False
        for mac in self.macs:
            mac.update(tail)
            ok |= hmac.compare_digest(base64.b64encode(mac.digest()), presented)
        if not ok:
            raise Unauthorized("wrong X-Sinch-Webhook-Signature", self.gate.challenge)

    def replay_key(self, body: bytes) -> tuple[bytes, datetime] | None:
        assert self.gate.hook.sinch_signature is not None
        return (store.sha256(b"sinch-nonce\0" + self.nonce.encode()),
                datetime.fromtimestamp(self.timestamp + self.gate.hook.sinch_signature
                                       .tolerance_s, UTC))


class Gate:
    """Decides whether one request may deliver reports for one source."""

    def __init__(self, name: str, hook: WebhookConfig) -> None:
        self.name = name
        self.hook = hook
        self.networks = [ipaddress.ip_network(c, strict=False) for c in hook.allow_ips]
        if hook.basic:
            self.basic = f"{hook.basic.username}:{hook.basic.password}".encode()
        if hook.standard_webhooks:
            self.keys = [_secret_key(s) for s in hook.standard_webhooks.secrets if s]
        self.challenge = _challenge(name, hook)

    @property
    def needs_body(self) -> bool:
        """Whether the sender is known good only once the body is read (a signature over
        it, or no credentials at all)."""
        hook = self.hook
        return not (hook.basic or hook.token)

    def check_headers(self, headers: Mapping[str, str], client_ip: str | None) -> None:
        """Everything that can be checked before the body is read: the source address, the
        credentials, and the presence, form and age of a signature's headers."""
        if self.networks and not self._allowed(client_ip):
            raise Forbidden("source address not allowed")
        hook = self.hook
        if hook.basic:
            self._check_basic(headers.get("authorization", ""))
        elif hook.token:
            presented = headers.get(hook.token.header.lower(), "").encode()
            if not hmac.compare_digest(presented, hook.token.value.encode()):
                raise Unauthorized("missing or wrong webhook token", self.challenge)
        elif hook.standard_webhooks:
            self._signed_at(headers, hook.standard_webhooks.tolerance_s)
        elif hook.twilio_signature and not headers.get(twilio.SIGNATURE_HEADER):
            raise Unauthorized("missing X-Twilio-Signature", self.challenge)
        elif hook.sinch_signature:
            self._sinch_signed_at(headers, hook.sinch_signature.tolerance_s)

    def body_check(self, headers: Mapping[str, str], query: str = "") -> BodyCheck | None:
        """The signature check of this request's body (after check_headers); None when the
        headers were the whole check."""
        hook = self.hook
        if hook.standard_webhooks:
            return _StandardWebhooks(self, headers,
                                     self._signed_at(headers, hook.standard_webhooks.tolerance_s))
        if hook.twilio_signature:
            return _Twilio(self, headers, query)
        if hook.vonage_signature:
            return _Vonage(self, headers)
        if hook.sinch_signature:
            return _Sinch(self, headers,
                          self._sinch_signed_at(headers, hook.sinch_signature.tolerance_s))
        return None

    def _sinch_signed_at(self, headers: Mapping[str, str], tolerance_s: int) -> int:
        if not (headers.get(SINCH_SIGNATURE) and headers.get(SINCH_NONCE)):
            raise Unauthorized("missing X-Sinch-Webhook-Signature, -Nonce or -Timestamp",
                               self.challenge)
        return self._fresh(headers, "X-Sinch-Webhook-Signature-Timestamp", tolerance_s)

    def _allowed(self, client_ip: str | None) -> bool:
        try:
            address = ipaddress.ip_address(client_ip or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def _check_basic(self, authorization: str) -> None:
        scheme, _, encoded = authorization.partition(" ")
        try:
            presented = base64.b64decode(encoded, validate=True)
        except ValueError:  # not base64, or not even ASCII (binascii.Error is a ValueError)
            presented = b""
        if scheme.lower() != "basic" or not hmac.compare_digest(presented, self.basic):
            raise Unauthorized("missing or wrong basic credentials", self.challenge)

    def _signed_at(self, headers: Mapping[str, str], tolerance_s: int) -> int:
        if not (headers.get("webhook-id") and headers.get("webhook-signature")):
            raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature",
                               self.challenge)
        return self._fresh(headers, "webhook-timestamp", tolerance_s)

    def _fresh(self, headers: Mapping[str, str], header: str, tolerance_s: int) -> int:
        """The signing time a header says (seconds since 1970), within `tolerance_s` of now."""
        stamp = headers.get(header.lower(), "")
        if not TIMESTAMP.match(stamp):
            raise Unauthorized(f"{header} is not a number of seconds", self.challenge)
        if abs(time.time() - int(stamp)) > tolerance_s:
            raise Unauthorized(f"{header} outside the accepted window", self.challenge)
        return int(stamp)


def _challenge(name: str, hook: WebhookConfig) -> str:
    """The WWW-Authenticate challenge of a 401 from this webhook: Basic, the header that
    carries the token, or the Standard Webhooks signature headers."""
    realm = f"webhook {name}"
    if hook.basic:
        return challenge("Basic", realm=realm, charset="UTF-8")
    if hook.token:
        header = hook.token.header
        return challenge("Token", realm=realm, **({"header": header} if HEADER_NAME.match(header)
                                                   else {}))
    if hook.standard_webhooks:
        return challenge("StandardWebhooks", realm=realm,
                         headers="webhook-id webhook-timestamp webhook-signature")
    if hook.twilio_signature:
        return challenge("TwilioSignature", realm=realm, header="X-Twilio-Signature")
    if hook.vonage_signature:
        return challenge("VonageSignature", realm=realm, parameter="sig")
    if hook.sinch_signature:
        return challenge("SinchSignature", realm=realm, headers=" ".join(
            (SINCH_SIGNATURE, SINCH_NONCE, SINCH_TIMESTAMP)))
    return ""  # unauthenticated: it never answers 401


def build_gates(sources: Mapping[str, Source]) -> dict[str, Gate]:
    """Gates for the sources that can receive pushes; a disabled or unset webhook has none."""
    gates: dict[str, Gate] = {}
    for name, source in sources.items():
        hook = source.webhook
        if hook is None:  # the settings allow one only on a kind that takes pushes
            continue
        if reason := hook.disabled_reason:
            log.warning("webhook disabled", extra={"source": name, "reason": reason})
            continue
        if not (hook.schemes or hook.unauthenticated):
            continue
        if hook.unauthenticated:
            log.warning("webhook accepts unauthenticated pushes", extra={"source": name})
        gates[name] = Gate(name, hook)
    return gates


class RejectedReport(msgspec.Struct):
    index: Annotated[int, doc("Its place in `results`; -1: the merge failed on it (a bug), "
                              "its body is kept for replay")]
    message_id: str | None
    reason: Annotated[str, doc("Names the field", "$.results[3].sentAt: not a time")]


class Accepted(msgspec.Struct, omit_defaults=True):
    accepted: Annotated[int, doc("Reports merged, committed before this answer")]
    rejected: Annotated[list[RejectedReport], doc("The first 100 reports refused")]
    rejected_count: int
    replayed: Annotated[bool, doc("True: a replay of a signed push already kept within its "
                                  "window; nothing was kept again")] = False


@post("/webhooks/{source:str}", status_code=200, tags=["webhooks"], operation_id="receiveReports",
      security=WEBHOOK_SECURITY, operation_class=ReceiveReports,
      responses=errors(400, 401, 403, 404, 413, 500, 503, s400=(
          "Invalid JSON or XML, not a report body, or no usable report (`rejected` lists "
          "why); the body is kept"),
          s403="The source address is not in the webhook's allow_ips",
          s404="No such source, or no webhook configured for it",
          s413=f"Body larger than DLR_MAX_BODY_BYTES or than the kind's pushes can be, or "
               f"more than {MAX_REPORTS} reports (then kept)",
          s503="The database is unavailable, or the process holds as many unverified bodies "
               "as it will (DLR_UNVERIFIED_BODY_BYTES); retry after Retry-After",
          s500="A bug while merging; `detail` says whether the body was kept for replay"),
      summary="Receive an Infobip-compatible delivery report push",
      description="Answers 200 only once the body and its merged reports are committed. "
                  "Each report is judged alone: a bad one is listed in `rejected`, the "
                  "others are merged.")
async def receive_reports(source: FromPath[str], request: Request[None, None, State]) -> Accepted:
    try:
        gate: Gate | None = request.app.state.gates.get(source)
        if gate is None:
            raise NotFound(f"no webhook for source {source!r}")
        # Nothing unauthenticated is read: an attacker's body stays in the socket.
        gate.check_headers(request.headers, request.client.host if request.client else None)
        check = gate.body_check(request.headers, request.url.query)
    except ServiceError as exc:
        raise _unread(exc) from None
    content_type = request.headers.get("content-type")
    state = request.app.state
    limit = (state.settings.max_body_bytes, "DLR_MAX_BODY_BYTES")
    kind_limit = registry.provider(state.settings.sources[source]).max_push_bytes
    if kind_limit and kind_limit < limit[0]:
        limit = (kind_limit, "what a push of this kind can be")
    if not gate.needs_body:  # the headers were the whole check
        body = await _read(request, source, limit, None, None)
        return await _receive(source, request, body, content_type, None)
    unverified: Unverified = state.unverified
    with unverified.hold(source) as take:
        body = await _read(request, source, limit, take, check)
        if gate.hook.unauthenticated:  # anyone's body: held to the end of the request
            return await _receive(source, request, body, content_type, None)
    return await _receive(source, request, body, content_type, check)


async def _read(request: Request[None, None, State], source: str, limit: tuple[int, str],
                take: Callable[[int], None] | None, check: BodyCheck | None) -> bytes:
    """The body, read against `limit` (bytes, and what they are); while its sender is not known good,
    against the process's budget of unverified bytes too (`take`), and hashed as it arrives.
    A signature is checked here: past this, the sender is known good."""
    declared = request.content_length
    if declared is not None and declared > limit[0]:
        raise _unread(_too_large(source, limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit[0]:
            raise _unread(_too_large(source, limit))
        if take is not None:  # taken as they arrive: a length declared holds nothing yet
            try:
                take(len(chunk))
            except Busy as exc:
                raise _unread(exc) from None
        if check is not None:
            check.update(chunk)
        chunks.append(chunk)
    body = b"".join(chunks)
    del chunks
    if check is not None:
        check.verify(body)
    return body


def _unread(exc: ServiceError) -> ServiceError:
    """A refusal given before the body was read: the connection ends with it (the rest of
    the body is not read, so no further request can follow on it)."""
    exc.headers.setdefault("Connection", "close")
    return exc


def _too_large(source: str, limit: tuple[int, str]) -> TooLarge:
    metrics.UNVERIFIED_REFUSED.labels(source, "too_large").inc()
    return TooLarge(f"the body is larger than {limit[1]} ({limit[0]} bytes)")


QUERY_BODY = "application/x-www-form-urlencoded"  # how a report given as a GET query is kept


@get("/webhooks/{source:str}", status_code=200, tags=["webhooks"],
     operation_id="receiveReportQuery", security=WEBHOOK_SECURITY, operation_class=Documented,
     responses=errors(400, 401, 403, 404, 500, s400="Not a delivery receipt; kept",
                      s404="No such source, or none that takes receipts by GET"),
     summary="Receive a delivery receipt given as a query string (Vonage)")
async def receive_report_query(source: FromPath[str],
                               request: Request[None, None, State]) -> Accepted:
    gate: Gate | None = request.app.state.gates.get(source)
    settings = request.app.state.settings.sources.get(source)
    if gate is None or settings is None or not registry.provider(settings).push_by_get:
        raise NotFound(f"no webhook for source {source!r} that takes GET")
    gate.check_headers(request.headers, request.client.host if request.client else None)
    body = request.url.query.encode()  # bounded by DLR_MAX_HEADER_BYTES
    check = gate.body_check({**request.headers, "content-type": QUERY_BODY})
    if check is not None:
        check.verify(body)
    return await _receive(source, request, body, QUERY_BODY, check)


async def _receive(source: str, request: Request[None, None, State], body: bytes,
                   content_type: str | None, check: BodyCheck | None) -> Accepted:
    """Decode, keep and merge an authenticated body, then answer; a replay of a signed push
    already kept is answered as accepted and not kept again."""
    replay = check.replay_key(body) if check is not None else None
    settings = request.app.state.settings.sources[source]
    decoded = decode(settings, "push", body, content_type, decoder_for(settings, None, content_type))
    if replay is not None:
        decoded = msgspec.structs.replace(decoded, replay=replay)
    ingestor: Ingestor = request.app.state.ingestor
    # As committed: a report the merge failed on (a bug) is a rejection, and its body kept
    # for replay, so the provider need not send it again.
    envelope = await ingestor.ingest(decoded)
    if envelope.replayed:  # the same push, kept meanwhile by a request beside this one
        metrics.REPLAYS.labels(source).inc()
        return Accepted(0, [], 0, replayed=True)
    metrics.WEBHOOK_REPORTS.labels(source, "accepted").inc(len(envelope.reports))
    metrics.WEBHOOK_REPORTS.labels(source, "rejected").inc(len(envelope.rejections))
    rejected = [RejectedReport(r.index, r.message_id, r.reason)
                for r in envelope.rejections[:MAX_REJECTIONS_LISTED]]
    if envelope.error is not None:
        error = TooManyReports if envelope.error_status == 413 else BadRequest
        raise error(envelope.error)
    if not decoded.reports and rejected:
        raise BadRequest("no usable report in the body",
                         extra={"rejected": rejected, "rejected_count": len(envelope.rejections)})
    return Accepted(len(envelope.reports), rejected, len(envelope.rejections))

