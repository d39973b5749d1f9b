"""A fake Vonage: the synchronous Reports API's records, as `/v2/reports/records` serves them.

GET /v2/reports/records?account_id=&product=SMS&direction=outbound&date_start=&date_end=
with HTTP Basic (API key and secret): the records whose `date_received` is in
[date_start, date_end) (at most 24 hours apart, else 422), oldest first, 1000 a page; a
longer result is `TRUNCATED`, with `cursor`, `iv` and `_links.next.href` for the rest.
`record()` builds one part's record as Vonage returns it, `receipt()` the delivery receipt
Vonage pushes for that part.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from service.providers.fakes import Answer, FakeServer
from service.providers.fakes import json_answer as _json

PAGE = 1000


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def record(account_id: str, part_id: str, to: str, status: str, received: datetime,
           finalized: datetime | None, *, sender: str = "AcmeInc", client_ref: str | None = None,
           network: str = "23410", price: Decimal | None = Decimal("0.0333"),
           currency: str = "EUR", error_code: str = "0", body: str = "hello") -> dict[str, Any]:
    """One part's outbound SMS record, with every field the Reports API documents."""
    return {
        "account_id": account_id, "message_id": part_id, "client_ref": client_ref,
        "direction": "outbound", "from": sender, "to": to, "network": network,
        "network_name": "Telefonica UK Limited", "country": "GB",
        "country_name": "United Kingdom", "date_received": _iso(received),
        "date_finalized": _iso(finalized) if finalized else None,
        "latency": int((finalized - received).total_seconds() * 1000) if finalized else None,
        "status": status, "error_code": error_code,
        "error_code_description": "Delivered" if error_code == "0" else "Absent subscriber",
        "currency": currency, "total_price": None if price is None else float(price),
        "message_body": body,
    }


def receipt(part: dict[str, Any], status: str | None = None, api_key: str = "abcd1234",
            scts: datetime | None = None) -> dict[str, str]:
    """The delivery receipt Vonage sends for a part (all values text), unsigned."""
    done = scts or (datetime.fromisoformat(part["date_finalized"]) if part["date_finalized"]
                    else datetime.fromisoformat(part["date_received"]))
    params = {"msisdn": part["to"], "to": part["from"], "network-code": part["network"],
              "messageId": part["message_id"], "status": status or part["status"],
              "scts": done.strftime("%y%m%d%H%M"), "err-code": part["error_code"],
              "api-key": api_key, "message-timestamp": (done + timedelta(seconds=2)).strftime(
                  "%Y-%m-%d %H:%M:%S")}
    if part["total_price"] is not None:
        params["price"] = f"{Decimal(str(part['total_price'])):.8f}"
    if part["client_ref"]:
        params["client-ref"] = part["client_ref"]
    return params


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class FakeVonage(FakeServer):
    def __init__(self, api_key: str = "abcd1234", api_secret: str = "fake-secret",
                 port: int = 0) -> None:
        super().__init__(port)
        self.api_key, self.api_secret = api_key, api_secret
        self.records: dict[str, dict[str, Any]] = {}  # by message id (one per part)

    def add(self, *records: dict[str, Any]) -> None:
        with self.lock:
            for one in records:
                self.records[one["message_id"]] = one

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        basic = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        if headers.get("Authorization") != f"Basic {basic}":
            return _json(401, {"type": "https://developer.nexmo.com/api-errors#unauthorized",
                               "title": "Unauthorized", "detail": "You did not provide "
                               "correct credentials.", "instance": uuid.uuid4().hex})
        if path != "/v2/reports/records":
            return _json(404, {"title": "Not found", "instance": uuid.uuid4().hex})
        given = {k: v[0] for k, v in query.items()}
        missing = [n for n in ("account_id", "product", "date_start", "date_end")
                   if n not in given] + ([] if "direction" in given else ["direction"])
        if missing:
            return _json(422, {"title": "Unprocessable entity", "invalid_parameters": [
                {"reason": "Missing required parameter", "name": n} for n in missing],
                "instance": uuid.uuid4().hex})
        start, end = _when(given["date_start"]), _when(given["date_end"])
        if given["account_id"] != self.api_key or end - start > timedelta(hours=24):
            return _json(422, {"title": "Invalid filter", "detail": "date range over 24 "
                               "hours, or another account", "instance": uuid.uuid4().hex})
        found = sorted((r for r in self.records.values()
                        if start <= _when(r["date_received"]) < end
                        and r["direction"] == given["direction"]),
                       key=lambda r: (r["date_received"], r["message_id"]))
        offset = int(base64.urlsafe_b64decode(given["cursor"])) if "cursor" in given else 0
        chunk = found[offset:offset + PAGE]
        self.returning(len(chunk))
        filters = {k: v for k, v in given.items() if k not in ("cursor", "iv")}
        include = given.get("include_message") == "true"
        body: dict[str, Any] = {
            "_links": {"self": {"href": f"{self.url}{path}?{urlencode(given)}"}},
            "request_id": str(uuid.uuid4()), "request_status": "SUCCESS",
            "received_at": _iso(datetime.now(UTC)), "price": 0.0, "currency": "EUR",
            "account_id": self.api_key, "product": "SMS", "direction": given["direction"],
            "include_message": include, "items_count": len(chunk),
            "records": [r if include else {k: v for k, v in r.items() if k != "message_body"}
                        for r in chunk]}
        if offset + PAGE < len(found):
            cursor = base64.urlsafe_b64encode(str(offset + PAGE).encode()).decode()
            iv = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            body["request_status"] = "TRUNCATED"
            body["cursor"], body["iv"] = cursor, iv
            body["_links"]["next"] = {"href": f"{self.url}{path}?"
                                      f"{urlencode(filters | {'cursor': cursor, 'iv': iv})}"}
        return _json(200, body)
