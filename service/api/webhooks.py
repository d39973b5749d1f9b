"""POST /webhooks/{source}: verify the raw body, keep it, merge its reports, then answer.

Verification follows the source's `[sources.webhook]` table: HTTP Basic, a static header
token, Standard Webhooks signatures (HMAC-SHA256 over "id.timestamp.body"), or a provider's
own signature (Twilio's X-Twilio-Signature, Vonage's `sig`), whose check lives with its
provider. A kind whose reports may come as a GET query (Vonage) is also received by GET:
the query string is then the body kept and decoded.
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
from collections.abc import Mapping
from typing import Annotated

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from service import metrics
from service.api.openapi import WEBHOOK_SECURITY, Documented, ReceiveReports, errors
from service.config import Source, WebhookConfig
from service.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    NotFound,
    TooManyReports,
    Unauthorized,
    challenge,
)
from service.ingest import Ingestor, decode, decoder_for
from service.providers import MAX_REJECTIONS_LISTED, MAX_REPORTS, registry, twilio, vonage
from service.schemas import doc

log = logging.getLogger(__name__)
TIMESTAMP = re.compile(r"^\d{1,12}$")  # seconds since 1970; 12 digits reach the year 33658
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

    def check_body(self, headers: Mapping[str, str], body: bytes, query: str = "") -> None:
        """A signed source's signature over the body and the query string (after
        check_headers)."""
        if self.hook.standard_webhooks:
            self._check_signature(headers, body)
        elif self.hook.twilio_signature and not twilio.signature_valid(
                self.hook.twilio_signature, query, body, headers.get(twilio.SIGNATURE_HEADER, ""),
                headers.get("content-type")):
            raise Unauthorized("wrong X-Twilio-Signature", self.challenge)
        elif self.hook.vonage_signature:
            try:
                params = vonage.receipt_params(body, headers.get("content-type"))
            except BadRequest:
                params = {}
            if not vonage.signature_valid(self.hook.vonage_signature, params):
                raise Unauthorized("missing, wrong or stale Vonage sig", self.challenge)

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
        stamp = headers.get("webhook-timestamp", "")
        if not TIMESTAMP.match(stamp):
            raise Unauthorized("webhook-timestamp is not a number of seconds", self.challenge)
        timestamp = int(stamp)
        if abs(time.time() - timestamp) > tolerance_s:
            raise Unauthorized("webhook-timestamp outside the accepted window", self.challenge)
        return timestamp

    def _check_signature(self, headers: Mapping[str, str], body: bytes) -> None:
        assert self.hook.standard_webhooks is not None
        timestamp = self._signed_at(headers, self.hook.standard_webhooks.tolerance_s)
        msg_id, signatures = headers["webhook-id"], headers["webhook-signature"]
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = [base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
                    for key in self.keys]
        for candidate in signatures.split():
            version, _, value = candidate.partition(",")
            if version == "v1" and any(hmac.compare_digest(value.encode(), e) for e in expected):
                return
        raise Unauthorized("no valid webhook signature", self.challenge)


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


class Accepted(msgspec.Struct):
    accepted: Annotated[int, doc("Reports merged, committed before this answer")]
    rejected: Annotated[list[RejectedReport], doc("The first 100 reports refused")]
    rejected_count: int


@post("/webhooks/{source:str}", status_code=200, tags=["webhooks"], operation_id="receiveReports",
      security=WEBHOOK_SECURITY, operation_class=ReceiveReports,
      responses=errors(400, 401, 403, 404, 413, 500, s400=(
          "Invalid JSON or XML, not a report body, or no usable report (`rejected` lists "
          "why); the body is kept"),
          s403="The source address is not in the webhook's allow_ips",
          s404="No such source, or no webhook configured for it",
          s413=f"Body larger than DLR_MAX_BODY_BYTES, or more than {MAX_REPORTS} reports (then "
               "kept)",
          s500="A bug while merging; `detail` says whether the body was kept for replay"),
      summary="Receive an Infobip-compatible delivery report push",
      description="Answers 200 only once the body and its merged reports are committed. "
                  "Each report is judged alone: a bad one is listed in `rejected`, the "
                  "others are merged.")
async def receive_reports(source: FromPath[str], request: Request[None, None, State]) -> Accepted:
    gate: Gate | None = request.app.state.gates.get(source)
    if gate is None:
        raise NotFound(f"no webhook for source {source!r}")
    # Nothing unauthenticated is read: an attacker's body stays in the socket.
    gate.check_headers(request.headers, request.client.host if request.client else None)
    body = await request.body()
    gate.check_body(request.headers, body, request.url.query)
    return await _receive(source, request, body, request.headers.get("content-type"))


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
    body = request.url.query.encode()
    gate.check_body({**request.headers, "content-type": QUERY_BODY}, body)
    return await _receive(source, request, body, QUERY_BODY)


async def _receive(source: str, request: Request[None, None, State], body: bytes,
                   content_type: str | None) -> Accepted:
    """Decode, keep and merge an authenticated body, then answer."""
    settings = request.app.state.settings.sources[source]
    decoded = decode(settings, "push", body, content_type, decoder_for(settings, None, content_type))
    ingestor: Ingestor = request.app.state.ingestor
    # As committed: a report the merge failed on (a bug) is a rejection, and its body kept
    # for replay, so the provider need not send it again.
    envelope = await ingestor.ingest(decoded)
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

