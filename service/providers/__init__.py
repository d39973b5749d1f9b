"""The neutral report every provider module produces, and the bounds every stored value keeps.

Each report is judged alone: a provider module decodes its items with `judge_all`,
so a report that breaks a bound (or a decoder) is rejected with a reason naming its field,
and the reports beside it are still merged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from service import metrics
from service.errors import BadRequest, TooManyReports

log = logging.getLogger(__name__)

# Bounds, from the providers' own limits. No stored value can break an index entry (about
# 2.7 KB), a sum or a date conversion.
MAX_ID = 255  # message and bulk ids: Infobip's are tens of characters
MAX_CALLBACK_DATA = 4000  # Infobip echoes callbackData of up to 4000 characters
MAX_SENDER = 64  # alphanumeric senders are 11 characters, numeric ones 16 digits
MAX_TO = 32  # E.164 is 15 digits; slack for '+', spaces and national prefixes
MAX_NAME = 255  # status and error names, group names, MCC+MNC, operators
MAX_DESCRIPTION = 2000
MAX_TEXT = 40_000  # 255 parts of 160 characters
MAX_PARTS = 255  # the concatenation counter in an SMS header is one byte
MAX_PRICE = Decimal(1_000_000)  # per part, in any currency: no SMS costs this much
PRICE_DECIMALS = 10
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)  # exclusive
MAX_REASON = 500  # characters of one rejection's reason
MAX_REJECTIONS_LISTED = 100  # an answer or an inbox reason lists the first ones and a count
# Reports one body holds, whatever its kind and shape: Infobip pushes up to 2000 (its
# maxBucketSize), pulled pages hold up to 1000. A push or a registration body past it is
# refused (413); a pulled page past it is merged in parts of at most this many (judge_all).
MAX_REPORTS = 2500
# What a body's structure may hold, JSON values or XML elements and attributes alike: a
# report has some 40 (Infobip's, every field given), so this leaves room for new fields and
# bounds what a hostile body of many tiny or nested values costs to parse.
VALUES_PER_REPORT = 64
MAX_VALUES = MAX_REPORTS * VALUES_PER_REPORT

IdText = Annotated[str, msgspec.Meta(max_length=MAX_ID)]
NumberText = Annotated[str, msgspec.Meta(max_length=MAX_TO)]
NameText = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
MessageText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Parts = Annotated[int, msgspec.Meta(ge=0, le=MAX_PARTS)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_PRICE_QUANTUM = Decimal(1).scaleb(-PRICE_DECIMALS)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """One observation of one message's state, normalised (E.164, aware UTC, Decimal).

    `obs_hash` identifies the observation (its message and state); build reports with
    `service.rules.observation()`, which fills it in and checks every bound.
    """

    source: str
    message_id: str
    status: str
    final: bool
    obs_hash: bytes
    status_id: int | None = None
    status_name: str | None = None
    status_description: str | None = None
    done_at: datetime | None = None
    error_group_id: int | None = None
    error_group_name: str | None = None
    error_id: int | None = None
    error_name: str | None = None
    error_permanent: bool | None = None
    to: str | None = None
    bulk_id: str | None = None
    sender: str | None = None
    callback_data: str | None = None
    sent_at: datetime | None = None
    sms_count: int | None = None
    price_amount: Decimal | None = None
    price_currency: str | None = None
    mcc_mnc: str | None = None
    operator: str | None = None
    text: str | None = None
    status_action: str | None = None  # what the provider advises doing about the status
    error_description: str | None = None
    entity_id: str | None = None  # the sender's platform entity and application (Infobip)
    application_id: str | None = None
    campaign_reference_id: str | None = None
    # The message's parts seen, by their own ids, sorted and space-separated: a set, so that
    # one receipt per part (Vonage) merges into one message of that many parts.
    part_ids: str | None = None
    registered: int = 0  # bits of the fields no provider reported (rules.UNREPORTED)
    # How specific the rate card's rate that estimated the price was (service.pricing);
    # 0: the provider reported it (or there is none). `price_rate`: that rate, as JSON.
    price_estimate: int = 0
    price_rate: str | None = None
    # ISO 3166 alpha-2 of `to`, derived from it by rules.observation (rules.country)
    country: str | None = None


class Rejection(msgspec.Struct, frozen=True):
    """A report the decoder could not use: where it was in the body and why."""

    index: int
    reason: str
    message_id: str | None = None


class OutOfBounds(ValueError):
    """A value no provider sends, in `field` (a Report field, or a wire name)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


# Longest value per text field of a Report, checked on every report built.
TEXT_LIMITS = {
    "message_id": MAX_ID, "bulk_id": MAX_ID, "callback_data": MAX_CALLBACK_DATA,
    "sender": MAX_SENDER, "to": MAX_TO, "status": MAX_NAME, "status_name": MAX_NAME,
    "status_description": MAX_DESCRIPTION, "error_group_name": MAX_NAME,
    "error_name": MAX_NAME, "price_currency": 3, "mcc_mnc": MAX_NAME, "operator": MAX_NAME,
    "text": MAX_TEXT, "status_action": MAX_DESCRIPTION, "error_description": MAX_DESCRIPTION,
    "entity_id": MAX_ID, "application_id": MAX_ID, "campaign_reference_id": MAX_ID,
    "part_ids": MAX_PARTS * (MAX_ID + 1),
}
INT_LIMITS = {"status_id": (-(2**31), 2**31 - 1), "error_group_id": (-(2**31), 2**31 - 1),
              "error_id": (-(2**31), 2**31 - 1), "sms_count": (0, MAX_PARTS)}


def moment(field: str, value: datetime | None) -> datetime | None:
    """An aware time as UTC, within 2000-2099 once converted."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise OutOfBounds(field, "needs a time zone offset")
    try:
        converted = value.astimezone(UTC)
    except OverflowError:
        raise OutOfBounds(field, "out of range once converted to UTC") from None
    if not EARLIEST <= converted < LATEST:
        raise OutOfBounds(field, f"{converted.date().isoformat()} is outside 2000-01-01..2099-12-31")
    return converted


def price(field: str, value: Decimal | None) -> Decimal | None:
    """A price per part: finite, 0 <= price < MAX_PRICE, at most PRICE_DECIMALS decimals."""
    if value is None:
        return None
    if not value.is_finite() or value < 0 or value >= MAX_PRICE:
        raise OutOfBounds(field, f"not a price between 0 and {MAX_PRICE}")
    if value != value.quantize(_PRICE_QUANTUM):
        raise OutOfBounds(field, f"more than {PRICE_DECIMALS} decimals")
    return value


def currency(field: str, value: str | None) -> str | None:
    """An ISO 4217 code, upper case."""
    if value is None or value == "":
        return None
    if not _CURRENCY.match(value):
        raise OutOfBounds(field, f"{value[:10]!r} is not a three-letter currency code")
    return value.upper()


# Positions in a Report's tuple form: check() runs for every report, on the hot path.
_AT = {name: i for i, name in enumerate(Report.__struct_fields__)}
_TEXT_AT = tuple((_AT[name], name, limit) for name, limit in TEXT_LIMITS.items())
_INT_AT = tuple((_AT[name], name, low, high) for name, (low, high) in INT_LIMITS.items())
_TIME_AT = ((_AT["sent_at"], "sent_at"), (_AT["done_at"], "done_at"))


def check(report: Report) -> None:
    """Raise OutOfBounds naming the first field of `report` outside its bound."""
    values = msgspec.structs.astuple(report)
    for at, name, limit in _TEXT_AT:
        text = values[at]
        if text is None:
            continue
        if len(text) > limit:
            raise OutOfBounds(name, f"longer than {limit} characters")
        if "\x00" in text:  # PostgreSQL text cannot hold NUL
            raise OutOfBounds(name, "contains a NUL character")
    if not report.message_id:
        raise OutOfBounds("message_id", "empty")
    for at, name, low, high in _INT_AT:
        number = values[at]
        if number is not None and not low <= number <= high:
            raise OutOfBounds(name, f"{number} is outside {low}..{high}")
    for at, name in _TIME_AT:  # decoders made them UTC with moment(); here: the range
        if values[at] is not None and not EARLIEST <= values[at] < LATEST:
            raise OutOfBounds(name, "outside 2000-01-01..2099-12-31")
    price("price_amount", report.price_amount)
    if report.price_currency is not None and not _CURRENCY.match(report.price_currency):
        raise OutOfBounds("price_currency", "not a three-letter currency code")


Item = TypeVar("Item")
Out = TypeVar("Out")
Wire = TypeVar("Wire", bound=msgspec.Struct)
Page = TypeVar("Page")
_generic = msgspec.json.Decoder(float_hook=Decimal)  # numbers exactly as written
_exact = msgspec.json.Encoder(decimal_format="number")


class WireStruct(msgspec.Struct, forbid_unknown_fields=True):
    """A provider's wire struct: every field it documents is named, so that a new one is
    counted (Known) instead of dropped unseen."""


class Known(Generic[Wire]):
    """Decodes a provider's item into `kind`, a WireStruct whose nested Structs all forbid
    unknown fields, and counts every field it does not know.

    An item of known fields only takes the one strict decode. Otherwise the item is read
    generically, each field the structs do not know is counted for the source (by its
    dotted path, e.g. `status.reason`: metrics.count_unknown_field) and dropped, and the
    rest decoded strictly. A provider may add fields at any time: this way none is dropped
    without being counted.
    """

    def __init__(self, kind: type[Wire]) -> None:
        self.kind = kind
        self._strict = msgspec.json.Decoder(kind)
        fields = _field_tree(msgspec.inspect.type_info(kind))
        assert fields is not None, "a Struct"
        self.fields = fields

    def decode(self, raw: bytes, source: str) -> Wire:
        unique_keys(raw)
        try:
            return self._strict.decode(raw)
        except msgspec.ValidationError as exc:
            if "unknown field" not in str(exc):
                raise
        generic = _generic.decode(raw)
        _drop_unknown(generic, self.fields, "", source)
        return self._strict.decode(_exact.encode(generic))

    def convert(self, item: dict[str, Any], source: str) -> Wire:
        """The same for an item already read (from XML or a form: every value text)."""
        _drop_unknown(item, self.fields, "", source)
        return msgspec.convert(item, self.kind, strict=False)


# --- reading a JSON body within bounds -------------------------------------------------------

# A string, or from a quote to the end when it is never closed: from any quote it matches,
# so that a search never starts again inside a string (else "\\"\\"\\"… would cost n²).
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*\\?(?:(")|\Z)')  # group 1: closed
# What shapes JSON: a run of openers or of closers, a comma or a colon, or a quote (the
# string it opens is stepped over whole); numbers, literals and spaces are stepped over.
_STRUCTURE = re.compile(rb'[\[{]+|[\]}]+|[,:"]')
_SPACE = re.compile(rb"[ \t\r\n]*")
_NESTING = re.compile(rb'[\[{]+|[\]}]+|"')
_plain = msgspec.json.Decoder()
_plain_out = msgspec.json.Encoder()
_members = msgspec.json.Decoder(dict[str, msgspec.Raw])
_raw = msgspec.json.Decoder(msgspec.Raw)
ROOT = "$"  # read_json's `items` for a body that is itself the list of items


def check_values(body: bytes) -> None:
    """Refuse (413) a JSON body of more than MAX_VALUES values, or twice as many strings
    (keys and values), before decoding it: counted from its commas, brackets, braces and
    quotes, those inside strings told apart only when the quick count is past a bound. A
    value takes two bytes at least, so a small body is not counted."""
    if len(body) < 2 * MAX_VALUES:
        return
    sure = body.count(b'"') - body.count(b'\\"')  # a quote after no backslash: a string's
    if sure > 4 * MAX_VALUES:
        raise _too_many_values()
    maybe = sure + body.count(b'\\\\"')  # and those after an escaped backslash
    if _values(body) <= MAX_VALUES and maybe <= 4 * MAX_VALUES:
        return
    bare, strings = _STRING.subn(b"", body)  # exactly: the strings left out, and counted
    if _values(bare) > MAX_VALUES or strings > 2 * MAX_VALUES:
        raise _too_many_values()


def _too_many_values() -> TooManyReports:
    return TooManyReports(f"more than {MAX_VALUES} JSON values or {2 * MAX_VALUES} strings in "
                          f"one body; at most {MAX_VALUES} values: {VALUES_PER_REPORT} for "
                          f"each of {MAX_REPORTS} reports")


def _values(text: bytes) -> int:
    """At least as many as the values of JSON `text` (each array and object one too)."""
    return text.count(b",") + text.count(b"[") + text.count(b"{") + 1


def read_json(decoder: msgspec.json.Decoder[Page], body: bytes, what: str, *,
              items: str | None = None, pushed: bool = False) -> Page:
    """Decode `body`, `what` it should be, as a whole: BadRequest when it is not one, or
    when its top level names a key twice; a push past MAX_VALUES values is refused first.

    `items` names the field of the list of raw items (or ROOT): an item nested too deeply
    for msgspec does not refuse the body, the list is then cut into its items without
    recursion, and that item alone is rejected when it is judged."""
    if pushed:
        check_values(body)
    try:
        page = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"not {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        if items is None or not _SURROGATE.search(body):
            raise BadRequest(f"invalid JSON: {exc}") from None
        # JSON msgspec will not read, a lone surrogate (\ud83d, half an emoji cut short):
        # the item holding it is rejected alone when it is judged
        return _cut_out(decoder, body, what, items, unreadable=True)
    except RecursionError:
        if items is None:
            raise BadRequest("invalid JSON: nested too deeply") from None
        return _cut_out(decoder, body, what, items)
    _top_level_unique(body)
    return page


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a UTF-16 surrogate written as an escape


def _top_level_unique(body: bytes) -> None:
    """BadRequest if the body is an object that names a key twice. Its colons are those of
    its members (one each, and those in the keys) and those inside its values; a key given
    twice adds one, unless a colon is written as an escape (then the keys are read)."""
    text = body.lstrip()
    if text[:1] != b"{":
        return
    try:
        members = _members.decode(text)
    except msgspec.DecodeError as exc:  # a key the decoder skipped unread, not UTF-8, say
        raise BadRequest(f"invalid JSON: {exc}") from None
    colons = len(members) + sum(key.count(":") for key in members) + sum(
        bytes(value).count(b":") for value in members.values())
    if colons == text.count(b":") and not _escaped_colon(text):
        return
    try:
        _keys(text, _split(text, 0)[0])
    except (ValueError, msgspec.DecodeError) as exc:  # msgspec read it: never, but say so
        raise BadRequest(f"invalid JSON: {str(exc)[:200]}") from None


def _escaped_colon(text: bytes) -> bool:
    """Whether `text` may write a colon as an escape (\\u003a): a backslash is looked for
    first, the quicker search, as most bodies have none."""
    return b"\\" in text and b"\\u003" in text


def _keys(text: bytes, members: list[tuple[int, int, int]]) -> list[str]:
    """The keys of an object's members as `_split` found them; BadRequest for one twice."""
    keys: list[str] = []
    for start, colon, _ in members:
        if colon < 0:
            raise ValueError(f"a member without a key at {start}")
        key = msgspec.json.decode(text[start:colon].rstrip(), type=str)
        if key in keys:
            raise BadRequest(f"duplicate key {key[:60]!r} in the JSON body")
        keys.append(key)
    return keys


def _cut_out(decoder: msgspec.json.Decoder[Page], body: bytes, what: str, items: str,
             unreadable: bool = False) -> Page:
    """The body decoded with its list of items cut out by hand (one of them nests deeper
    than msgspec goes, or holds what it will not read: `unreadable`): the rest decoded from
    the body with an empty list in its place, each item given raw. The items are checked
    to be JSON, but for their depth (and, `unreadable`, what msgspec will not read)."""
    text = body.rstrip()
    try:
        start = _skip_space(text, 0)
        if items == ROOT:
            at, (listed, end) = start, _split(text, start)
        else:
            members, _, inner = _split_into(text, start, items)
            _keys(text, members)
            if inner is None:
                raise BadRequest(f"not {what}: no {items!r} list")
            at, listed, end = inner
        raws = [msgspec.Raw(text[first:last]) for first, _, last in listed]
        tolerated = (RecursionError, msgspec.DecodeError) if unreadable else (RecursionError,)
        for raw in raws:
            with contextlib.suppress(*tolerated):  # that one is rejected when judged
                _raw.decode(raw)
        rest = decoder.decode(text[:at] + b"[]" + text[end:])
    except (ValueError, msgspec.DecodeError) as exc:  # msgspec.DecodeError: invalid JSON
        raise BadRequest(f"invalid JSON: {str(exc)[:200]}") from None
    except msgspec.ValidationError as exc:
        raise BadRequest(f"not {what}: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply outside the items") from None
    if items == ROOT:
        return raws  # type: ignore[return-value]
    return msgspec.structs.replace(rest, **{items: raws})  # type: ignore[type-var]


Member = tuple[int, int, int]  # start, colon (an object's member; else -1), end


def _split(text: bytes, start: int) -> tuple[list[Member], int]:
    """The members of the array or object opening at `start`, without recursion, and where
    it ends. Whitespace around a member is left out; ValueError where it is no JSON."""
    members, end, _ = _split_into(text, start, None)
    return members, end


def _split_into(text: bytes, start: int, into: str | None,
                ) -> tuple[list[Member], int, tuple[int, list[Member], int] | None]:
    """_split, and for an object whose member `into` is an array, that array's start, its
    members and its end: found in the same pass, each byte read once."""
    if text[start:start + 1] not in (b"[", b"{"):
        raise ValueError(f"expected an array or an object at {start}")
    members: list[Member] = []
    inner = None
    depth, begin, colon, at = 0, start + 1, -1, start
    decoded: list[str] = []  # the body as latin-1 text, once a string holds an escape
    while True:
        # inside a member only its brackets and strings matter: commas and colons are skipped
        if (token := (_STRUCTURE if depth <= 1 else _NESTING).search(text, at)) is None:
            break
        found, after = token.span()
        first = text[found]
        if first == 0x22:  # '"'
            at = _string_end(text, found, decoded)
            continue
        at = after
        if first in b"[{":
            depth += after - found
        elif first in b"]}":
            if depth > after - found:
                depth -= after - found
                continue
            end = found + depth - 1  # the closing bracket of the one at `start`
            if text[end] != text[start] + 2:  # ']' is '[' + 2, '}' is '{' + 2
                raise ValueError(f"mismatched bracket at {end}")
            if members or _skip_space(text, begin) < end:
                members.append(_member(text, begin, colon, end))
            return members, end + 1, inner
        elif first == 0x2C:  # ','
            members.append(_member(text, begin, colon, found))
            begin, colon = after, -1
        elif colon >= 0:
            raise ValueError(f"a second colon at {found}")
        else:  # ':'
            colon = found
            value = _skip_space(text, after)
            if into is not None and inner is None and text[value:value + 1] == b"[" and \
                    msgspec.json.decode(text[begin:colon].strip(), type=str) == into:
                listed, at = _split(text, value)
                inner = (value, listed, at)
    raise ValueError("unterminated array or object")


def _string_end(text: bytes, start: int, decoded: list[str]) -> int:
    """Where the string opening at `start` ends (after its closing quote): the next quote
    when no backslash comes before it (memchr), else as json's C scanner reads it."""
    end = text.find(b'"', start + 1)
    if end > 0 and text.find(b"\\", start + 1, end) < 0:
        return end + 1
    if not decoded:  # latin-1: one character a byte, so positions stay those of the bytes
        decoded.append(text.decode("latin-1"))
    return int(scanstring(decoded[0], start + 1, False)[1])  # ValueError if never closed


def _skip_space(text: bytes, at: int) -> int:
    """The first position from `at` on that is no JSON whitespace."""
    space = _SPACE.match(text, at)
    return space.end() if space else at


def _member(text: bytes, begin: int, colon: int, end: int) -> Member:
    """A member found between `begin` and `end`, whitespace left out."""
    first, last = _skip_space(text, begin), end
    while last > first and text[last - 1] in b" \t\r\n":
        last -= 1
    if first >= last:
        raise ValueError(f"a member missing at {begin}")
    return first, colon, last


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its members, keys repeated as they were written."""


def unique_keys(raw: bytes | msgspec.Raw) -> None:
    """Raise OutOfBounds naming a key that an object of the JSON value `raw` gives twice, at
    any depth (msgspec keeps the last one silently; another reader may keep the first).

    Its colons are one per member and those inside strings: decoded and written again,
    it loses one per key given twice. A colon written as an escape (\\u003a) could make up
    for one, so then the members are read one by one. Decoding errors are left to the
    decoder."""
    text = bytes(raw)
    try:
        value = _plain.decode(text)
    except msgspec.DecodeError:  # a number out of a float's range, say
        value = _generic.decode(text)
    if text.count(b":") == _plain_out.encode(value).count(b":") and not _escaped_colon(text):
        return
    path = _duplicate(json.loads(text, object_pairs_hook=_Pairs), [])
    if path is not None:
        raise OutOfBounds(path, "given twice (a duplicate key)")


def _duplicate(value: Any, path: list[str]) -> str | None:
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, _ in value:
            if key in seen:
                return "".join([*path, key]).lstrip(".")
            seen.add(key)
        for key, inner in value:
            if (found := _duplicate(inner, [*path, key, "."])) is not None:
                return found
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            if (found := _duplicate(inner, [*path[:-1], f"[{index}]", "."])) is not None:
                return found
    return None


FieldTree = dict[str, "FieldTree | None"]


def _field_tree(info: msgspec.inspect.Type) -> FieldTree | None:
    """The wire names a Struct knows, each with its own tree when it holds Structs."""
    if isinstance(info, msgspec.inspect.StructType):
        return {f.encode_name: _field_tree(f.type) for f in info.fields}
    if isinstance(info, msgspec.inspect.UnionType):
        trees = [t for t in map(_field_tree, info.types) if t is not None]
        return trees[0] if trees else None
    if isinstance(info, msgspec.inspect.ListType):
        return _field_tree(info.item_type)
    return None


def _drop_unknown(value: Any, known: FieldTree, path: str, source: str) -> None:
    if isinstance(value, list):
        for item in value:
            _drop_unknown(item, known, path, source)
        return
    if not isinstance(value, dict):
        return
    for name in list(value):
        if name not in known:
            metrics.count_unknown_field(source, f"{path}{name}")
            del value[name]
        elif (inner := known[name]) is not None:
            _drop_unknown(value[name], inner, f"{path}{name}.", source)


Judged = tuple[list[Out], list[Rejection]]


class TooMany(TooManyReports):
    """More than MAX_REPORTS reports in one body. A push or a registration is refused with
    it (413); a pulled page, which a provider may send that large, is read in `parts`
    instead, each a call judging at most MAX_REPORTS reports (ingest.merge_body)."""

    def __init__(self, count: int, what: str, parts: Sequence[Callable[[], Judged[Any]]]) -> None:
        super().__init__(f"{count} {what} in one body; at most {MAX_REPORTS} {what} a body")
        self.parts = parts


def judge_all(items: Sequence[Item], build: Callable[[Item], list[Out]], path: str,
              message_id: Callable[[Item], object] = lambda _: None,
              wire_names: Mapping[str, str] | None = None, *,
              weigh: Callable[[Item], int] | None = None, what: str = "reports",
              capped: bool = True) -> Judged[Out]:
    """`build` each item into reports, judging each item alone: one that fails is a
    Rejection with the reason, and never stops the others.

    `path` locates item i in its body (`$.results[{}]`), and `wire_names` gives the body's
    name of a Report field, for the field a reason names. A failure that is not about the
    input is a bug: logged, and the item rejected all the same.

    At most MAX_REPORTS reports are judged in one call: past it (an item yields `weigh(item)`
    reports, else one) this raises TooMany, whose parts judge the items a slice at a time.
    Items that yield no report (`capped` False) are not counted.
    """
    judge = functools.partial(_judge, build, path, message_id, wire_names or {})
    if not capped or (len(items) <= MAX_REPORTS and weigh is None):
        return judge(items)
    slices, count = _slices(items, weigh or (lambda _: 1))
    if len(slices) <= 1:
        return judge(items)
    raise TooMany(count, what, [functools.partial(judge, items[start:stop], start)
                                for start, stop in slices])


def _judge(build: Callable[[Item], list[Out]], path: str, message_id: Callable[[Item], object],
           names: Mapping[str, str], items: Sequence[Item], first: int = 0) -> Judged[Out]:
    """judge_all's work, on `items` that start at index `first` of their body."""
    reports: list[Out] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items, first):
        where = path.format(index)
        try:
            reports += build(item)
            continue
        except msgspec.ValidationError as exc:  # wrong type or shape: msgspec names the path
            said = str(exc)  # "… - at `$.status`", or no path when the item itself is wrong
            reason = said.replace("`$", f"`{where}") if "`$" in said else f"{where}: {said}"
        except msgspec.DecodeError as exc:  # invalid JSON or UTF-8 inside this report
            reason = f"{where}: {in_words(exc)}"
        except OutOfBounds as exc:
            reason = f"{where}.{names.get(exc.field, exc.field)}: {exc.problem}"
        except RecursionError:  # msgspec stops at Python's recursion limit
            reason = f"{where}: nested too deeply"
        except (ValueError, OverflowError, ArithmeticError) as exc:
            reason = f"{where}: unusable value ({in_words(exc)})"
        except Exception:
            log.exception("decoder failed on one report")
            reason = f"{where}: could not be decoded (kept for replay after a fix)"
        rejections.append(Rejection(index, reason[:MAX_REASON], _printable_id(message_id, item)))
    return reports, rejections


def in_words(exc: BaseException) -> str:
    """Why a library could not read a body or a value, in words: msgspec says what it
    expected and where; other libraries' messages (Python's own wording, reprs such as
    `[<class 'decimal.ConversionSyntax'>]`) are not for the people who read a problem."""
    if isinstance(exc, msgspec.MsgspecError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeError):
        return "not UTF-8 text"
    if isinstance(exc, OverflowError):
        return "a number or a date out of range"
    if isinstance(exc, ArithmeticError):
        return "not a number that can be read"
    return "not a value that can be read"


def _slices(items: Sequence[Item], weigh: Callable[[Item], int]) -> tuple[list[tuple[int, int]], int]:
    """Consecutive slices of `items` of at most MAX_REPORTS reports each (an item alone may
    weigh more: a slice of its own), and the reports they hold."""
    slices: list[tuple[int, int]] = []
    start = held = count = 0
    for index, item in enumerate(items):
        weight = max(1, weigh(item))
        if held and held + weight > MAX_REPORTS:
            slices.append((start, index))
            start, held = index, 0
        held += weight
        count += weight
    if held:
        slices.append((start, len(items)))
    return slices, count


def _printable_id(message_id: Callable[[Item], object], item: Item) -> str | None:
    try:
        found = message_id(item)
    except Exception:
        return None
    return found if isinstance(found, str) and len(found) <= MAX_ID else None
