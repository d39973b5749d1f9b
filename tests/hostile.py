"""Hypothesis strategies for report bodies: good Infobip reports, and hostile ones that break
exactly one field in a way no provider should send (wrong type, too long, NUL, invalid
UTF-8, out-of-range dates, huge or negative prices and counts) or that are merely odd."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from service import providers
from tests.reports import report

# Wire field -> its limit; each must be accepted at the limit and rejected past it.
TEXT_LIMITS = {
    ("messageId",): providers.MAX_ID, ("bulkId",): providers.MAX_ID,
    ("to",): providers.MAX_TO, ("from",): providers.MAX_SENDER,
    ("mccMnc",): providers.MAX_NAME, ("callbackData",): providers.MAX_CALLBACK_DATA,
    ("status", "groupName"): providers.MAX_NAME, ("status", "name"): providers.MAX_NAME,
    ("status", "description"): providers.MAX_DESCRIPTION,
    ("error", "name"): providers.MAX_NAME, ("price", "currency"): 3,
}
TIMES = (("sentAt",), ("doneAt",))
BAD_TIMES = ["0001-01-01T00:00:00.000+0000", "9999-12-31T23:59:59.000-2359",
             "1999-12-31T23:59:59.999+0000", "2100-01-01T00:00:00.000+0000",
             "2026-13-45T00:00:00.000+0000", "2026-11-01T10:00:00", "yesterday", "",
             "2026-11-01T10:00:00.000+9900"]
# Raw JSON number text, placed into the body as the provider would write it.
BAD_PRICES = ["1e28", "1e27", "-0.01", "1000000", "1e-30", "0.00000000001",
              "12345678901234567890.123456789012345678901234567890", "1E+999999999", '"NaN"',
              '"Infinity"', '"-Infinity"', '"1e400"', "true", "[]", '{"a": 1}']
BAD_COUNTS = [-1, 256, 2**31, 2**63, 2**80, 1.5, "2"]
BAD_INTS = [2**31, -(2**31) - 1, 2**63, 2**100, 1.5, "7", [], {}]
WRONG_TYPES = [0, -1, 1.5, True, [], ["x"], {}, {"a": "b"}]


@dataclass
class Case:
    """One report broken in one field; `names` must appear in the rejection's reason."""

    path: tuple[str, ...]
    value: Any = None  # a JSON value, or None with `raw` set
    raw: bytes | None = None  # raw JSON text for the value (numbers, invalid UTF-8)
    names: str = ""

    def apply(self, good: dict[str, Any]) -> bytes:
        """The report's JSON with this field broken."""
        target = json.loads(json.dumps(good))
        if self.path[0] == "error":  # error id 0 means "no error": its fields go unread
            target["error"]["id"] = 1
        holder = target
        for key in self.path[:-1]:
            holder = holder.setdefault(key, {})
        holder[self.path[-1]] = "@@HOSTILE@@" if self.raw is not None else self.value
        text = json.dumps(target).encode()
        return text.replace(b'"@@HOSTILE@@"', self.raw) if self.raw is not None else text


def _case(path: tuple[str, ...], value: Any = None, raw: bytes | None = None) -> Case:
    return Case(path, value, raw, names=path[-1])


# A group name is read only when it is one of the five (else the group id decides), so its
# length and content are not judged.
UNREAD = {("status", "groupName")}


def hostile_cases() -> st.SearchStrategy[Case]:
    too_long = st.sampled_from(sorted(i for i in TEXT_LIMITS.items() if i[0] not in UNREAD)).flatmap(
        lambda item: st.text(min_size=1, max_size=40).map(
            lambda tail, item=item: _case(item[0], ("y" * item[1]) + tail)))
    wrong_type = st.tuples(st.sampled_from(sorted(TEXT_LIMITS)), st.sampled_from(WRONG_TYPES)
                           ).filter(lambda c: not isinstance(c[1], str)).map(lambda c: _case(*c))
    nul = st.sampled_from(sorted(set(TEXT_LIMITS) - {("price", "currency")} - UNREAD)).map(
        lambda p: _case(p, "ab\x00cd"))
    bad_utf8 = st.sampled_from(sorted(TEXT_LIMITS)).map(
        lambda p: Case(p, raw=b'"ok\xff\xfe\xc3(bad"', names="$.results["))
    times = st.tuples(st.sampled_from(TIMES), st.sampled_from(BAD_TIMES + WRONG_TYPES)).map(
        lambda c: _case(*c))
    prices = st.sampled_from(BAD_PRICES).map(
        lambda raw: _case(("price", "pricePerMessage"), raw=raw.encode()))
    counts = st.sampled_from(BAD_COUNTS).map(
        lambda v: _case(("smsCount",), v))
    ints = st.tuples(st.sampled_from([("status", "id"), ("status", "groupId"), ("error", "id"),
                                      ("error", "groupId")]),
                     st.sampled_from(BAD_INTS)).map(lambda c: _case(*c))
    status = st.sampled_from([None, "DELIVERED", 3, []]).map(lambda v: _case(("status",), v))
    currency = st.sampled_from(["EURO", "E1R", "€€€", "eu"]).map(
        lambda v: _case(("price", "currency"), v))
    return st.one_of(too_long, wrong_type, nul, bad_utf8, times, prices, counts, ints, status,
                     currency)


def odd_but_good() -> st.SearchStrategy[dict[str, Any]]:
    """Valid reports at the edges: values at their limits, any Unicode, unknown fields."""
    text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))
    return st.fixed_dictionaries({
        "callbackData": text.map(lambda t: (t * 4000)[:4000] if t else "c"),
        "bulkId": text.map(lambda t: (t * 255)[:255] if t else "b"),
        "from": text.map(lambda t: t[:64] or "InfoSMS"),
        "extra": st.recursive(st.integers() | text, lambda inner: st.lists(inner, max_size=3),
                              max_leaves=20),
        "smsCount": st.integers(0, 255),
        "price": st.fixed_dictionaries({
            "pricePerMessage": st.decimals(0, 999999, places=6).map(float),
            "currency": st.sampled_from(["EUR", "usd", "NPR"])}),
    })


def good_report(**extra: Any) -> dict[str, Any]:
    return report(f"good-{uuid.uuid4().hex}", **extra)


def page(reports: list[bytes]) -> bytes:
    return b'{"results":[' + b",".join(reports) + b"]}"
