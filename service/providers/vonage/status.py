"""Vonage's SMS delivery receipt statuses (and the Reports API's `deleted`).

Source: Vonage SMS API, "Delivery Receipts" (developer.vonage.com/en/messaging/sms/guides/
delivery-receipts) and its webhook reference (the `status` of an inbound delivery receipt:
delivered, expired, failed, rejected, accepted, buffered, unknown); the Reports API's
record `status` adds `deleted`.
"""

from __future__ import annotations

from service.providers.base import Status, status

DOC = "Vonage SMS API, Delivery Receipts: status " \
    "(developer.vonage.com/en/messaging/sms/guides/delivery-receipts)"
REPORTS = "Vonage Reports API, SMS record: status (developer.vonage.com/en/api/reports)"
VALIDITY_S = 72 * 3600  # the SMS API's longest message validity (`ttl`): 72 hours

STATUSES: dict[str, Status] = {
    "accepted": status("PENDING", DOC),  # accepted by the carrier, not delivered yet
    "buffered": status("PENDING", DOC),  # held by the carrier, to be delivered later
    "delivered": status("DELIVERED", DOC),
    "expired": status("EXPIRED", DOC),  # the carrier gave up within the validity period
    "failed": status("UNDELIVERABLE", DOC),  # the carrier could not deliver it
    "rejected": status("REJECTED", DOC),  # refused by Vonage or the carrier
    # The carrier's receipt said nothing usable. Vonage does not say whether another may
    # follow: shown as EXPIRED (no outcome known) but open, and final once the longest
    # validity has passed with nothing after it
    "unknown": status("EXPIRED", DOC, final=False, closes_after_s=VALIDITY_S),
    "deleted": status("REJECTED", REPORTS),  # removed before delivery
}
