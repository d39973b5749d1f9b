"""Pure reconciliation rules: status groups, normalisation and the merge. No IO.

The merge is a join over a total order of observations, so the merged row does not
depend on arrival order or on duplicates (commutative, associative, idempotent):

* the state (status, done_at, error, provider status) comes from the greatest
  observation by `order_key`: final above intermediate (a group past PENDING that its
  provider says may still change) above pending, then the later `done_at`, then the
  status id, then the hash of its state;
* each descriptive field (recipient, bulk, sender, parts, price, ...) is the greatest
  non-null value seen, so it fills in, is never blanked by a null, and resolves a
  disagreement between reports the same way whatever the order;
* a registration (POST /v1/outbound) ranks below every provider report: its state has the
  lowest hash, so it loses every tie with a provider's PENDING report, and the fields it
  supplies are marked in `Report.registered`, so that for each of them the greatest value
  by (not null, from a provider, value) wins: a registration only fills in what no
  provider said. Parts counted from the text (service.pricing) are marked the same way
  (`COUNTED`), below any part count a provider reported;
* `country` is derived from `to` (by `country`) and comes with the `to` that wins, so
  the two never disagree;
* the price is the greatest by (not null, reported, specificity of the rate, amount,
  currency, rate): a price a provider reported outranks every estimate from a rate card,
  and among estimates the one by the most specific rate stands.

`store.upsert_messages` mirrors these rules in SQL; tests hold the two to each other.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec
import phonenumbers
import phonenumbers.carrier

from service.providers import MAX_PARTS, Report, check

PENDING = "PENDING"
FINAL_GROUPS = frozenset({"DELIVERED", "UNDELIVERABLE", "EXPIRED", "REJECTED"})
INFOBIP_GROUPS = {1: PENDING, 2: "UNDELIVERABLE", 3: "DELIVERED", 4: "EXPIRED", 5: "REJECTED"}

_FIRST_STATE_FIELDS = (
    "status", "final", "status_id", "status_name", "status_description", "done_at",
    "error_group_id", "error_group_name", "error_id", "error_name", "error_permanent",
)
_LATER_STATE_FIELDS = ("status_action", "error_description")  # hashed only when given
STATE_FIELDS = (*_FIRST_STATE_FIELDS, *_LATER_STATE_FIELDS, "obs_hash")
DESCRIPTIVE_FIELDS = (
    "to", "bulk_id", "sender", "callback_data", "sent_at", "sms_count", "mcc_mnc",
    "operator", "text", "entity_id", "application_id", "campaign_reference_id",
)
PRICE_FIELDS = ("price_amount", "price_currency", "price_estimate", "price_rate")
# The descriptive fields a registration can supply, by their bit in Report.registered.
REGISTERED = {"to": 1, "bulk_id": 2, "callback_data": 4, "sent_at": 8}
COUNTED = 16  # sms_count was counted from the text, not reported
# Fields ranked by (not null, from a provider, value), by their bit in Report.registered.
UNREPORTED = {**REGISTERED, "sms_count": COUNTED}
FILLED_FIELDS = tuple(f for f in DESCRIPTIVE_FIELDS if f not in UNREPORTED)
# Fields derived from another one: each comes with the value of that field the merge keeps.
DERIVED = {"country": "to"}
# A registration's state hash: the lowest there is (see order_key).
REGISTRATION_HASH = bytes(16)
# What an observation's hash covers: its message and its state (see state_hash).
_HASHED_AT = tuple(Report.__struct_fields__.index(f) for f in
                   ("source", "message_id", *_FIRST_STATE_FIELDS))
_LATER_HASHED_AT = tuple(Report.__struct_fields__.index(f) for f in _LATER_STATE_FIELDS)
_NEVER = datetime.min.replace(tzinfo=UTC)


def status_group(group_name: str | None, group_id: int | None) -> str:
    """The common status group for a provider's group name/id; unknown names are kept."""
    name = (group_name or "").strip().upper()
    if name == PENDING or name in FINAL_GROUPS:
        return name
    if group_id in INFOBIP_GROUPS:
        return INFOBIP_GROUPS[group_id]
    return name or PENDING


def is_final(group: str) -> bool:
    return group in FINAL_GROUPS


# A message's number recurs in each of its reports, which mostly come within minutes of
# each other. The cache holds at most about 4 MB.
NUMBER_CACHE_SIZE = 16384
# The number types phonenumbers.carrier.name_for_number gives a carrier for.
_CARRIER_TYPES = frozenset({phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.PAGER,
                            phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE})


class Recipient(NamedTuple):
    to: str  # E.164 whenever the country is known, else the input stripped (so it shows)
    carrier: str | None  # the network a mobile number was first allocated to


# What a phone number may be written with; anything else is not a phone number.
_DIALLABLE = re.compile(r"[(]?\+?[0-9 ()./-]+")
_SEPARATORS = re.compile(r"[^0-9]")
_E164_DIGITS = 15


@functools.lru_cache(maxsize=NUMBER_CACHE_SIZE)
def recipient(number: str, default_region: str | None = None) -> Recipient:
    """A recipient's E.164 form and original carrier, from one parse and one match of the
    number's type (the costliest step of decoding a report).

    Digits without '+' are read as international unless a default region is given
    (Infobip sends "41793026727"; DiceSMS sends national numbers for its region). A number
    whose range the numbering metadata does not know (yet) is still E.164 when its country
    is known: '+' and its digits when given in international form, the region's country
    code and its national number otherwise; its carrier is unknown then. Only text that is
    no phone number, or whose country cannot be told, stays as given.
    """
    raw = number.strip()
    plus = raw.lstrip("(").startswith("+")
    international = plus or not default_region
    text = raw if plus or default_region else f"+{raw}"
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return Recipient(raw, None)
    kind = phonenumbers.number_type(parsed)
    if kind != phonenumbers.PhoneNumberType.UNKNOWN:  # what is_valid_number tests
        carrier = (phonenumbers.carrier.name_for_valid_number(parsed, "en")
                   if kind in _CARRIER_TYPES else "")
        e164 = str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
        _found_country(e164, parsed)
        return Recipient(e164, str(carrier) or None)
    if not _DIALLABLE.fullmatch(raw):
        return Recipient(raw, None)
    if international:  # as given: the metadata may strip what it takes for a trunk prefix
        digits = _SEPARATORS.sub("", raw)
    else:
        digits = str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))[1:]
    if len(digits) > _E164_DIGITS:
        return Recipient(raw, None)
    return Recipient(f"+{digits}", None)


# The country of each E.164 number recipient() read, from the parse it made: country() then
# needs no parse of its own for the numbers of the reports being decoded.
_COUNTRIES: dict[str, str | None] = {}


def _found_country(e164: str, parsed: phonenumbers.PhoneNumber) -> None:
    if len(_COUNTRIES) >= 4 * NUMBER_CACHE_SIZE:
        _COUNTRIES.clear()
    _COUNTRIES[e164] = _region(parsed)


def _region(parsed: phonenumbers.PhoneNumber) -> str | None:
    region = phonenumbers.region_code_for_number(parsed)
    return str(region) if region and region.isalpha() and region != UNKNOWN_REGION else None


def e164(number: str, default_region: str | None = None) -> str:
    """E.164 for a recipient whose country is known, else the input stripped."""
    return recipient(number, default_region).to


UNKNOWN_REGION = "ZZ"  # phonenumbers' region of nothing (its non-geographic one is "001")


_UNSEEN = object()


def country(to: str | None) -> str | None:
    """The country (ISO 3166 alpha-2) of a stored recipient: phonenumbers'
    region_code_for_number of an E.164 `to`; None when it cannot tell (text that is no E.164
    number, a non-geographic number, a range no region sharing its calling code claims).
    A function of `to` alone, so that it follows whichever `to` the merge keeps."""
    if to is None:
        return None
    found = _COUNTRIES.get(to, _UNSEEN)
    return _country(to) if found is _UNSEEN else found  # type: ignore[return-value]


@functools.lru_cache(maxsize=NUMBER_CACHE_SIZE)
def _country(to: str) -> str | None:
    if not to.startswith("+") or not (to[1:].isascii() and to[1:].isdigit()):
        return None
    try:
        parsed = phonenumbers.parse(to)
    except phonenumbers.NumberParseException:
        return None
    return _region(parsed)


# Networks by MCC+MNC where we bill by network: the one name `operator` gives each, whoever
# reports the message. The rest fall back to the number's carrier, as phonenumbers names it.
NETWORKS = {"42901": "Nepal Telecom", "42902": "Ncell", "42904": "Smart Telecom"}
# How phonenumbers' carrier data (carrier.name_for_number) names those networks, by the
# region of the number: each name maps to its MCC+MNC, so to the name above. A test walks
# phonenumbers' names for each region here, so a name it adds or respells is not missed.
CARRIERS = {"NP": {"Nepal Telecom": "42901", "NCell": "42902", "Smart Telecom": "42904"}}
_MCC_MNC = re.compile(r"[0-9]{5,6}")


def _folded(name: str) -> str:
    """A name without case, spaces or punctuation: "NCELL", "N-Cell" and "Ncell" are one."""
    return "".join(c for c in name.casefold() if c.isalnum())


# (region, folded name) -> MCC+MNC, for every spelling of a network above in its region;
# (None, folded name) for those only one region's networks use, for a number of no known
# region.
_NAMED: dict[tuple[str | None, str], str] = {
    (region, _folded(spelling)): code
    for region, names in CARRIERS.items() for name, code in names.items()
    for spelling in (name, NETWORKS[code])}
_NAMED |= {(None, folded): code for (region, folded), code in _NAMED.items()
           if [f for _, f in _NAMED].count(folded) == 1}


@functools.lru_cache(maxsize=4096)
def network_name(name: str | None, region: str | None) -> str | None:
    """One name per network: a network of NETWORKS, however its numbers' region spells it
    (phonenumbers' carrier name, a provider's, in any case and punctuation), or given as
    its MCC+MNC, is named as NETWORKS names it; so is one of a number of unknown region
    that no other region's network is called. Any other name is kept as given."""
    if name is None:
        return None
    code = name.replace("-", "").strip()
    if _MCC_MNC.fullmatch(code) and code in NETWORKS:
        return NETWORKS[code]
    found = _NAMED.get((region, _folded(name)))
    return NETWORKS[found] if found is not None else name


def operator(mcc_mnc: str | None, carrier: str | None) -> str | None:
    """The network a message went to: from the provider's MCC+MNC when we know it, else
    the number's original carrier (a ported number keeps its old carrier's name).
    `observation` then names it as NETWORKS does (network_name)."""
    if mcc_mnc and (name := NETWORKS.get(mcc_mnc.replace("-", "").strip())):
        return name
    return carrier


def utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def money(value: Decimal | None) -> Decimal | None:
    """One spelling per price ("0.010" and "0.01" are the same price). Exact for prices,
    whose digits the bounds keep well within the decimal context's 28; sums of any size
    are written by `amount_text`."""
    if value is None:
        return None
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if normal == normal.to_integral() else normal


def amount_text(value: Decimal) -> str:
    """A sum of money as an exact decimal string, however many digits it has (no decimal
    context: it would round past 28 digits)."""
    text = format(value, "f")
    return text.rstrip("0").removesuffix(".") if "." in text else text


def observation(**fields: Any) -> Report:
    """A Report with its final flag, canonical price, country (from `to`), network name
    and state hash filled in; raises OutOfBounds naming the first field outside its bound."""
    # A final group, unless the provider's table says this status is intermediate
    fields["final"] = is_final(fields["status"]) and fields.get("final", True)
    fields["country"] = country(fields.get("to"))
    fields["operator"] = network_name(fields.get("operator"), fields["country"])
    if parts := fields.get("part_ids"):  # a set, and at least as many parts as it holds
        fields["part_ids"] = union_parts(parts, "")
        fields["sms_count"] = max(fields.get("sms_count") or 0, len(fields["part_ids"].split()))
    fields["price_amount"] = money(fields.get("price_amount"))
    if fields["price_amount"] is None:  # a currency alone prices nothing
        fields["price_currency"] = fields["price_rate"] = None
        fields["price_estimate"] = 0
    fields["obs_hash"] = b""
    draft = Report(**fields)
    check(draft)
    return msgspec.structs.replace(draft, obs_hash=state_hash(draft))


def registration(*, source: str, message_id: str, to: str | None, bulk_id: str | None,
                 callback_data: str | None, sent_at: datetime | None) -> Report:
    """What a registration of a message says about it: PENDING, with the lowest state hash
    (so a provider's PENDING report outranks it), and its fields marked as registered."""
    fields = {"to": to, "bulk_id": bulk_id, "callback_data": callback_data, "sent_at": sent_at}
    report = observation(source=source, message_id=message_id, status=PENDING, **fields)
    mask = sum(bit for name, bit in REGISTERED.items() if fields[name] is not None)
    return msgspec.structs.replace(report, obs_hash=REGISTRATION_HASH, registered=mask)


def state_hash(report: Report) -> bytes:
    """What identifies an observation: its message and its state. Descriptive fields merge
    on their own, so a report seen with and without its bulk id (a DiceSMS listing joined
    to its batch, or not) is one observation, and replaying it changes nothing. State
    fields added later count only when given, so a report kept before them keeps its hash."""
    values = msgspec.structs.astuple(report)
    hashed = [values[i] for i in _HASHED_AT]
    if any(values[i] is not None for i in _LATER_HASHED_AT):
        hashed += [values[i] for i in _LATER_HASHED_AT]
    content = msgspec.msgpack.encode(hashed)
    return hashlib.sha256(content).digest()[:16]


def order_key(report: Report) -> tuple[bool, bool, datetime, int, bytes]:
    """The total order of observations; the greatest one carries the merged state: final
    above an intermediate status past PENDING (Infobip's DELIVERED_TO_OPERATOR) above
    PENDING, then the later done_at, the status id, the hash."""
    done = report.done_at if report.done_at is not None else _NEVER
    status_id = report.status_id if report.status_id is not None else -1
    return (report.final, report.status != PENDING, done, status_id, report.obs_hash)


def _greatest(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def union_parts(a: str | None, b: str | None) -> str | None:
    """The union of two part sets, kept to its MAX_PARTS least ids (so a join still)."""
    if a is None or b is None:
        return a if b is None else b
    return " ".join(sorted(set(a.split()) | set(b.split()))[:MAX_PARTS])


def merge(current: Report | None, incoming: Report) -> Report:
    """Join two observations of one message (or a merged row and an observation)."""
    if current is None:
        return incoming
    winner = incoming if order_key(incoming) > order_key(current) else current
    fill = {f: _greatest(getattr(current, f), getattr(incoming, f)) for f in FILLED_FIELDS}
    mask = 0
    for f, bit in UNREPORTED.items():
        old, new = getattr(current, f), getattr(incoming, f)
        old_bit, new_bit = current.registered & bit, incoming.registered & bit
        # by (not null, from a provider, value); store._upsert_messages says it the same way
        wins = new is not None and (old is None or (not new_bit, new) > (not old_bit, old))
        fill[f], flag = (new, new_bit) if wins else (old, old_bit)
        mask |= flag
        for derived in [d for d, source in DERIVED.items() if source == f]:
            fill[derived] = getattr(incoming if wins else current, derived)
    # Parts: the distinct parts seen (one receipt per part) count as a reported part count,
    # ranked with the others, so that the count stays a join of what was seen.
    parts = fill["part_ids"] = union_parts(current.part_ids, incoming.part_ids)
    if parts:
        seen, counted = len(parts.split()), mask & COUNTED
        if fill["sms_count"] is None or (True, seen) > (not counted, fill["sms_count"]):
            fill["sms_count"] = seen
            mask &= ~COUNTED
    fill["registered"] = mask
    prices = [price_key(r) for r in (current, incoming) if r.price_amount is not None]
    if prices:
        _, estimate, amount, currency, rate = max(prices)
        fill |= {"price_amount": amount, "price_currency": currency or None,
                 "price_estimate": estimate, "price_rate": rate or None}
    else:
        fill |= {"price_amount": None, "price_currency": None, "price_estimate": 0,
                 "price_rate": None}
    return msgspec.structs.replace(winner, **fill)


def price_key(report: Report) -> tuple[bool, int, Decimal, str, str]:
    """The order of prices (store._upsert_messages says it the same way): reported above
    estimated, then the more specific rate, then the value."""
    assert report.price_amount is not None
    return (report.price_estimate == 0, report.price_estimate, report.price_amount,
            report.price_currency or "", report.price_rate or "")


def merge_all(reports: Iterable[Report]) -> list[Report]:
    """Fold reports per (source, message_id), sorted by that key (a stable lock order)."""
    merged: dict[tuple[str, str], Report] = {}
    for report in reports:
        key = (report.source, report.message_id)
        merged[key] = merge(merged.get(key), report)
    return [merged[key] for key in sorted(merged)]
