"""Sinch's delivery report statuses, as its SMS REST API documents them.

Source: Sinch SMS API reference, Delivery reports: "Delivery report statuses"
(developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/), which types each
status Intermediate or Final; the SDK's `DeliveryReportStatus` (sinch Java SDK) and
`MessageDeliveryStatus` (sinch Python SDK) list the same ten.
"""

from __future__ import annotations

from service.providers.base import Status, status

DOC = "Sinch SMS API, Delivery reports: Delivery report statuses " \
    "(developers.sinch.com/docs/sms/api-reference/sms/tag/Delivery-reports/)"

STATUSES: dict[str, Status] = {
    "Queued": status("PENDING", DOC),  # Intermediate: queued within the REST API
    "Dispatched": status("PENDING", DOC),  # Intermediate: accepted for delivery by the SMSC
    "Aborted": status("REJECTED", DOC),  # Final: aborted before reaching the SMSC
    "Cancelled": status("REJECTED", DOC),  # Final: cancelled by the sender before the SMSC
    "Rejected": status("REJECTED", DOC),  # Final: rejected by the SMSC
    "Deleted": status("REJECTED", DOC),  # Final: deleted by a remote SMSC (invalid, opted out)
    "Delivered": status("DELIVERED", DOC),  # Final
    "Failed": status("UNDELIVERABLE", DOC),  # Final: failed to be delivered
    "Expired": status("EXPIRED", DOC),  # Final: expired before delivery to the SMSC
    # Final: delivered to the SMSC, but no receipt came or it could not be read: the outcome
    # is unknown for good, as Infobip's EXPIRED_DLR_UNKNOWN says it
    "Unknown": status("EXPIRED", DOC),
}
