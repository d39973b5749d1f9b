"""A fake Twilio REST API: the account's Messages list, as `/2010-04-01` serves it.

GET /2010-04-01/Accounts/{AccountSid}/Messages.json with HTTP Basic (the account and its
Auth Token, or an API key), filtered by `DateSent`, `DateSent>` and `DateSent<` (>= and <,
as Twilio reads them), `To` and `From`, newest first, `PageSize` (50 by default, at most
1000) a page, with `next_page_uri` carrying the filters, `Page` and `PageToken`.
`message()` builds a Message resource as Twilio returns it; `callback()` the form
parameters of a status callback for it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from service.providers.fakes import Answer, FakeServer
from service.providers.fakes import json_answer as _json
from service.providers.twilio import API_VERSION

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


def rfc2822(moment: datetime) -> str:
    """A time as Twilio writes it: `Thu, 24 Aug 2023 05:01:45 +0000`."""
    return format_datetime(moment.astimezone(UTC))


def message(account_sid: str, sid: str, to: str, status: str, sent: datetime, *,
            sender: str = "+15017122661", body: str = "hello", segments: int = 1,
            price: Decimal | None = None, price_unit: str = "USD",
            error_code: int | None = None, error_message: str | None = None,
            direction: str = "outbound-api", updated: datetime | None = None) -> dict[str, Any]:
    """A Message resource with every property the list returns; `price` is per segment and
    written as Twilio writes it, negative and for the whole message (`-0.01580`)."""
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    return {
        "account_sid": account_sid, "api_version": API_VERSION, "body": body,
        "date_created": rfc2822(sent), "date_sent": rfc2822(sent),
        "date_updated": rfc2822(updated or sent), "direction": direction,
        "error_code": error_code, "error_message": error_message, "from": sender,
        "messaging_service_sid": None, "num_media": "0", "num_segments": str(segments),
        "price": None if price is None else f"{-price * segments:.5f}",
        "price_unit": price_unit if price is not None else None, "sid": sid, "status": status,
        "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        "to": to, "uri": f"{uri}.json",
    }


def callback(resource: dict[str, Any], status: str, *, raw_dlr_done: str | None = None,
             error_code: int | None = None) -> dict[str, str]:
    """The form parameters of the status callback Twilio sends when `resource` reaches
    `status` (the subset of the standard ones that Twilio's guide shows, and more)."""
    params = {"AccountSid": resource["account_sid"], "ApiVersion": API_VERSION,
              "From": resource["from"], "MessageSid": resource["sid"],
              "MessageStatus": status, "SmsSid": resource["sid"], "SmsStatus": status,
              "To": resource["to"]}
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    if raw_dlr_done is not None:
        params["RawDlrDoneDate"] = raw_dlr_done
    return params


def _when(text: str) -> datetime:
    """A DateSent filter: a date, or an ISO 8601 time as the helper libraries send it."""
    if len(text) == 10:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class FakeTwilio(FakeServer):
    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "fake-auth-token",
                 api_key: tuple[str, str] | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.account_sid, self.auth_token, self.api_key = account_sid, auth_token, api_key
        self.messages: dict[str, dict[str, Any]] = {}  # by sid, latest state

    def add(self, *resources: dict[str, Any]) -> None:
        with self.lock:
            for resource in resources:
                self.messages[resource["sid"]] = resource

    def _authorised(self, header: str | None) -> bool:
        allowed = [(self.account_sid, self.auth_token)] + ([self.api_key] if self.api_key else [])
        return any(header == "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()
                   for u, p in allowed)

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if not self._authorised(headers.get("Authorization")):
            return _json(401, {"code": 20003, "message": "Authenticate",
                               "more_info": "https://www.twilio.com/docs/errors/20003",
                               "status": 401})
        listing = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"
        if path != listing:
            return _json(404, {"code": 20404, "message": f"The requested resource {path} was "
                               "not found", "more_info": "https://www.twilio.com/docs/errors/"
                               "20404", "status": 404})
        size = int(query.get("PageSize", [str(DEFAULT_PAGE_SIZE)])[0])
        if not 1 <= size <= MAX_PAGE_SIZE:
            return _json(400, {"code": 20001, "message": "PageSize must be between 1 and "
                               f"{MAX_PAGE_SIZE}", "status": 400})
        page = int(query.get("Page", ["0"])[0])
        found = sorted(self._filtered(query), key=lambda m: (
            datetime.strptime(m["date_sent"] or m["date_created"], "%a, %d %b %Y %H:%M:%S %z"),
            m["sid"]), reverse=True)
        chunk = found[page * size:(page + 1) * size]
        self.returning(len(chunk))
        filters = {k: v[0] for k, v in query.items()
                   if k in ("To", "From", "DateSent", "DateSent>", "DateSent<")}

        def uri(number: int, token: str | None = None) -> str:
            params = filters | {"PageSize": str(size), "Page": str(number)}
            if token:
                params["PageToken"] = token
            return f"{listing}?{urlencode(params)}"

        more = (page + 1) * size < len(found)
        return _json(200, {
            "end": page * size + max(len(chunk) - 1, 0), "first_page_uri": uri(0),
            "messages": chunk, "next_page_uri": uri(page + 1, f"PA{chunk[-1]['sid']}")
            if more else None, "page": page, "page_size": size,
            "previous_page_uri": uri(page - 1, f"PB{chunk[0]['sid']}") if page else None,
            "start": page * size, "uri": uri(page)})

    def _filtered(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        def sent(m: dict[str, Any]) -> datetime:
            return datetime.strptime(m["date_sent"], "%a, %d %b %Y %H:%M:%S %z")

        out = list(self.messages.values())
        if any(k.startswith("DateSent") for k in query):  # never sent: no DateSent to match
            out = [m for m in out if m["date_sent"] is not None]
        if "To" in query:
            out = [m for m in out if m["to"] == query["To"][0]]
        if "From" in query:
            out = [m for m in out if m["from"] == query["From"][0]]
        if "DateSent" in query:
            day = _when(query["DateSent"][0][:10]).date()
            out = [m for m in out if sent(m).date() == day]
        if "DateSent>" in query:
            out = [m for m in out if sent(m) >= _when(query["DateSent>"][0])]
        if "DateSent<" in query:
            out = [m for m in out if sent(m) < _when(query["DateSent<"][0])]
        return out
