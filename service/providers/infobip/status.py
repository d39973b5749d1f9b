"""Infobip's SMS statuses, by name, as its documentation lists them.

A report carries its group (`groupId`, `groupName`) and its status (`id`, `name`): the
group is the merged status, as Infobip gives it; this table says whether the status is
final. Infobip's "Message status codes" page (Intermediate and final statuses) says that
`DELIVERED_TO_OPERATOR` is intermediate though its group is DELIVERED: a handset report may
follow, or nothing, where the network sends none. Such a message closes after the message's
validity period (48 hours by default, the Expired group's description), by the reconciler.
A status not listed here is final when its group is.
"""

from __future__ import annotations

from service.providers.base import Status, status

CODES = "Infobip, Response status and error codes: General status codes " \
    "(infobip.com/docs/essentials/api-essentials/response-status-and-error-codes)"
LIFECYCLE = "Infobip, Message status codes: Intermediate and final statuses " \
    "(infobip.com/docs/developer-resources/api-fundamentals/message-status-codes)"
VALIDITY_S = 48 * 3600  # "typically after the 48-hour validity period" (Expired group)

# name: (id, row)
STATUSES: dict[str, tuple[int, Status]] = {
    # Pending (group 1): intermediate, a final status follows
    "PENDING_WAITING_DELIVERY": (3, status("PENDING", LIFECYCLE)),
    "PENDING_ENROUTE": (7, status("PENDING", LIFECYCLE)),
    "PENDING_ACCEPTED": (26, status("PENDING", LIFECYCLE)),
    # Undeliverable (group 2)
    "UNDELIVERABLE_REJECTED_OPERATOR": (4, status("UNDELIVERABLE", CODES)),
    "UNDELIVERABLE_NOT_DELIVERED": (9, status("UNDELIVERABLE", CODES)),
    "UNDELIVERABLE_NOT_SENT": (31, status("UNDELIVERABLE", CODES)),
    # Delivered (group 3): to the operator is intermediate, to the handset final
    "DELIVERED_TO_OPERATOR": (2, status("DELIVERED", LIFECYCLE, final=False,
                                        closes_after_s=VALIDITY_S)),
    "DELIVERED_TO_HANDSET": (5, status("DELIVERED", LIFECYCLE)),
    # Expired (group 4)
    "EXPIRED_EXPIRED": (15, status("EXPIRED", CODES)),
    "EXPIRED_DLR_UNKNOWN": (29, status("EXPIRED", CODES)),
    # Rejected (group 5); SIGNALS_BLOCKED (87) is listed under Expired (charged) and under
    # Rejected (not charged): its group comes with the report
    "REJECTED_NETWORK": (6, status("REJECTED", CODES)),
    "REJECTED_PREFIX_MISSING": (8, status("REJECTED", CODES)),
    "REJECTED_DND": (10, status("REJECTED", CODES)),
    "REJECTED_SOURCE": (11, status("REJECTED", CODES)),
    "REJECTED_NOT_ENOUGH_CREDITS": (12, status("REJECTED", CODES)),
    "REJECTED_SENDER": (13, status("REJECTED", CODES)),
    "REJECTED_DESTINATION_BLOCKLISTED": (14, status("REJECTED", CODES)),
    "REJECTED_PREPAID_PACKAGE_EXPIRED": (17, status("REJECTED", CODES)),
    "REJECTED_DESTINATION_NOT_REGISTERED": (18, status("REJECTED", CODES)),
    "REJECTED_ROUTE_NOT_AVAILABLE": (19, status("REJECTED", CODES)),
    "REJECTED_FLOODING_FILTER": (20, status("REJECTED", CODES)),
    "REJECTED_SYSTEM_ERROR": (21, status("REJECTED", CODES)),
    "REJECTED_DUPLICATE_MESSAGE_ID": (23, status("REJECTED", CODES)),
    "REJECTED_INVALID_UDH": (24, status("REJECTED", CODES)),
    "REJECTED_MESSAGE_TOO_LONG": (25, status("REJECTED", CODES)),
    "MISSING_TO": (51, status("REJECTED", CODES)),
    "REJECTED_DESTINATION": (52, status("REJECTED", CODES)),
    "SIGNALS_BLOCKED": (87, status("REJECTED", CODES)),
    "UNDELIVERABLE_REJECTED_PLATFORM": (100, status("REJECTED", CODES)),
}
GROUP_IDS = {"PENDING": 1, "UNDELIVERABLE": 2, "DELIVERED": 3, "EXPIRED": 4, "REJECTED": 5}


def final(group: str, name: str | None) -> bool:
    """Whether a report of this group and status name is final: as the table says when it
    lists the name (in that group), else as its group is."""
    found = STATUSES.get(name or "")
    if found is not None and (found[1].group == group or name == "SIGNALS_BLOCKED"):
        return found[1].final
    return group != "PENDING"


def table() -> dict[str, Status]:
    """The rows by lower-cased name, as every kind's table is keyed."""
    return {name.lower(): row for name, (_, row) in STATUSES.items()}
