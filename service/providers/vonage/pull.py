"""One reconcile pass of a Vonage source: the synchronous Reports API's outbound SMS records,
a 24-hour window at a time (its limit), following `_links.next.href` of TRUNCATED pages on
the configured origin only.

Vonage charges per record returned ("Reports API is a paid product",
https://developer.vonage.com/en/api/reports), so a pass asks only for what no pass has read
(service.providers.sweep): the records received since the last pass's end, up to `settle_s`
ago, and every `full_interval_s` the whole `lookback_s` again. What the API documents:

- `date_start` and `date_end` filter on `date_received`, "the time the API call was received
  by Vonage": `date_start` inclusive, `date_end` exclusive, at most 24 hours apart
  (https://developer.vonage.com/en/api/reports#get-records; Nexmo/api-specification
  definitions/reports.yml). A record's `date_received` never changes, so windows that meet
  end to start read each record once.
- Its status does change: "the final delivery status of a given message is usually
  available within minutes. However, in rare cases, it can take up to 72 hours"
  (https://developer.vonage.com/en/reports/guides/get-message-record-with-delivery-status).
  Hence `settle_s` (minutes) before a record is first read, and the whole re-read for the
  rare late ones (receipts pushed by Vonage bring them too).
- More than 1000 records come as TRUNCATED pages, each with `cursor`, `iv` and
  `_links.next.href`, followed until a page is not TRUNCATED
  (https://developer.vonage.com/en/reports/guides/how-to-handle-pagination).

A page identical to the one last kept for its URL is recorded as seen again, not stored
again (the inbox does that); its records still count as fetched.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from service.providers import http, vonage
from service.providers.sweep import Sweep

if TYPE_CHECKING:
    from service.pages import Pages

WINDOW = timedelta(hours=24)  # the synchronous API's longest date range
PAGES_PER_RUN = 100
RECORDS_PATH = "/v2/reports/records"


async def pull(pages: Pages, source: vonage.VonageSource) -> None:
    sweep = Sweep(pages, "records", source.lookback_s, source.settle_s, source.full_interval_s)
    window = await sweep.window()
    budget = PAGES_PER_RUN
    start = window.since
    while start < window.until and budget > 0:
        until = min(start + WINDOW, window.until)
        path: str = RECORDS_PATH
        params: dict[str, str | int] | None = {
            "account_id": source.api_key or "", "product": "SMS", "direction": "outbound",
            "date_start": vonage.reports_time(start), "date_end": vonage.reports_time(until),
            "include_message": "true"}
        while True:
            if budget == 0:
                return  # the next pass reads this window again, from its start
            budget -= 1
            response = await vonage.fetch(pages.client, source, path, params, pages.retry)
            pages.fetched(http.items(response.content, "records"))
            await pages.take(response)
            following = vonage.next_href(response.content) if response.status_code == 200 \
                else None
            if following is None:
                break
            if http.origin(urljoin(source.base_url, following)) != http.origin(source.base_url):
                raise http.ForeignOrigin(f"refused to follow _links.next {following[:200]!r}: "
                                         f"not on {source.base_url!r}")
            path, params = following, None  # the link carries the filters, cursor and iv
        await sweep.reached(window, until)
        start = until
