"""One reconcile pass of a Twilio source: the account's Messages by the time they were sent,
newest first, a thousand a page, following `next_page_uri` on the configured origin only.

No pass reads again what an earlier one read unless it may have changed since
(service.providers.sweep): each pass lists the messages sent from where the last pass
stopped up to `settle_s` ago (`DateSent>` and `DateSent<`, as Twilio's helper libraries send
them: date and time, https://www.twilio.com/docs/messaging/api/message-resource#read-multiple-message-resources),
since a message's `date_sent` never changes but its status does: `sent` until the carrier's
receipt makes it `delivered` or `undelivered`, "typically within seconds or minutes", while
some carriers send no receipt at all
(https://support.twilio.com/hc/en-us/articles/223134347-What-are-the-Possible-SMS-and-MMS-Message-Statuses-and-What-do-They-Mean-).
Every `full_interval_s`, and on the first pass, the whole `lookback_s` is listed again, for
statuses and prices that came later.

Twilio documents the `DateSent` filters by date; should it read only the date, the list is
still newest first, so paging stops at the first page that reaches a message sent before
the window.

The list is not consuming: a page identical to the one last kept for its URL is recorded
as seen again, not stored again (the inbox does that).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import msgspec

from service.providers import OutOfBounds, http, twilio
from service.providers.sweep import Sweep

if TYPE_CHECKING:
    from service.pages import Pages

PAGE_SIZE = 1000  # Twilio's most
PAGES_PER_RUN = 100


async def pull(pages: Pages, source: twilio.TwilioSource) -> None:
    sweep = Sweep(pages, "messages", source.lookback_s, source.settle_s, source.full_interval_s)
    window = await sweep.window()  # asked for even when empty: the credentials are checked
    path: str = twilio.messages_path(source.account_sid or "")
    first: dict[str, str | int] = {"DateSent>": twilio.twilio_time(window.since),
                                   "PageSize": PAGE_SIZE}
    if not window.whole:  # a whole re-read lists everything sent since
        first["DateSent<"] = twilio.twilio_time(window.until)
    params: dict[str, str | int] | None = first
    for _ in range(PAGES_PER_RUN):
        response = await twilio.fetch(pages.client, source, path, params, pages.retry)
        pages.fetched(http.items(response.content, "messages"))
        await pages.take(response)
        following = twilio.next_page(response.content) if response.status_code == 200 else None
        if following is None or _reaches_before(response.content, window.since):
            await sweep.reached(window, window.until)
            return
        if http.origin(urljoin(source.base_url, following)) != http.origin(source.base_url):
            raise http.ForeignOrigin(f"refused to follow next_page_uri {following[:200]!r}: "
                                     f"not on {source.base_url!r}")
        path, params = following, None  # the URI carries the filters and the page token
    # not all read: the next pass lists this window again


class _Sent(msgspec.Struct):
    date_sent: str | None = None


class _Listed(msgspec.Struct):
    messages: list[_Sent] = []


_listed = msgspec.json.Decoder(_Listed)


def _reaches_before(body: bytes, since: datetime) -> bool:
    """Whether a page (newest first) ends with a message sent before `since`."""
    try:
        listed = _listed.decode(body).messages
        last = twilio.rfc2822(listed[-1].date_sent) if listed else None
    except (msgspec.MsgspecError, RecursionError, OutOfBounds):
        return False
    return last is not None and last < since
