"""Twilio Programmable Messaging: status callbacks (pushed) and the Messages list (pulled).

Status callbacks are form posts (`MessageSid`, `MessageStatus`, `ErrorCode`, `To`, `From`,
`AccountSid`, `RawDlrDoneDate` …) signed with X-Twilio-Signature; the pull reads the
account's `/2010-04-01/Accounts/{AccountSid}/Messages.json` by date sent. A message is
identified by its `MessageSid` (`sid` in the list).

Price: the list gives `price` as a negative string for the whole message (`"-0.01580"`, in
`price_unit`) and `num_segments`; we store the charge per part, `-price / num_segments`
(exact whenever Twilio bills each segment alike, which is how it bills; otherwise rounded
half-even to 10 decimals), and `num_segments` as the parts, so that billing's price times parts
is Twilio's charge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

import httpx
import msgspec

from service import metrics, rules
from service.errors import BadRequest
from service.providers import (
    MAX_ID,
    PRICE_DECIMALS,
    Known,
    NumberText,
    OutOfBounds,
    Rejection,
    Report,
    WireStruct,
    currency,
    http,
    in_words,
    judge_all,
    moment,
    price,
    read_json,
)
from service.providers.base import (
    Decoder,
    Delay,
    Interval,
    SourceBase,
    StatusTable,
    TwilioSignatureAuth,
    status_map_problem,
    sweep_problem,
)
from service.providers.twilio.status import STATUSES as STATUSES

API_VERSION = "2010-04-01"
# A status callback is about twenty form parameters of a few to a few hundred characters
# (Twilio's "Outbound Message Status Callback" parameters): well under 4 KB.
MAX_CALLBACK_BYTES = 64 * 1024
_QUANTUM = Decimal(1).scaleb(-PRICE_DECIMALS)


class TwilioSource(SourceBase, frozen=True, tag="twilio", tag_field="kind"):
    account_sid: str | None = None  # ACxxxxxxxx…: the account whose Messages are pulled
    auth_token: str | None = None  # pulls use HTTP Basic with account_sid and this…
    api_key_sid: str | None = None  # …or with an API key (SKxxxxxxxx…) and its secret
    api_key_secret: str | None = None
    lookback_s: Interval = 2 * 86400.0  # the messages sent this recently are pulled
    # Each pass lists the messages sent since the last pass's end, up to settle_s ago (a
    # status is final within minutes mostly); every full_interval_s, the whole lookback.
    settle_s: Delay = 600.0
    full_interval_s: Interval = 86400.0
    pull_interval_s: Interval = 300.0
    status_map: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def pullable(self) -> bool:
        return bool(self.account_sid and (self.auth_token or (
            self.api_key_sid and self.api_key_secret)))

    def credentials(self) -> tuple[str, str]:
        """HTTP Basic for the REST API: an API key if one is given, else the account."""
        if self.api_key_sid and self.api_key_secret:
            return self.api_key_sid, self.api_key_secret
        return self.account_sid or "", self.auth_token or ""

    def problem(self) -> tuple[str, str] | None:
        if bool(self.api_key_sid) != bool(self.api_key_secret):
            return "api_key_sid", "give api_key_sid and api_key_secret together"
        return sweep_problem(self.lookback_s, self.settle_s) or \
            status_map_problem(self.status_map)


Sid = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]


class StatusCallback(WireStruct):
    """A status callback's form parameters (all text; Twilio adds some without notice)."""

    MessageSid: Sid
    MessageStatus: str
    SmsSid: str | None = None  # the same two, under their older names
    SmsStatus: str | None = None
    AccountSid: str | None = None
    From: str | None = None
    To: NumberText | None = None
    ApiVersion: str | None = None
    ErrorCode: str | None = None
    ErrorMessage: str | None = None
    RawDlrDoneDate: str | None = None  # YYMMDDhhmm from the carrier's receipt, no time zone
    MessagingServiceSid: str | None = None
    NumSegments: str | None = None
    NumMedia: str | None = None
    Body: str | None = None
    ChannelInstallSid: str | None = None  # WhatsApp and other channels
    ChannelStatusMessage: str | None = None
    ChannelPrefix: str | None = None
    ChannelToAddress: str | None = None
    EventType: str | None = None
    StructuredMessage: str | None = None


class MessageStatusEvent(WireStruct):
    """An Event Streams event's data, schema Messaging.MessageStatus (version 4): a status
    callback's fields in camelCase, the status in capitals, the error code a number."""

    messageSid: Sid
    messageStatus: str
    accountSid: str | None = None
    apiVersion: str | None = None
    body: str | None = None
    errorCode: int | None = None
    eventName: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    messagingServiceSid: str | None = None
    statusCallBackUrl: str | None = None
    tags: dict[str, str] | None = None
    timestamp: str | None = None
    to: NumberText | None = None


class CloudEvent(WireStruct):
    """How Event Streams delivers an event to a webhook sink (CloudEvents 1.0, JSON)."""

    data: MessageStatusEvent
    specversion: str | None = None
    type: str | None = None
    source: str | None = None
    id: str | None = None
    subject: str | None = None
    dataschema: str | None = None
    datacontenttype: str | None = None
    time: str | None = None


class Message(WireStruct):
    """A Message resource as the Messages list returns it."""

    sid: Sid
    status: str
    account_sid: str | None = None
    api_version: str | None = None
    body: str | None = None
    date_created: str | None = None  # RFC 2822, GMT
    date_sent: str | None = None
    date_updated: str | None = None
    direction: str | None = None  # inbound, outbound-api, outbound-call, outbound-reply
    error_code: int | None = None
    error_message: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: NumberText | None = None
    messaging_service_sid: str | None = None
    num_media: str | None = None
    num_segments: str | None = None
    price: str | None = None  # negative: a charge, for the whole message
    price_unit: str | None = None
    uri: str | None = None
    subresource_uris: dict[str, str] | None = None
    tags: dict[str, str] | None = None


class MessagePage(msgspec.Struct):
    messages: list[msgspec.Raw]
    next_page_uri: str | None = None


# Report fields by their names in Twilio's bodies, for rejection reasons.
WIRE_NAMES = {
    "message_id": "MessageSid/sid", "to": "To/to", "sender": "From/from",
    "status_name": "MessageStatus/status", "error_id": "ErrorCode/error_code",
    "error_description": "error_message", "done_at": "RawDlrDoneDate",
    "sent_at": "date_sent", "sms_count": "num_segments", "price_amount": "price",
    "price_currency": "price_unit", "text": "Body/body",
}

_callback = Known(StatusCallback)
_event = Known(CloudEvent)
_message = Known(Message)
_page = msgspec.json.Decoder(MessagePage)
_json = msgspec.json.Decoder(float_hook=Decimal)  # numbers as written
MESSAGE_EVENTS = "com.twilio.messaging.message."  # the MessageStatus event types


def decoder(source: TwilioSource, url: str | None, content_type: str | None) -> Decoder:
    """A push is one status callback (a form, or JSON signed through bodySHA256); a pulled
    page is a Messages list page."""
    if url is None:
        return lambda body: (decode_json_callback(source, body) if is_json(body, content_type)
                             else decode_callback(source, body))
    return lambda body: decode_page(source, body)


def is_json(body: bytes, content_type: str | None) -> bool:
    """Whether a push is JSON: its type says so, or (untyped) it starts as JSON does."""
    if content_type:
        return "json" in content_type.lower()
    return body.lstrip()[:1] in (b"{", b"[")



def decode_callback(source: TwilioSource, body: bytes) -> tuple[list[Report], list[Rejection]]:
    """One status callback: `application/x-www-form-urlencoded`, one message."""
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=200)
    except ValueError as exc:  # UnicodeDecodeError too; or too many fields
        raise BadRequest(f"not a Twilio status callback: {in_words(exc)}") from None
    if "MessageSid" not in fields:
        raise BadRequest("not a Twilio status callback: no MessageSid")
    item = {name: values[0] for name, values in fields.items()}
    statuses = StatusTable(source.name, STATUSES, source.status_map)
    return judge_all([item], lambda it: [callback_report(
        source.name, statuses, _callback.convert(it, source.name))], "$",
        lambda it: it.get("MessageSid"), WIRE_NAMES)


def decode_json_callback(source: TwilioSource,
                         body: bytes) -> tuple[list[Report], list[Rejection]]:
    """A JSON push: a status callback's parameters as one object, or Event Streams'
    MessageStatus events (one CloudEvent, or a sink's array of them). Events of other types
    are not reports of ours and are skipped."""
    try:
        decoded = _json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise BadRequest("not a Twilio status callback: the body is not valid JSON") from None
    statuses = StatusTable(source.name, STATUSES, source.status_map)

    def build(item: Any) -> list[Report]:
        if isinstance(item, dict) and "data" not in item and "MessageSid" in item:
            form = {k: _text(v) for k, v in item.items() if v is not None}
            return [callback_report(source.name, statuses, _callback.convert(form, source.name))]
        if isinstance(item, dict) and not str(item.get("type") or MESSAGE_EVENTS).startswith(
                MESSAGE_EVENTS):
            return []
        event = _event.convert(item, source.name).data
        return [callback_report(source.name, statuses, StatusCallback(
            MessageSid=event.messageSid, MessageStatus=event.messageStatus,
            AccountSid=event.accountSid, ApiVersion=event.apiVersion, From=event.from_,
            To=event.to, ErrorCode=None if event.errorCode is None else str(event.errorCode),
            Body=event.body, MessagingServiceSid=event.messagingServiceSid))]

    if isinstance(decoded, list):  # judge_all holds it to the report cap
        return judge_all(decoded, build, "$[{}]", _json_id, WIRE_NAMES)
    if not isinstance(decoded, dict) or not ({"MessageSid", "data"} & set(decoded)):
        raise BadRequest("not a Twilio status callback: no MessageSid")
    return judge_all([decoded], build, "$", _json_id, WIRE_NAMES)


def _text(value: object) -> object:
    """A JSON value as the form would give it: text (a number as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | Decimal) else value


def _json_id(item: object) -> object:
    if not isinstance(item, dict):
        return None
    data = item.get("data")
    return data.get("messageSid") if isinstance(data, dict) else item.get("MessageSid")


def decode_page(source: TwilioSource, body: bytes) -> tuple[list[Report], list[Rejection]]:
    """A page of the Messages list; inbound messages are no reports of ours and are skipped."""
    page = read_json(_page, body, "a Twilio Messages page", items="messages")
    statuses = StatusTable(source.name, STATUSES, source.status_map)

    def build(raw: msgspec.Raw) -> list[Report]:
        wire = _message.decode(raw, source.name)
        if (wire.direction or "outbound").startswith("inbound"):
            return []
        return [message_report(source.name, statuses, wire)]

    return judge_all(page.messages, build, "$.messages[{}]", wire_names=WIRE_NAMES)


def _error_code(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 9:
        raise OutOfBounds("error_id", f"{text[:20]!r} is not an error code")
    return int(text)


def raw_dlr_done(text: str | None) -> datetime | None:
    """RawDlrDoneDate, YYMMDDhhmm: the carrier's done date to the minute, read as UTC (Twilio
    says it has no time zone and carriers differ)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        raise OutOfBounds("done_at", f"{text[:20]!r} is not YYMMDDhhmm") from None


def callback_report(source: str, statuses: StatusTable, wire: StatusCallback) -> Report:
    number = rules.recipient(wire.To) if wire.To else None
    return rules.observation(
        source=source,
        message_id=wire.MessageSid,
        **statuses.state(wire.MessageStatus),
        status_name=wire.MessageStatus,
        status_description=wire.ChannelStatusMessage or None,
        done_at=moment("RawDlrDoneDate", raw_dlr_done(wire.RawDlrDoneDate)),
        error_id=_error_code(wire.ErrorCode),
        error_description=wire.ErrorMessage or None,
        to=number.to if number else None,
        sender=wire.From or None,
        sms_count=_segments(wire.NumSegments),
        text=wire.Body or None,
        operator=number.carrier if number else None,
    )


def message_report(source: str, statuses: StatusTable, wire: Message) -> Report:
    number = rules.recipient(wire.to) if wire.to else None
    parts = _segments(wire.num_segments)
    return rules.observation(
        source=source,
        message_id=wire.sid,
        **statuses.state(wire.status),
        status_name=wire.status,
        error_id=wire.error_code or None,
        error_description=wire.error_message or None,
        to=number.to if number else None,
        sender=wire.from_ or None,
        sent_at=moment("date_sent", rfc2822(wire.date_sent)),
        sms_count=parts,
        price_amount=price("price", per_part(wire.price, parts, source)),
        price_currency=currency("price_unit", wire.price_unit),
        text=wire.body or None,
        operator=number.carrier if number else None,
    )


def _segments(text: str | None) -> int | None:
    """num_segments; 0 (a Messaging Service has not chosen a sender yet) says nothing."""
    if not text:
        return None
    if not text.isdigit():
        raise OutOfBounds("sms_count", f"{text[:20]!r} is not a number of segments")
    return int(text) or None


def per_part(text: str | None, parts: int | None, source: str = "") -> Decimal | None:
    """Twilio's price for the whole message (negative: a charge) as a charge per part. A
    positive price is not what Twilio documents (its prices are charges): it is dropped and
    counted (dlr_dropped_values_total), and the report merged without it."""
    if text is None or text == "":
        return None
    try:
        total = -Decimal(text)
    except InvalidOperation:
        raise OutOfBounds("price_amount", f"{text[:20]!r} is not a number") from None
    if not total.is_finite():
        raise OutOfBounds("price_amount", f"{text[:20]!r} is not a number")
    if total < 0:
        metrics.DROPPED_VALUES.labels(source, "price").inc()
        return None
    if not parts:
        return total
    share = total / parts
    return share if share == share.quantize(_QUANTUM) else share.quantize(
        _QUANTUM, rounding=ROUND_HALF_EVEN)


def rfc2822(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise OutOfBounds("sent_at", f"{text[:40]!r} is not an RFC 2822 date") from None


def twilio_time(value: datetime) -> str:
    """A time as Twilio's helper libraries send it in a filter (ISO 8601, UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Signatures (X-Twilio-Signature), as Twilio's RequestValidator computes and checks them.
SIGNATURE_HEADER = "x-twilio-signature"


def sign(token: str, url: str, params: Mapping[str, str | Sequence[str]] | None) -> str:
    """X-Twilio-Signature for a request to `url` with form `params`: HMAC-SHA1 over the URL
    followed by each parameter's name and value, sorted, keyed by the Auth Token."""
    signed = url
    for name in sorted(set(params or {})):
        given = (params or {})[name]
        for value in sorted(set([given] if isinstance(given, str) else given)):
            signed += name + value
    digest = hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _with_and_without_port(url: str) -> Iterable[str]:
    """Twilio signs the URL with or without its port (its own checks accept both)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = "443" if parts.scheme == "https" else "80"
    bare = urlunsplit(parts._replace(netloc=host))
    with_port = urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default}"))
    return (url, bare, with_port) if url not in (bare, with_port) else (bare, with_port)


def signed_url(public_url: str, query: str) -> str:
    """The URL Twilio signs for a request to `public_url` that arrived with `query`: the
    public URL as configured, its query being the request's (which holds the public URL's
    own, and Twilio's `bodySHA256` after it)."""
    return urlunsplit(urlsplit(public_url)._replace(query=query, fragment=""))


def public_url_problem(public_url: str) -> str | None:
    """Why Twilio could never sign a request to this URL as configured, or None."""
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{public_url!r} is not an http(s) URL"
    if parts.fragment or public_url.endswith("#"):
        return "a URL with a #fragment: Twilio never sends the fragment, so it signs another URL"
    try:
        parts.port  # noqa: B018 (raises on a port that is not one)
    except ValueError:
        return f"{public_url!r} has no valid port"
    return None


def signature_valid(auth: TwilioSignatureAuth, query: str, body: bytes, signature: str,
                    content_type: str | None) -> bool:
    """Whether `signature` signs this request: the URL Twilio called (the configured public
    URL's scheme, host, port and path, with the query string the request came with, which
    holds the public URL's own query), and the form body's parameters (or, for a JSON
    body, its SHA-256 in the URL's `bodySHA256`). Compared in constant time against each
    configured token."""
    url = signed_url(auth.public_url, query)
    params: dict[str, list[str]] = {}
    body_hash = parse_qs(query).get("bodySHA256")
    if body_hash:
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(),
                                   body_hash[0].encode()):
            return False
    elif "json" in (content_type or "").lower():
        return False  # a JSON body is signed only through bodySHA256: else anyone's would pass
    else:
        try:
            for name, value in parse_qsl(body.decode(), keep_blank_values=True,
                                         max_num_fields=1000):
                params.setdefault(name, []).append(value)
        except (UnicodeDecodeError, ValueError):
            return False
    presented = signature.encode()
    ok = False
    for token in auth.auth_tokens:
        for candidate in _with_and_without_port(url):
            ok |= hmac.compare_digest(sign(token, candidate, params).encode(), presented)
    return ok


async def fetch(client: httpx.AsyncClient, source: TwilioSource, path_or_url: str,
                params: Mapping[str, str | int] | None = None,
                retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET from the REST API with HTTP Basic (the account, or an API key)."""
    user, secret = source.credentials()
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return await http.get(client, source.base_url, path_or_url,
                          {"Authorization": f"Basic {basic}", "Accept": "application/json"},
                          params, retry)


def messages_path(account_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"


def next_page(body: bytes) -> str | None:
    """The next page's URI (relative to the API's origin), or None on the last page (or
    an unreadable one); read as the page is, so a message nested too deeply is no end."""
    try:
        return read_json(_page, body, "a Twilio Messages page", items="messages"
                         ).next_page_uri or None
    except BadRequest:
        return None
