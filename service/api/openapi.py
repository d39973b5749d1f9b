"""What /schema says beyond what Litestar reads from the handlers' signatures: every
operation's real error statuses as RFC 9457 problems with their headers, the security
schemes, the request bodies of the two handlers that read their raw body themselves (so
that each report or registration is judged alone), and billing's CSV.

Litestar builds one `Operation` per route; a route's `operation_class` below adds the rest.
Schemas of bodies no handler signature names are written from msgspec structs, inline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from service.errors import PROBLEM_JSON
from service.providers import MAX_REPORTS
from service.schemas import doc

# --- errors --------------------------------------------------------------------------------


class FieldError(msgspec.Struct):
    """One parameter Litestar refused, with where it was."""

    message: str
    key: str | None = None
    source: str | None = None


class RejectedItem(msgspec.Struct):
    """One report or registration refused, with a reason naming its field."""

    index: int
    reason: str
    message_id: str | None = None


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details: every error answer of the service, including those of the
    HTTP layer (408, 431, 503) and of routing (404, 405)."""

    type: Annotated[str, doc("about:blank: the status says what kind of problem it is",
                             "about:blank")]
    title: Annotated[str, doc("The status's reason phrase", "Bad Request")]
    status: Annotated[int, doc("The HTTP status", 400)]
    detail: Annotated[str, doc("What went wrong, in words", "to: must be after from")]
    rejected: Annotated[list[RejectedItem] | None, doc(
        "Webhook and outbound 400: the first 100 items refused")] = None
    rejected_count: Annotated[int | None, doc("Webhook and outbound 400: how many were refused")
                              ] = None
    retry_after: Annotated[int | None, doc("503: seconds to wait, as in Retry-After", 5)] = None
    errors: Annotated[list[FieldError] | None, doc("400 from parameter validation: each "
                                                   "parameter refused")] = None


_DESCRIPTIONS = {
    400: "The request is malformed; `detail` says how",
    401: "Missing or wrong credentials; WWW-Authenticate says which are expected",
    403: "Credentials without the needed scope",
    404: "Not found",
    408: "The request did not arrive whole within DLR_REQUEST_TIMEOUT_S; the connection is "
         "closed",
    413: "Body larger than DLR_MAX_BODY_BYTES",
    431: "Request line and headers larger than DLR_MAX_HEADER_BYTES",
    500: "A bug",
    503: "The database is unavailable, or the server holds DLR_MAX_CONNECTIONS connections; "
         "retry after Retry-After seconds",
}
# Any request can meet these: the HTTP layer's limits, and the connection cap.
_ALWAYS = (408, 431, 503)


def errors(*statuses: int, **described: str) -> dict[int, ResponseSpec]:
    """Problem responses for `statuses` and those every request can get, described as
    usual or as `described` says (keyword `s404="..."` for 404)."""
    texts = {int(key.removeprefix("s")): text for key, text in described.items()}
    return {status: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON,
                                 generate_examples=False,
                                 description=texts.get(status, _DESCRIPTIONS[status]))
            for status in sorted({*statuses, *_ALWAYS, *texts})}


def _header(description: str, kind: OpenAPIType = OpenAPIType.STRING, *,
            required: bool = False) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=kind), description=description, required=required)


_RESPONSE_HEADERS = {
    "401": {"WWW-Authenticate": _header(
        'The credentials expected: `Bearer realm="dlr-reconciler"` on /v1; for a webhook '
        '`Basic`, `Token` (with the header it is read from) or `StandardWebhooks`',
        required=True)},
    "503": {"Retry-After": _header("Seconds to wait before retrying", OpenAPIType.INTEGER)},
}
_REQUEST_ID = _header("The request's X-Request-ID if it sent a usable one (1 to 128 of "
                      "A-Z a-z 0-9 . _ ~ : / + = -), else one made for it; on every log line "
                      "of the request", required=True)


@dataclasses.dataclass
class Documented(Operation):
    """Every operation: X-Request-ID on each answer, WWW-Authenticate on 401, Retry-After
    on 503."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), "X-Request-ID": _REQUEST_ID,
                                    **_RESPONSE_HEADERS.get(status, {})}


# --- security ------------------------------------------------------------------------------

SECURITY_SCHEMES = {
    "bearer": SecurityScheme(
        type="http", scheme="bearer",
        description="An API token of `[api] tokens`, with the scope an operation names: "
                    "`read` (messages, bulks, billing, changes, gaps), `write` (POST "
                    "/v1/outbound), `admin` (runs, inbox); and `pii`, which no operation "
                    "needs but which decides what `read` shows: with `pii` (or `admin`) "
                    "recipients' numbers (`to`) in full and message texts (`text`), without "
                    "it `to` masked (`+417******27`) and `text` null"),
    "webhookBasic": SecurityScheme(
        type="http", scheme="basic",
        description="A source whose `[sources.webhook]` has `basic`: its username and "
                    "password"),
    "webhookToken": SecurityScheme(
        type="apiKey", security_scheme_in="header", name="X-Webhook-Token",
        description="A source whose `[sources.webhook]` has `token`: its value, in the "
                    "header its `header` names (X-Webhook-Token unless set)"),
    "standardWebhooks": SecurityScheme(
        type="apiKey", security_scheme_in="header", name="webhook-signature",
        description="A source whose `[sources.webhook]` has `standard_webhooks`: "
                    "`webhook-signature: v1,<base64 HMAC-SHA256>` of "
                    '"{webhook-id}.{webhook-timestamp}.{body}" with the secret, sent with '
                    "the `webhook-id` and `webhook-timestamp` (seconds since 1970, within "
                    "`tolerance_s`) headers"),
    "twilioSignature": SecurityScheme(
        type="apiKey", security_scheme_in="header", name="X-Twilio-Signature",
        description="A Twilio source (`twilio_signature`): base64 HMAC-SHA1, with the auth "
                    "token, of its `public_url` followed by the sorted form parameters; for a "
                    "JSON body, of the URL alone, whose `bodySHA256` is the body's hex SHA-256"),
    "vonageSignature": SecurityScheme(
        type="apiKey", security_scheme_in="query", name="sig",
        description="A Vonage source (`vonage_signature`): the signed-webhook `sig` over "
                    "the receipt's parameters with one of its signature `secrets`, by its "
                    "`method`, its `timestamp` within `tolerance_s`"),
    "sinchSignature": SecurityScheme(
        type="apiKey", security_scheme_in="header", name="X-Sinch-Webhook-Signature",
        description="A source whose `[sources.webhook]` has `sinch_signature`: base64 "
                    'HMAC-SHA256, with the callback secret, of "{body}.{nonce}.{timestamp}", '
                    "sent with X-Sinch-Webhook-Signature-Nonce and -Timestamp (seconds since "
                    "1970, within `tolerance_s`)"),
}


def bearer(scope: str) -> list[SecurityRequirement]:
    return [{"bearer": [scope]}]


# One of a source's credentials; none for a source with `unauthenticated = true`.
WEBHOOK_SECURITY: list[SecurityRequirement] = [
    {"webhookBasic": []}, {"webhookToken": []}, {"standardWebhooks": []},
    {"twilioSignature": []}, {"vonageSignature": []}, {"sinchSignature": []}, {}]


# --- bodies no handler signature names -----------------------------------------------------

_SCHEMA_FIELDS = {field.metadata.get("alias", field.name): field.name
                  for field in dataclasses.fields(Schema)}


def inline_schema(kind: Any) -> Schema:
    """The JSON Schema msgspec makes for `kind`, as Litestar's Schema, every $ref inlined."""
    generated = msgspec.json.schema(kind)
    return _converted(generated, generated.pop("$defs", {}))


def _converted(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Schema:
    if "$ref" in node:
        return _converted(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    values: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            value = {name: _converted(v, defs) for name, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _converted(value, defs)
        elif key in ("anyOf", "oneOf", "allOf"):
            value = [_converted(v, defs) for v in value]
        elif key == "type":
            value = OpenAPIType(value) if isinstance(value, str) else [OpenAPIType(v) for v in value]
        values[_SCHEMA_FIELDS[key]] = value
    return Schema(**values)


class InfobipStatus(msgspec.Struct):
    groupId: int | None = None
    groupName: Annotated[str | None, doc("PENDING, UNDELIVERABLE, DELIVERED, EXPIRED, "
                                         "REJECTED, or a group Infobip adds")] = None
    id: int | None = None
    name: str | None = None
    description: str | None = None
    action: Annotated[str | None, doc("v3 only")] = None


class InfobipError(msgspec.Struct):
    groupId: int | None = None
    groupName: str | None = None
    id: Annotated[int | None, doc("0: no error")] = None
    name: str | None = None
    description: str | None = None
    permanent: bool | None = None


class InfobipPrice(msgspec.Struct):
    pricePerMessage: Annotated[float | str | None, doc("Per SMS part: a number or a decimal "
                                                       "string")] = None
    currency: str | None = None


class InfobipPlatform(msgspec.Struct):
    entityId: str | None = None
    applicationId: str | None = None


class InfobipReportV3(msgspec.Struct):
    """One delivery report as Infobip's SMS API v3 pushes it."""

    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    status: InfobipStatus
    bulkId: str | None = None
    to: str | None = None
    sender: str | None = None
    sentAt: Annotated[str | None, doc("With an offset", "2019-11-09T16:00:00.000+0000")] = None
    doneAt: Annotated[str | None, doc("With an offset", "2019-11-09T16:00:00.000+0000")] = None
    messageCount: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    mccMnc: str | None = None
    callbackData: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    price: InfobipPrice | None = None
    error: InfobipError | None = None
    platform: InfobipPlatform | None = None
    campaignReferenceId: str | None = None
    networkId: int | None = None


class InfobipReportV1(msgspec.Struct, rename={"from_": "from"}):
    """One delivery report as Infobip's SMS API v1 pushes it."""

    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    status: InfobipStatus
    bulkId: str | None = None
    to: str | None = None
    from_: str | None = None
    sentAt: Annotated[str | None, doc("With an offset", "2019-11-09T16:00:00.000+0000")] = None
    doneAt: Annotated[str | None, doc("With an offset", "2019-11-09T16:00:00.000+0000")] = None
    smsCount: Annotated[int, msgspec.Meta(ge=0, le=255)] | None = None
    mccMnc: str | None = None
    callbackData: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    price: InfobipPrice | None = None
    error: InfobipError | None = None
    entityId: str | None = None
    applicationId: str | None = None
    networkId: int | None = None


def _reports_schema() -> Schema:
    # by hand: msgspec takes a union of two Structs only when they are tagged
    return Schema(
        type=OpenAPIType.OBJECT, title="InfobipReports", required=["results"],
        description=f"A push: up to {MAX_REPORTS} reports, v3 and v1 shapes alike (even mixed)",
        properties={"results": Schema(type=OpenAPIType.ARRAY, max_items=MAX_REPORTS, items=Schema(
            any_of=[inline_schema(InfobipReportV3), inline_schema(InfobipReportV1)]))})


# Infobip's documentation example (tests/payloads/infobip/seed_002.json), in v1's shape
V1_EXAMPLE: dict[str, Any] = {"results": [
    {"bulkId": "BULK-ID-123-xyz", "messageId": "MESSAGE-ID-123-xyz", "to": "41793026727",
     "sentAt": "2019-11-09T16:00:00.000+0000", "doneAt": "2019-11-09T16:00:00.000+0000",
     "smsCount": 1, "price": {"pricePerMessage": 0.01, "currency": "EUR"},
     "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET",
                "description": "Message delivered to handset"},
     "error": {"groupId": 0, "groupName": "Ok", "id": 0, "name": "NO_ERROR",
               "description": "No Error", "permanent": False},
     "entityId": "my-entity-id", "applicationId": "my-application-id"},
    {"bulkId": "BULK-ID-123-xyz", "messageId": "12db39c3-7822-4e72-a3ec-c87442c0ffc5",
     "to": "41793026834", "sentAt": "2019-11-09T17:00:00.000+0000",
     "doneAt": "2019-11-09T17:00:00.000+0000", "smsCount": 1,
     "price": {"pricePerMessage": 0.01, "currency": "EUR"},
     "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET",
                "description": "Message delivered to handset"},
     "error": {"groupId": 0, "groupName": "Ok", "id": 0, "name": "NO_ERROR",
               "description": "No Error", "permanent": False},
     "entityId": "my-entity-id", "applicationId": "my-application-id"}]}
# The same message as v3 pushes it
V3_EXAMPLE: dict[str, Any] = {"results": [
    {"bulkId": "BULK-ID-123-xyz", "messageId": "MESSAGE-ID-123-xyz", "to": "41793026727",
     "sender": "InfoSMS", "sentAt": "2019-11-09T16:00:00.000+0000",
     "doneAt": "2019-11-09T16:00:00.000+0000", "messageCount": 1,
     "price": {"pricePerMessage": 0.01, "currency": "EUR"},
     "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET",
                "description": "Message delivered to handset", "action": "No action needed"},
     "error": {"groupId": 0, "groupName": "OK", "id": 0, "name": "NO_ERROR",
               "description": "No Error", "permanent": False},
     "platform": {"entityId": "my-entity-id", "applicationId": "my-application-id"},
     "campaignReferenceId": "summersale"}]}
XML_EXAMPLE = (
    "<reportResponse><results><result><bulkId>BULK-ID-123-xyz</bulkId>"
    "<messageId>MESSAGE-ID-123-xyz</messageId><to>41793026727</to>"
    "<sentAt>2019-11-09T16:00:00.000+0000</sentAt><doneAt>2019-11-09T16:00:00.000+0000</doneAt>"
    "<messageCount>1</messageCount><price><pricePerMessage>0.01</pricePerMessage>"
    "<currency>EUR</currency></price><status><groupId>3</groupId><groupName>DELIVERED</groupName>"
    "<id>5</id><name>DELIVERED_TO_HANDSET</name></status></result></results></reportResponse>")


def _webhook_body() -> RequestBody:
    xml = OpenAPIMediaType(
        schema=Schema(type=OpenAPIType.STRING, description=(
            "The same reports as XML: each `results` or `result` element holding a "
            "`messageId` is one report, its child elements named as the JSON keys; no DTD "
            "or entity")),
        examples={"v3": Example(summary="v3 layout", value=XML_EXAMPLE)})
    return RequestBody(required=True, description=(
        "Infobip's delivery reports, v3 or v1 shape; also taken as XML (a body starting with "
        "`<` is read as XML whatever its Content-Type)"), content={
        "application/json": OpenAPIMediaType(schema=_reports_schema(), examples={
            "v3": Example(summary="SMS API v3", value=V3_EXAMPLE),
            "v1": Example(summary="SMS API v1 (Infobip's documentation example)",
                          value=V1_EXAMPLE)}),
        "application/xml": xml, "text/xml": xml})


@dataclasses.dataclass
class ReceiveReports(Documented):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = _webhook_body()
