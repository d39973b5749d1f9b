"""One reconcile pass of a Vonage source: the synchronous Reports API's outbound SMS records
of the messages received by Vonage within `lookback_s`, a 24-hour window at a time (its
limit), following `_links.next.href` of TRUNCATED pages on the configured origin only.

The records are not consumed: a page identical to the one last kept for its URL is recorded
as seen again, not stored again (the inbox does that). Vonage charges per record returned.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from service.providers import http, vonage

if TYPE_CHECKING:
    from service.pages import Pages

WINDOW = timedelta(hours=24)  # the synchronous API's longest date range
PAGES_PER_RUN = 100
RECORDS_PATH = "/v2/reports/records"


async def pull(pages: Pages, source: vonage.VonageSource) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(seconds=source.lookback_s)
    budget = PAGES_PER_RUN
    while start < end and budget > 0:
        until = min(start + WINDOW, end)
        path: str = RECORDS_PATH
        params: dict[str, str | int] | None = {
            "account_id": source.api_key or "", "product": "SMS", "direction": "outbound",
            "date_start": vonage.reports_time(start), "date_end": vonage.reports_time(until),
            "include_message": "true"}
        while budget > 0:
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
        start = until
