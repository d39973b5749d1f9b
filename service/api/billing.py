"""GET /v1/billing/summary: messages, parts and money per group, exact, as JSON or CSV."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import zoneinfo
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.datastructures import State
from litestar.openapi.spec import (
    Example,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Schema,
)
from litestar.params import FromQuery, QueryParameter
from litestar.response import Response

from service import db, store
from service.api.auth import require_scope
from service.api.openapi import Documented, bearer, errors, inline_schema
from service.errors import BadRequest
from service.rules import amount_text
from service.schemas import TIME, doc, query_time

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str | None) -> str:
    """A group key as CSV text no spreadsheet runs: a leading quote makes a formula text
    (OWASP's advice). Keys such as operator come from providers and can hold anything."""
    if text is None:
        return ""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


@functools.cache
def _time_zones() -> frozenset[str]:
    """The tz database's zone names, listed once: listing walks the whole database."""
    return frozenset(zoneinfo.available_timezones())


def _groups(group_by: str) -> list[str]:
    keys = [k.strip() for k in group_by.split(",") if k.strip()]
    unknown = [k for k in keys if k not in store.BILLING_KEYS]
    if unknown:
        raise BadRequest(f"group_by: unknown {', '.join(unknown)}; "
                         f"choose from {', '.join(store.BILLING_KEYS)}")
    if "currency" not in keys:  # money only adds up within one currency
        keys.append("currency")
    return list(dict.fromkeys(keys))


class BillingRow(msgspec.Struct, kw_only=True):
    """One group: its keys (each one asked for in `group_by`, and currency), then its sums."""

    day: Annotated[str | None, doc("Calendar day in `tz`", "2026-11-01")] = None
    source: str | None = None
    currency: Annotated[str | None, doc("ISO 4217; null when the provider reports no price",
                                        "EUR")] = None
    operator: Annotated[str | None, doc("Network, one name per network", "Ncell")] = None
    status: str | None = None
    origin: Annotated[str | None, doc(
        "Where the prices came from: `reported` by the provider, `rate_card` (estimated by "
        "the source's rate card), or null: unpriced", "reported")] = None
    country: Annotated[str | None, doc(
        "The recipients' country, ISO 3166 alpha-2 (from `to`); null when it cannot be told",
        "NP")] = None
    messages: int
    parts: int
    amount: Annotated[str, doc("Exact decimal, in the row's currency; unpriced messages "
                               "add nothing to it", "0.02")]
    unpriced: Annotated[int, doc("Messages of the row with no price (neither reported nor "
                                 "estimated): counted in `messages` and `parts`, not in "
                                 "`amount`", 0)]


class BillingSummary(msgspec.Struct):
    rows: list[BillingRow]


@dataclasses.dataclass
class BillingOperation(Documented):
    """The answer is JSON, or CSV when asked for with `Accept: text/csv`: the handler
    returns either, so its signature cannot say."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                "application/json": OpenAPIMediaType(schema=inline_schema(BillingSummary)),
                "text/csv": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description=(
                        "A header row (the group keys, messages, parts, amount, unpriced), "
                        "then one row per group")),
                    example="day,currency,messages,parts,amount,unpriced\n"
                            "2026-11-01,EUR,2,2,0.02,0\n")}


@get("/v1/billing/summary", guards=[require_scope], opt={"scope": "read"},
     responses=errors(400, 401, 403), tags=["billing"], operation_id="billingSummary",
     security=bearer("read"), operation_class=BillingOperation,
     summary="Messages, parts and amount per group, for messages sent in [from, to)",
     description="amount = sum of price per part x parts (a message without a part count "
                 "counts as one part). Days are calendar days in `tz`. Every row is in one "
                 "currency: currency is always a group key. Prices are the provider's or, "
                 "where it reports none, the source's rate card's (group by `origin` to tell "
                 "them apart); `unpriced` counts the messages with neither, which add nothing "
                 "to `amount`. `operator` names each network once (whoever reported it); "
                 "`country` is the recipients' (ISO 3166 alpha-2, from `to`). "
                 "`Accept: text/csv` for CSV.")
async def billing_summary(
    request: Request[Any, Any, State],
    state: State,
    start: Annotated[str, QueryParameter(name="from", description=TIME)],
    to: Annotated[str, QueryParameter(description=TIME)],
    group_by: Annotated[str, QueryParameter(
        description=f"Comma-separated group keys among {', '.join(store.BILLING_KEYS)} "
                    "(currency is always added)",
        examples=[Example(value="day,country,operator")])] = "currency",
    tz: FromQuery[str] = "UTC",
) -> Response[Any]:
    since, until = query_time("from", start), query_time("to", to)
    if until <= since:
        raise BadRequest("to: must be after from")
    if tz not in _time_zones():
        raise BadRequest(f"tz: unknown time zone {tz!r} (e.g. UTC, Asia/Kathmandu)")
    keys = _groups(group_by)
    async with db.transaction(state.engine) as conn:
        found = await store.billing(conn, since, until, keys, tz)
    # Every key asked for is in every row, null included: a missing key would read as "not
    # grouped by", not as "no value" (no operator known, a provider that reports no price).
    rows = [{**{k: getattr(r, k) for k in keys}, "messages": r.messages, "parts": r.parts,
             "amount": amount_text(r.amount), "unpriced": r.unpriced} for r in found]
    if "text/csv" in request.headers.get("accept", ""):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*keys, "messages", "parts", "amount", "unpriced"])
        for row in rows:
            writer.writerow([*(_cell(row[k]) for k in keys), row["messages"], row["parts"],
                             row["amount"], row["unpriced"]])
        return Response(out.getvalue(), media_type="text/csv")
    return Response({"rows": rows})
