"""What a message costs when its provider does not say: rate cards, and parts counted from
the text. Pure, no IO.

A source's rate card (`rates` in its TOML table, or a CSV file it names) holds prices per
part, each for a network (`mcc_mnc` or `operator`), a number `prefix`, a `country`, or
everything, each in force from a UTC date on. A message is estimated by the most specific
rate in force when it was sent: network, then the longest prefix, then country, then
everything. `specificity` orders them, and the merge ranks an estimate by it, below every
price a provider reported (rules.merge), so that a later report always wins and the
estimate made with most knowledge of the message stands among estimates.

Parts follow GSM 03.38 (3GPP TS 23.038): a text in the GSM 7-bit alphabet takes 160
septets in one part and 153 per part once split, an extension-table character (`€`, `[`,
...) two septets, never split across parts; any other text is UCS-2: 70 code units in one
part, 67 per part, a character outside the BMP two units (a surrogate pair). The alphabet
is gsm0338's (a maintained codec of the standard's tables), read from its codec once.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import gsm0338
import msgspec
import phonenumbers

from service import rules
from service.providers import MAX_PARTS, OutOfBounds, Report, currency, price

# --- parts from the text ---------------------------------------------------------------------

GSM_SINGLE, GSM_PART = 160, 153  # septets
UCS2_SINGLE, UCS2_PART = 70, 67  # UTF-16 code units


def _alphabet() -> dict[str, int]:
    """Each character the GSM 7-bit default alphabet and its extension table hold, with the
    septets it takes, as gsm0338's codec decodes and encodes them."""
    codec = gsm0338.Codec()
    escape = 0x1B
    found: dict[str, int] = {}
    encodings = [bytes([b]) for b in range(128)] + [bytes([escape, b]) for b in range(128)]
    for encoded in encodings:
        try:
            text, _ = codec.decode(encoded)
        except UnicodeDecodeError:  # a byte after the escape that the extension lacks
            continue
        if len(text) == 1:
            found.setdefault(text, len(codec.encode(text)[0]))
    return found


_SEPTETS = _alphabet()
GSM_ALPHABET = frozenset(_SEPTETS)
GSM_EXTENSION = frozenset(c for c, septets in _SEPTETS.items() if septets == 2)


def is_gsm(text: str) -> bool:
    """Whether `text` goes as GSM 7-bit (else as UCS-2)."""
    return GSM_ALPHABET.issuperset(text)


def parts(text: str) -> int:
    """The SMS parts `text` takes (1 for an empty text; at most MAX_PARTS, the most one
    concatenated message can have)."""
    if is_gsm(text):
        units = len(text) + sum(map(text.count, GSM_EXTENSION))
        single, per_part = GSM_SINGLE, GSM_PART
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, per_part = UCS2_SINGLE, UCS2_PART
    if units <= single:
        return 1
    if units == len(text):  # no two-unit character: no boundary to keep whole
        return min(math.ceil(units / per_part), MAX_PARTS)
    count, used = 1, 0
    for character in text:
        width = 2 if character in GSM_EXTENSION or ord(character) > 0xFFFF else 1
        if used + width > per_part:
            count, used = count + 1, width
        else:
            used += width
    return min(count, MAX_PARTS)


# --- rate cards --------------------------------------------------------------------------------

# How specific a rate is: the merge ranks estimates by it, so keep the order.
EVERYTHING, COUNTRY, PREFIX, OPERATOR, MCC_MNC = 1, 2, 3, 40, 41  # a prefix: 3 + its digits
CRITERIA = ("mcc_mnc", "operator", "prefix", "country")
CSV_COLUMNS = ("price", "currency", *CRITERIA, "from")
_MCC_MNC = re.compile(r"^[0-9]{5,6}$")
_PREFIX = re.compile(r"^\+?[0-9]{1,15}$")
_ALWAYS = datetime.min.replace(tzinfo=UTC)
MAX_RATES = 100_000


class Rate(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One line of a rate card as written (TOML table or CSV row); `compile` checks it."""

    price: str | int | float  # per part; a float is refused (binary, not the decimal written)
    currency: str
    mcc_mnc: str | None = None
    operator: str | None = None
    prefix: str | None = None
    country: str | None = None
    from_: date | None = msgspec.field(default=None, name="from")  # in force from (UTC)


class Applied(NamedTuple):
    """An estimate: a price per part, its currency, how specific its rate is, and the rate
    (what it applies to and from when, as JSON: what a message's `price.rate` shows)."""

    amount: Decimal
    currency: str
    specificity: int
    rate: str


class RateProblem(ValueError):
    """A rate that cannot be used: `key` names its field ("" for the whole rate)."""

    def __init__(self, key: str, problem: str, index: int | None = None,
                 same_as: int | None = None) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key, self.problem, self.index, self.same_as = key, problem, index, same_as


_rate_json = msgspec.json.Encoder(order="sorted")


class _Entry(NamedTuple):
    start: datetime
    applied: Applied


def _entry(rate: Rate) -> tuple[str, str | None, _Entry]:
    """(criterion, its key, the entry) for one rate; RateProblem for a bad one."""
    if isinstance(rate.price, float):
        raise RateProblem("price", f"write it as a string (\"{rate.price}\"): a TOML float is "
                          "binary, not the decimal written")
    try:
        amount = price("price", Decimal(str(rate.price)))
    except InvalidOperation:
        raise RateProblem("price", "not a decimal number") from None
    except OutOfBounds as exc:
        raise RateProblem("price", exc.problem) from None
    assert amount is not None
    try:
        code = currency("currency", rate.currency)
    except OutOfBounds:
        raise RateProblem("currency", "not a three-letter currency code (ISO 4217)") from None
    if code is None:
        raise RateProblem("currency", "give the three-letter currency code (ISO 4217)")
    given = [(name, getattr(rate, name)) for name in CRITERIA if getattr(rate, name) is not None]
    if len(given) > 1:
        raise RateProblem(given[1][0], f"a rate applies to one of {', '.join(CRITERIA)} "
                          "(or, with none, to everything)")
    shown: dict[str, str] = {}
    criterion, key, specificity = "everything", None, EVERYTHING
    if given:
        criterion, value = given[0]
        shown[criterion] = value
        if criterion == "mcc_mnc":
            key, specificity = value.replace("-", "").strip(), MCC_MNC
            if not _MCC_MNC.match(key):
                raise RateProblem("mcc_mnc", "not an MCC and MNC (5 or 6 digits, e.g. 42902)")
        elif criterion == "operator":
            key, specificity = value.strip().casefold(), OPERATOR
            if not key:
                raise RateProblem("operator", "empty")
        elif criterion == "prefix":
            if not _PREFIX.match(value.strip()):
                raise RateProblem("prefix", "not a number prefix in international form (+ "
                                  "and up to 15 digits, e.g. +97798)")
            key = value.strip().removeprefix("+")
            specificity = PREFIX + len(key)
        else:
            key, specificity = value.strip().upper(), COUNTRY
            if key not in phonenumbers.SUPPORTED_REGIONS:
                raise RateProblem("country", "not a region code (ISO 3166, e.g. NP)")
    start = _ALWAYS
    if rate.from_ is not None:
        start = datetime(rate.from_.year, rate.from_.month, rate.from_.day, tzinfo=UTC)
        shown["from"] = rate.from_.isoformat()
    money = rules.money(amount)
    assert money is not None
    applied = Applied(money, code, specificity, _rate_json.encode(shown).decode())
    return criterion, key, _Entry(start, applied)


class Card:
    """A source's rates, indexed for a look-up per message (dictionary probes only)."""

    def __init__(self, rates: Sequence[Rate]) -> None:
        """Raises RateProblem naming the first bad rate by its `index`."""
        self.size = len(rates)
        self._by: dict[str, dict[str | None, list[_Entry]]] = {
            name: {} for name in (*CRITERIA, "everything")}
        seen: dict[tuple[str, str | None, datetime], int] = {}
        for index, rate in enumerate(rates):
            try:
                criterion, key, entry = _entry(rate)
            except RateProblem as exc:
                raise RateProblem(exc.key, exc.problem, index) from None
            if (earlier := seen.get((criterion, key, entry.start))) is not None:
                raise RateProblem("", "applies to what an earlier rate applies to, from the "
                                  "same date; keep one", index, same_as=earlier)
            seen[(criterion, key, entry.start)] = index
            self._by[criterion].setdefault(key, []).append(entry)
        for table in self._by.values():
            for entries in table.values():
                entries.sort(key=lambda e: e.start, reverse=True)  # newest first
        self._prefix_lengths = sorted({len(k) for k in self._by["prefix"] if k}, reverse=True)
        self._countries = bool(self._by["country"])

    def __bool__(self) -> bool:
        return self.size > 0

    def rate(self, sent_at: datetime, to: str | None, mcc_mnc: str | None,
             operator: str | None) -> Applied | None:
        """The most specific rate in force at `sent_at` for a message to `to` over that
        network, or None when the card has none for it."""
        by = self._by
        if mcc_mnc and by["mcc_mnc"] and (found := _in_force(
                by["mcc_mnc"].get(mcc_mnc.replace("-", "").strip()), sent_at)):
            return found
        if operator and by["operator"] and (found := _in_force(
                by["operator"].get(operator.strip().casefold()), sent_at)):
            return found
        if to and to.startswith("+") and to[1:].isdigit():
            prefixes = by["prefix"]
            for length in self._prefix_lengths:
                if length < len(to) and (found := _in_force(prefixes.get(to[1:1 + length]),
                                                            sent_at)):
                    return found
            if self._countries and (found := _in_force(by["country"].get(country_of(to)),
                                                       sent_at)):
                return found
        return _in_force(by["everything"].get(None), sent_at)


def _in_force(entries: list[_Entry] | None, sent_at: datetime) -> Applied | None:
    """The newest of `entries` (newest first) in force at `sent_at`."""
    for entry in entries or ():
        if entry.start <= sent_at:
            return entry.applied
    return None


def country_of(number: str) -> str | None:
    """The region (ISO 3166) of an E.164 number (`+` and digits), from its country code
    and, where several regions share one (+1, +7, +44...), its range."""
    if not number[1:].isdigit():
        return None
    for length in (1, 2, 3):  # calling codes are prefix-free
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(number[1:1 + length]))
        if regions:
            return str(regions[0]) if len(regions) == 1 and regions[0] != NON_GEOGRAPHIC \
                else _shared_country_of(number)
    return None


NON_GEOGRAPHIC = "001"  # phonenumbers' region of +800, +808, +870...


@functools.lru_cache(maxsize=rules.NUMBER_CACHE_SIZE)
def _shared_country_of(number: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if (region is None or region == phonenumbers.UNKNOWN_REGION) and parsed.country_code:
        region = phonenumbers.region_code_for_country_code(parsed.country_code)
    return None if region in (None, phonenumbers.UNKNOWN_REGION, NON_GEOGRAPHIC) else str(region)


def read_csv(text: str) -> list[tuple[int, Rate]]:
    """Rates from CSV, each with its line: a header row naming columns of CSV_COLUMNS (price
    and currency required), then a rate per row; empty cells are absent. RateProblem names
    the line (and the column) of what is not a rate, never what the file holds there: the
    file may be anything (a mistyped path), and the message goes to the log."""
    reader = csv.reader(io.StringIO(text))
    try:
        columns = next(reader, [])
        for number, column in enumerate(columns, 1):
            if column not in CSV_COLUMNS:
                raise RateProblem("", f"line 1, column {number}: not a rate card column; "
                                  f"columns are {', '.join(CSV_COLUMNS)}")
            if (first := columns.index(column) + 1) != number:
                raise RateProblem("", f"line 1: two {column} columns (columns {first} and "
                                  f"{number})")
        for needed in ("price", "currency"):
            if needed not in columns:
                raise RateProblem("", f"line 1: no {needed} column")
        rates: list[tuple[int, Rate]] = []
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(rates) >= MAX_RATES:
                raise RateProblem("", f"line {line}: more than {MAX_RATES} rates")
            if len(row) > len(columns):
                raise RateProblem("", f"line {line}: more cells than columns")
            values: dict[str, Any] = {k: v.strip() for k, v in zip(columns, row, strict=False)
                                      if v.strip()}
            try:
                rates.append((line, msgspec.convert(values, Rate)))
            except msgspec.ValidationError as exc:
                raise RateProblem("", f"line {line}, {_cell_problem(exc)}") from None
    except csv.Error:  # a NUL, a quote left open: the reader's message may quote the file
        raise RateProblem("", f"line {reader.line_num}: not a CSV row") from None
    return rates


def _cell_problem(exc: msgspec.ValidationError) -> str:
    """Which column of a row msgspec refused, in words (its message is not for people)."""
    column = str(exc).rpartition("`$.")[2].rstrip("`")
    if column == "from":
        return "column from: not a date (YYYY-MM-DD)"
    return f"column {column}: not a value it takes" if column in CSV_COLUMNS else "not a rate"


# --- estimates -----------------------------------------------------------------------------------

class Cards:
    """Compiled cards by the rates they were built from (kept alive here, so an id is never
    reused while its card is kept): a card is compiled once per configuration, not per body.
    A reload compiles its cards in a thread of its own while the loop looks cards up, hence
    the lock (held for the dictionary only, not while compiling)."""

    def __init__(self, keep: int = 64) -> None:
        self._cards: dict[int, tuple[object, Card]] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def __call__(self, rates: Sequence[Rate]) -> Card:
        with self._lock:
            found = self._cards.get(id(rates))
        if found is not None and found[0] is rates:
            return found[1]
        card = Card(rates)
        with self._lock:
            if len(self._cards) >= self._keep:
                self._cards.pop(next(iter(self._cards)))
            self._cards[id(rates)] = (rates, card)
        return card


card_of = Cards()


def estimate(report: Report, card: Card | None) -> Report:
    """`report` with what its provider did not say filled in: its parts counted from its
    text, and its price estimated by `card` (when it was sent is known). The merge ranks
    both below what any provider reports."""
    changes: dict[str, Any] = {}
    if report.sms_count is None and report.text is not None:
        changes["sms_count"] = parts(report.text)
        changes["registered"] = report.registered | rules.COUNTED
    if card and report.price_amount is None and report.sent_at is not None:
        applied = card.rate(report.sent_at, report.to, report.mcc_mnc, report.operator)
        if applied is not None:
            changes |= {"price_amount": applied.amount, "price_currency": applied.currency,
                        "price_estimate": applied.specificity, "price_rate": applied.rate}
    return msgspec.structs.replace(report, **changes) if changes else report


def estimate_all(reports: Iterable[Report], card: Card | None) -> list[Report]:
    return [estimate(r, card) for r in reports]


def reestimate(row: Any, card: Card | None) -> tuple[Any, ...] | None:
    """A stored message's estimated fields (store.ESTIMATED: sms_count, registered and the
    price) as its text and `card` give them now, or None when they stand. `row` holds what
    the merge stored: a reported price or part count is never touched; `text` is given only
    where parts are counted."""
    was = (row.sms_count, row.registered, row.price_amount, row.price_currency,
           row.price_estimate, row.price_rate)
    sms_count, registered = was[0], was[1]
    if row.text is not None and (sms_count is None or registered & rules.COUNTED):
        sms_count, registered = parts(row.text), registered | rules.COUNTED
    price = was[2:]
    if price[0] is None or price[2] > 0:
        applied = card.rate(row.sent_at, row.to, row.mcc_mnc, row.operator) \
            if card and row.sent_at is not None else None
        price = (applied.amount, applied.currency, applied.specificity, applied.rate) \
            if applied is not None else (None, None, 0, None)
    now = (sms_count, registered, *price)
    return now if now != was else None
