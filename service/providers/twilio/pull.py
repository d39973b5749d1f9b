"""One reconcile pass of a Twilio source: the account's Messages sent within `lookback_s`,
newest first, a thousand a page, following `next_page_uri` on the configured origin only.

The list is not consuming: a page identical to the one last kept for its URL is recorded
as seen again, not stored again (the inbox does that).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from service.providers import http, twilio

if TYPE_CHECKING:
    from service.pages import Pages

PAGE_SIZE = 1000  # Twilio's most
PAGES_PER_RUN = 100


async def pull(pages: Pages, source: twilio.TwilioSource) -> None:
    since = datetime.now(UTC) - timedelta(seconds=source.lookback_s)
    path: str = twilio.messages_path(source.account_sid or "")
    params: dict[str, str | int] | None = {"DateSent>": twilio.twilio_time(since),
                                           "PageSize": PAGE_SIZE}
    for _ in range(PAGES_PER_RUN):
        response = await twilio.fetch(pages.client, source, path, params, pages.retry)
        pages.fetched(http.items(response.content, "messages"))
        await pages.take(response)
        following = twilio.next_page(response.content) if response.status_code == 200 else None
        if following is None:
            return
        if http.origin(urljoin(source.base_url, following)) != http.origin(source.base_url):
            raise http.ForeignOrigin(f"refused to follow next_page_uri {following[:200]!r}: "
                                     f"not on {source.base_url!r}")
        path, params = following, None  # the URI carries the filters and the page token
