"""Infobip-compatible delivery reports: settings, wire structs, decoders and the pull client.

Reports arrive pushed (JSON or XML) and pulled from the one-time reports and the logs, in
v3 (`sender`, `messageCount`, `platform`) or the older v1 shape (`from`, `smsCount`); one
decoder reads them all. Status and error groups are read as plain values: new ids and
names appear over time.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

import httpx
import msgspec
from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

from service import rules
from service.errors import BadRequest, TooManyReports
from service.providers import (
    MAX_ID,
    MAX_REPORTS,
    MAX_VALUES,
    VALUES_PER_REPORT,
    AwareTime,
    Int32,
    Known,
    NumberText,
    OutOfBounds,
    Parts,
    Rejection,
    Report,
    WireStruct,
    currency,
    http,
    judge_all,
    moment,
    price,
    read_json,
)
from service.providers.base import Decoder, Interval, SourceBase
from service.providers.infobip import status as statuses


class InfobipSource(SourceBase, frozen=True, tag="infobip", tag_field="kind"):
    api_key: str | None = None  # pulls send "Authorization: App <key>"
    api_version: Literal[1, 3] = 3  # the /sms/3 endpoints, or the older /sms/1 ones
    # Each pass looks up in the logs the registered messages still open that it has not
    # looked up yet; every full_interval_s, all those still open of the last 48 hours.
    full_interval_s: Interval = 21600.0
    pull_interval_s: Interval = 60.0

    @property
    def pullable(self) -> bool:
        return bool(self.api_key)


NO_ERROR_ID = 0


# Text lengths are checked on the report built from these (rules.observation), under
# the names below; only `to` is bounded here, before it reaches the number cache.
class Status(WireStruct):
    groupId: Int32 | None = None
    groupName: str | None = None
    id: Int32 | None = None
    name: str | None = None
    description: str | None = None
    action: str | None = None


class Error(WireStruct):
    groupId: Int32 | None = None
    groupName: str | None = None
    id: Int32 | None = None
    name: str | None = None
    description: str | None = None
    permanent: bool | None = None


class Price(WireStruct):
    pricePerMessage: Decimal | None = None
    currency: str | None = None


class Platform(WireStruct):
    entityId: str | None = None
    applicationId: str | None = None


class Language(WireStruct):
    languageCode: str | None = None


class Content(WireStruct):
    """A log's content: text, or a binary message (read, not stored)."""

    text: str | None = None
    transliteration: str | None = None
    language: Language | None = None
    hex: str | None = None
    dataCoding: Int32 | None = None
    esmClass: Int32 | None = None


class SmsReport(WireStruct):
    """A delivery report (v3 and v1 push, /sms/3/reports, /sms/1/reports) or a log entry
    (/sms/3/logs, /sms/1/logs): v3 names and their v1 spellings side by side."""

    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
    status: Status
    bulkId: str | None = None
    to: NumberText | None = None
    destination: NumberText | None = None  # v3 logs say destination for to
    sender: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")  # v1
    sentAt: AwareTime | None = None
    doneAt: AwareTime | None = None
    messageCount: Parts | None = None
    smsCount: Parts | None = None  # v1
    mccMnc: str | None = None
    callbackData: str | None = None
    price: Price | None = None
    error: Error | None = None
    platform: Platform | None = None
    entityId: str | None = None  # v1: outside `platform`
    applicationId: str | None = None
    campaignReferenceId: str | None = None
    content: Content | None = None
    networkId: Int32 | None = None  # read, not stored: mcc_mnc names the network
    text: str | None = None  # v1 logs


class _Envelope(msgspec.Struct):
    results: list[msgspec.Raw]


class _MaybeId(msgspec.Struct):
    messageId: object = None


# Report fields by their names in an Infobip body, for rejection reasons.
WIRE_NAMES = {
    "message_id": "messageId", "bulk_id": "bulkId", "callback_data": "callbackData",
    "sender": "sender/from", "status": "status.groupName", "status_name": "status.name",
    "status_description": "status.description", "status_action": "status.action",
    "error_group_name": "error.groupName", "error_name": "error.name",
    "error_description": "error.description", "mcc_mnc": "mccMnc", "operator": "mccMnc",
    "price_currency": "price.currency", "price_amount": "price.pricePerMessage",
    "sms_count": "messageCount/smsCount", "sent_at": "sentAt", "done_at": "doneAt",
    "entity_id": "platform.entityId/entityId",
    "application_id": "platform.applicationId/applicationId",
    "campaign_reference_id": "campaignReferenceId", "text": "content.text",
}

_envelope = msgspec.json.Decoder(_Envelope)
_report = Known(SmsReport)
_maybe_id = msgspec.json.Decoder(_MaybeId)


def decoder(source: InfobipSource, url: str | None, content_type: str | None) -> Decoder:
    """Pushes and report or log pages all carry reports in one of the shapes above."""
    return lambda body: decode_reports(source.name, body, content_type, pushed=url is None)


def decode_reports(source: str, body: bytes, content_type: str | None = None, *,
                   pushed: bool = True) -> tuple[list[Report], list[Rejection]]:
    """Decode a body of reports, JSON or XML; a bad report is rejected alone, a bad body
    raises BadRequest (TooMany past MAX_REPORTS reports)."""
    if _is_xml(body, content_type):
        return judge_all(_xml_reports(body), lambda element: [to_report(source, _report.convert(
            _xml_value(element, 3), source))], "results[{}]",
            lambda element: _xml_value(element, 1).get("messageId"), WIRE_NAMES)
    envelope = read_json(_envelope, body, "an Infobip report body", items="results",
                         pushed=pushed)
    return judge_all(envelope.results,
                     lambda raw: [to_report(source, _report.decode(raw, source))],
                     "$.results[{}]", lambda raw: _maybe_id.decode(raw).messageId, WIRE_NAMES)


def _is_xml(body: bytes, content_type: str | None) -> bool:
    return "xml" in (content_type or "").lower() or body.lstrip()[:1] == b"<"


def _xml_reports(body: bytes) -> list[Element]:
    """The reports of an XML body: each `results` (or `result`) element holding a
    `messageId`, its children read by name as the JSON keys are (_xml_value)."""
    root = _xml_tree(body)
    reports = [element for element in root.iter() if _name(element) in ("results", "result")
               and any(_name(child) == "messageId" for child in element)]
    if not reports and _name(root) not in ("reportResponse", "SMSReportResponse", "results"):
        raise BadRequest(f"not an Infobip report body: XML root <{_name(root)[:40]}>")
    return reports


# An XML body is parsed a chunk at a time, counting as it goes, and stops at the first
# bound it breaks: the elements and attributes (MAX_VALUES, from the report cap), the depth
# (a report is read 3 levels down, its body wraps it in 2 or 3), and the bytes of one
# token (expat hands over a start tag only once it is whole, with all its attributes).
MAX_XML_DEPTH = 16
MAX_XML_TOKEN = 64 * 1024
XML_CHUNK = 64 * 1024


class _XmlTree:
    """Builds the element tree of an XML body (without attributes: no report reads them)
    with expat, within the bounds above. DTDs, entity declarations and external references
    are refused, as defusedxml refuses them."""

    def __init__(self) -> None:
        self.builder = TreeBuilder()
        self.parser = parser = expat.ParserCreate(namespace_separator="}")
        parser.buffer_text = True
        parser.ordered_attributes = True  # a list: cheaper to count than a dict to build
        parser.StartElementHandler = self.start
        parser.EndElementHandler = self.end
        parser.CharacterDataHandler = self.builder.data
        parser.StartDoctypeDeclHandler = _no_dtd
        parser.EntityDeclHandler = _no_entity
        parser.UnparsedEntityDeclHandler = _no_unparsed_entity
        parser.ExternalEntityRefHandler = _no_external_reference
        self.values = self.depth = 0

    def start(self, tag: str, attributes: list[str]) -> None:
        self.values += 1 + len(attributes) // 2
        if self.values > MAX_VALUES:
            raise TooManyReports(f"more than {MAX_VALUES} XML elements and attributes in one "
                                 f"body; at most {MAX_VALUES}: {VALUES_PER_REPORT} for each of "
                                 f"{MAX_REPORTS} reports")
        self.depth += 1
        if self.depth > MAX_XML_DEPTH:
            raise BadRequest(f"XML nested deeper than {MAX_XML_DEPTH} elements")
        self.builder.start(tag, {})

    def end(self, tag: str) -> None:
        self.depth -= 1
        self.builder.end(tag)


def _xml_tree(body: bytes) -> Element:
    tree = _XmlTree()
    try:
        for start in range(0, len(body), XML_CHUNK):
            tree.parser.Parse(body[start:start + XML_CHUNK], False)
            # where expat stands: the start of a token it has not seen whole yet
            if min(start + XML_CHUNK, len(body)) - tree.parser.CurrentByteIndex > MAX_XML_TOKEN:
                raise BadRequest(f"an XML token longer than {MAX_XML_TOKEN} bytes")
        tree.parser.Parse(b"", True)
        return tree.builder.close()
    except DefusedXmlException:  # its message is a repr: DTDForbidden(name='r', ...)
        raise BadRequest("invalid XML: a DTD, an entity or an external reference is not "
                         "accepted") from None
    except expat.ExpatError as exc:  # expat's words: "not well-formed (invalid token): …"
        raise BadRequest(f"invalid XML: {str(exc)[:200]}") from None
    except (LookupError, ValueError):  # a declared encoding expat cannot read: unknown (a
        # LookupError), multi-byte or not text (ValueError, UnicodeError)
        raise BadRequest("invalid XML: its encoding cannot be read (declare UTF-8, UTF-16 "
                         "or a one-byte encoding)") from None


def _no_dtd(name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool) -> None:
    raise DTDForbidden(name, sysid, pubid)


def _no_entity(name: str, is_parameter_entity: bool, value: str | None, base: str | None,
               sysid: str | None, pubid: str | None, notation_name: str | None) -> None:
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation_name)


def _no_unparsed_entity(name: str, base: str | None, sysid: str | None, pubid: str | None,
                        notation_name: str | None) -> None:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation_name)


def _no_external_reference(context: str, base: str | None, sysid: str | None,
                           pubid: str | None) -> int:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


def _name(element: Element) -> str:
    return element.tag.rpartition("}")[2] if isinstance(element.tag, str) else ""


def _xml_value(element: Element, depth: int, path: str = "") -> Any:
    """An element with children as a dict by their names (`depth` levels down), else its
    text; OutOfBounds for a name given twice among the children (as for a JSON key)."""
    if len(element) == 0 or depth == 0:
        return element.text.strip() if element.text and element.text.strip() else None
    value: dict[str, Any] = {}
    for child in element:
        name = _name(child)
        if name in value:
            raise OutOfBounds(f"{path}{name}", "given twice (a duplicate element)")
        value[name] = _xml_value(child, depth - 1, f"{path}{name}.")
    return value


def to_report(source: str, wire: SmsReport) -> Report:
    status, error, platform = wire.status, wire.error, wire.platform
    if error is not None and error.id == NO_ERROR_ID:
        error = None
    given = wire.to or wire.destination
    number = rules.recipient(given) if given else None
    parts = wire.messageCount if wire.messageCount is not None else wire.smsCount
    text = wire.content.text if wire.content else wire.text
    group = rules.status_group(status.groupName, status.groupId)
    return rules.observation(
        source=source,
        message_id=wire.messageId,
        status=group,
        final=statuses.final(group, status.name),
        status_id=status.id,
        status_name=status.name,
        status_description=status.description,
        status_action=status.action or None,
        done_at=moment("doneAt", wire.doneAt),
        error_group_id=error.groupId if error else None,
        error_group_name=error.groupName if error else None,
        error_id=error.id if error else None,
        error_name=error.name if error else None,
        error_permanent=error.permanent if error else None,
        error_description=(error.description or None) if error else None,
        to=number.to if number else None,
        bulk_id=wire.bulkId or None,
        sender=wire.sender or wire.from_ or None,
        callback_data=wire.callbackData or None,
        sent_at=moment("sentAt", wire.sentAt),
        sms_count=parts,
        price_amount=price("price.pricePerMessage",
                           wire.price.pricePerMessage if wire.price else None),
        price_currency=currency("price.currency", wire.price.currency if wire.price else None),
        mcc_mnc=wire.mccMnc or None,
        operator=rules.operator(wire.mccMnc, number.carrier if number else None),
        text=text or None,
        entity_id=(platform and platform.entityId) or wire.entityId or None,
        application_id=(platform and platform.applicationId) or wire.applicationId or None,
        campaign_reference_id=wire.campaignReferenceId or None,
    )


def infobip_time(moment: datetime) -> str:
    """A time as Infobip writes it: milliseconds, and an offset without a colon."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}{moment:%z}"


def _headers(source: InfobipSource) -> dict[str, str]:
    return {"Authorization": f"App {source.api_key}", "Accept": "application/json"}


async def fetch_reports_page(client: httpx.AsyncClient, source: InfobipSource, limit: int = 1000,
                             retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET /sms/3/reports (or /sms/1/reports): the next page of one-time reports (each is
    handed out only once)."""
    return await http.get(client, source.base_url, f"/sms/{source.api_version}/reports",
                          _headers(source), {"limit": limit}, retry)


async def fetch_logs(client: httpx.AsyncClient, source: InfobipSource,
                     params: dict[str, str | int],
                     retry: http.Retry = http.DEFAULT_RETRY) -> httpx.Response:
    """GET /sms/3/logs (or /sms/1/logs) with `params`: not consuming, kept for 48 hours."""
    return await http.get(client, source.base_url, f"/sms/{source.api_version}/logs",
                          _headers(source), params, retry)
