"""Twilio's message statuses, as the Message resource documents them.

Source: Twilio, Messaging API, Message resource: "Message status values"
(twilio.com/docs/messaging/api/message-resource#message-status-values); the same thirteen
values are the `MessageEnumStatus` of Twilio's OpenAPI description (twilio-oai,
twilio_api_v2010.json). `receiving` and `received` are inbound messages, which a pull skips.
"""

from __future__ import annotations

from service.providers.base import Status, status

DOC = "Twilio, Message resource: Message status values " \
    "(twilio.com/docs/messaging/api/message-resource#message-status-values)"

STATUSES: dict[str, Status] = {
    "accepted": status("PENDING", DOC),  # a Messaging Service took it, no sender chosen yet
    "scheduled": status("PENDING", DOC),  # to be sent later
    "queued": status("PENDING", DOC),
    "sending": status("PENDING", DOC),
    "sent": status("PENDING", DOC),  # handed to the carrier; no delivery receipt yet
    "receiving": status("PENDING", DOC),  # inbound
    "received": status("PENDING", DOC),  # inbound
    "delivered": status("DELIVERED", DOC),
    "read": status("DELIVERED", DOC),  # delivered, and read (channels with read receipts)
    # Some parts reached the handset. Twilio bills every segment sent, so it counts as
    # delivered here (an assumption: Twilio does not say which parts arrived)
    "partially_delivered": status("DELIVERED", DOC),
    "undelivered": status("UNDELIVERABLE", DOC),  # the carrier could not deliver it
    "failed": status("REJECTED", DOC),  # never left Twilio (no charge)
    "canceled": status("REJECTED", DOC),  # a scheduled message canceled before sending
}
