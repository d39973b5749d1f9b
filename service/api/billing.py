"""GET /v1/billing/summary: messages, parts and money per group, exact, as JSON or CSV."""

from __future__ import annotations

import csv
import io
import zoneinfo
from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter
from litestar.response import Response

from service import db, store
from service.api import ERRORS
from service.api.auth import require_scope
from service.errors import BadRequest
from service.rules import amount_text
from service.schemas import TIME, query_time

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str | None) -> str:
    """A group key as CSV text no spreadsheet runs: a leading quote makes a formula text
    (OWASP's advice). Keys such as operator come from providers and can hold anything."""
    if text is None:
        return ""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _groups(group_by: str) -> list[str]:
    keys = [k.strip() for k in group_by.split(",") if k.strip()]
    unknown = [k for k in keys if k not in store.BILLING_KEYS]
    if unknown:
        raise BadRequest(f"group_by: unknown {', '.join(unknown)}; "
                         f"choose from {', '.join(store.BILLING_KEYS)}")
    if "currency" not in keys:  # money only adds up within one currency
        keys.append("currency")
    return list(dict.fromkeys(keys))


@get("/v1/billing/summary", guards=[require_scope], opt={"scope": "read"}, responses=ERRORS, tags=["billing"],
     summary="Messages, parts and amount per group, for messages sent in [from, to)",
     description="amount = sum of price per part x parts (a message without a part count "
                 "counts as one part). Days are calendar days in `tz`. Every row is in one "
                 "currency: currency is always a group key. `Accept: text/csv` for CSV.")
async def billing_summary(
    request: Request[Any, Any, State],
    state: State,
    start: Annotated[str, QueryParameter(name="from", description=TIME)],
    to: Annotated[str, QueryParameter(description=TIME)],
    group_by: FromQuery[str] = "currency",
    tz: FromQuery[str] = "UTC",
) -> Response[Any]:
    since, until = query_time("from", start), query_time("to", to)
    if until <= since:
        raise BadRequest("to: must be after from")
    if tz not in zoneinfo.available_timezones():
        raise BadRequest(f"tz: unknown time zone {tz!r} (e.g. UTC, Asia/Kathmandu)")
    keys = _groups(group_by)
    async with db.transaction(state.engine) as conn:
        found = await store.billing(conn, since, until, keys, tz)
    # Every key asked for is in every row, null included: a missing key would read as "not
    # grouped by", not as "no value" (no operator known, a provider that reports no price).
    rows = [{**{k: getattr(r, k) for k in keys}, "messages": r.messages, "parts": r.parts,
             "amount": amount_text(r.amount)} for r in found]
    if "text/csv" in request.headers.get("accept", ""):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*keys, "messages", "parts", "amount"])
        for row in rows:
            writer.writerow([*(_cell(row[k]) for k in keys), row["messages"], row["parts"],
                             row["amount"]])
        return Response(out.getvalue(), media_type="text/csv")
    return Response({"rows": rows})
